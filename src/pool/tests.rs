//! A unit test of the crate's own that starts a pool: the library's unit-test binary is
//! libtest's, with no `main` of ours, and its workers take their role before that `main`.

use crate::Pool;

fn triple(x: u32) -> u32 {
    x * 3
}

fn pid() -> u32 {
    std::process::id()
}

#[tokio::test]
async fn a_unit_test_maps_on_a_pool() -> crate::Result<()> {
    let pool = Pool::new(2).await?;
    assert_eq!(
        pool.map(triple, 0..100u32).await?,
        (0..100u32).map(triple).collect::<Vec<_>>()
    );
    assert_ne!(pool.apply(pid, ()).await?, std::process::id());
    pool.close();
    pool.join().await
}
