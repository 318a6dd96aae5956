//! The floor under a `spawn` start: this bench's own executable started again by a plain
//! `std::process::Command`, timed until its `main` runs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Set in the re-executed child: it writes one byte and exits as its `main` begins.
const AT_MAIN: &str = "TKMP_BENCH_REEXEC_AT_MAIN";

/// In a child started by [`to_main_ms`], writes one byte to stdout and exits; elsewhere
/// returns. The first thing a bench's `main` calls.
pub fn exit_if_child() {
    if std::env::var_os(AT_MAIN).is_some() {
        let _ = std::io::stdout().write_all(b".");
        std::process::exit(0);
    }
}

/// Milliseconds from asking `std::process::Command` to start this executable until its
/// `main` wrote a byte, one value per run (the child's exit and reaping are not timed).
pub fn to_main_ms(runs: usize) -> std::io::Result<Vec<f64>> {
    let exe = std::env::current_exe()?;
    let mut out = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = Command::new(&exe)
            .env(AT_MAIN, "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let mut byte = [0u8; 1];
        let read = match child.stdout.take() {
            Some(mut stdout) => stdout.read_exact(&mut byte),
            None => Err(std::io::Error::other("the child's stdout was not piped")),
        };
        out.push(t.elapsed().as_secs_f64() * 1e3);
        child.wait()?;
        read?;
    }
    Ok(out)
}
