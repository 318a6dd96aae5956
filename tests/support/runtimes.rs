//! A manager's proxy used from one runtime, then from another: while the first sits idle,
//! and once it is gone.

use std::future::Future;
use std::time::Duration;

use tokio::runtime::{Builder, Runtime};
use tokio_multiprocessing::{self as mp, Manager};

/// How long one call may take before the test calls it hung.
const HUNG: Duration = Duration::from_secs(20);

fn runtime() -> Result<Runtime, String> {
    Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("a runtime: {e}"))
}

/// `f`, driven by `rt` alone; a call that does not end is an error, not a hang.
fn on<T>(rt: &Runtime, what: &str, f: impl Future<Output = mp::Result<T>>) -> Result<T, String> {
    match rt.block_on(async { tokio::time::timeout(HUNG, f).await }) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer in {HUNG:?}")),
    }
}

/// Plain code (each runtime here is a current-thread one, driven only inside its
/// `block_on`): a manager handle made by `manager` on runtime A, and a dict of it used on A;
/// then used on B while A is not driven, on B once A is dropped, and on C while B is not
/// driven. The dict keeps every value written on each runtime (it is the same object), the
/// server holds as many objects throughout, and the handle shuts down from C.
pub fn a_proxy_across_runtimes<F, Fut>(manager: F) -> Result<(), String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = mp::Result<Manager>>,
{
    let a = runtime()?;
    let m = on(&a, "the manager on A", manager())?;
    let d = on(&a, "a dict on A", m.dict::<u32, u32>())?;
    on(&a, "an insert on A", d.insert(1, 10))?;
    let objects = on(&a, "the object count on A", m.object_count())?;

    let b = runtime()?;
    on(&b, "an insert on B while A is idle", d.insert(2, 20))?;
    let one = on(&b, "a get on B while A is idle", d.get(&1))?;
    if one != Some(10) {
        return Err(format!("B reads {one:?} for the key A wrote"));
    }

    drop(a);
    let mut items = on(&b, "the items on B once A is gone", d.items())?;
    items.sort_unstable();
    if items != [(1, 10), (2, 20)] {
        return Err(format!("B reads {items:?} once A is gone"));
    }
    on(&b, "an insert on B once A is gone", d.insert(3, 30))?;
    let count = on(&b, "the object count on B", m.object_count())?;
    if count != objects {
        return Err(format!(
            "the server holds {count} objects on B, {objects} on A"
        ));
    }

    let c = runtime()?;
    let len = on(&c, "a len on C while B is idle", d.len())?;
    if len != 3 {
        return Err(format!("C counts {len} keys, not 3"));
    }
    drop(b);
    let three = on(&c, "a get on C once B is gone", d.get(&3))?;
    if three != Some(30) {
        return Err(format!("C reads {three:?} for the key B wrote"));
    }
    drop(d);
    on(&c, "the shutdown on C", m.shutdown())
}
