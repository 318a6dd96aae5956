//! A web server whose CPU-heavy handler awaits the pool: the request's async task waits
//! without holding a runtime thread while a worker process computes.
//!
//! `GET /fib/{n}` answers `fib(n) = <value>` computed (slowly, on purpose) in a worker;
//! `GET /pid` answers the server's pid. The address is the first argument (default
//! `127.0.0.1:3000`); the server prints `listening on <address>` once it accepts
//! connections.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use tokio_multiprocessing as mp;

/// Deliberately naive: the CPU-heavy work a server must not run on its own threads.
fn fib(n: u32) -> u64 {
    if n < 2 {
        u64::from(n)
    } else {
        fib(n - 1) + fib(n - 2)
    }
}

async fn fib_handler(
    State(pool): State<Arc<mp::Pool>>,
    Path(n): Path<u32>,
) -> Result<String, (StatusCode, String)> {
    if n > 40 {
        return Err((StatusCode::BAD_REQUEST, "n must be at most 40\n".into()));
    }
    match pool.apply(fib, (n,)).await {
        Ok(v) => Ok(format!("fib({n}) = {v}\n")),
        Err(e) => Err((StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    mp::init(); // optional: a worker takes its role before `main`
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".into());
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let pool = Arc::new(mp::Pool::builder().build().await?);
        let app = Router::new()
            .route("/fib/{n}", get(fib_handler))
            .route(
                "/pid",
                get(|| async { format!("{}\n", std::process::id()) }),
            )
            .with_state(pool);
        let listener = tokio::net::TcpListener::bind(&addr).await?;
        println!("listening on {}", listener.local_addr()?);
        axum::serve(listener, app).await?;
        Ok(())
    })
}
