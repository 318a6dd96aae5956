//! What the `process_*` test files share: the start methods their tests loop over, the
//! small child targets several of them start, and helper modes.
//!
//! A helper mode is this test binary re-run as a parent of its own (`TKMP_TEST_MODE=<mode>`)
//! for what a test cannot do inside the harness: be killed with its children, exit with
//! children still running, start children before `init()`. The test reads what the helper
//! prints. Each test file's `main` runs the modes its own tests ask for.

use std::future::Future;
use std::time::Duration;

use tokio_multiprocessing::{Process, StartMethod};

/// The start methods a multi-threaded test process can use.
pub const METHODS: [StartMethod; 2] = [StartMethod::Spawn, StartMethod::ForkServer];

/// The environment variable naming the helper mode.
pub const MODE_VAR: &str = "TKMP_TEST_MODE";

/// An error of any kind, as the helpers return it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A helper's exit status, stdout and stderr.
pub type HelperOutput = (std::process::ExitStatus, String, String);

// ---------------------------------------------------------------- targets

/// Returns at once: exit code 0.
pub fn nothing() {}

/// Sleeps `ms` milliseconds.
pub fn sleep_ms(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms))
}

/// A daemon child, started with `method`, that sleeps for a minute: one to signal,
/// terminate or kill.
pub async fn start_sleeper(method: StartMethod) -> tokio_multiprocessing::Result<Process> {
    Process::new(sleep_ms, (60_000,))
        .daemon(true)
        .start_method(method)
        .start()
        .await
}

/// Runs `check` on a current-thread runtime of this (child) process and exits non-zero,
/// after printing why, if it fails: the body of a child that checks something for its
/// parent, which expects exit code 0.
pub fn exit_unless_ok<F: Future<Output = Result<(), BoxError>>>(
    what: &str,
    check: impl FnOnce() -> F,
) {
    exit_unless_ok_on(tokio::runtime::Builder::new_current_thread(), what, check)
}

/// [`exit_unless_ok`] on the runtime that `rt` builds.
pub fn exit_unless_ok_on<F: Future<Output = Result<(), BoxError>>>(
    mut rt: tokio::runtime::Builder,
    what: &str,
    check: impl FnOnce() -> F,
) {
    let run = || -> Result<(), BoxError> { rt.enable_all().build()?.block_on(check()) };
    if let Err(e) = run() {
        eprintln!("{what}: {e}");
        std::process::exit(2);
    }
}

/// Waits up to 60 s for a started probe (a child running [`exit_unless_ok`]) and fails
/// unless it exited 0; a probe that hangs is killed.
pub async fn probe_passed(p: &mut Process) -> Result<(), BoxError> {
    match p.join_timeout(Duration::from_secs(60)).await? {
        Some(0) => Ok(()),
        Some(code) => Err(format!("the probe exited with {code}").into()),
        None => {
            p.kill()?;
            Err("the probe hung".into())
        }
    }
}

/// Exits with `code`.
pub fn exit_with(code: i32) {
    std::process::exit(code)
}

/// Sleeps a little and spawns a task on the child's runtime, then exits with `code + 1`.
pub async fn async_exit(code: i32) {
    tokio::time::sleep(Duration::from_millis(5)).await;
    let v = tokio::spawn(async move { code + 1 }).await.unwrap_or(0);
    std::process::exit(v)
}

// ---------------------------------------------------------------- helper modes

/// The helper mode this binary runs in, if any.
pub fn helper_mode() -> Option<String> {
    std::env::var(MODE_VAR).ok()
}

/// Runs `body` as the helper's whole program on a two-thread runtime, then exits with 0.
pub fn run_as_helper(body: impl Future<Output = ()>) -> ! {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(body);
    drop(rt);
    std::process::exit(0)
}

/// This test binary in helper `mode`, killed if the handle is dropped.
pub fn helper_command(mode: &str) -> std::io::Result<tokio::process::Command> {
    let mut cmd = tokio::process::Command::new(std::env::current_exe()?);
    cmd.env(MODE_VAR, mode).kill_on_drop(true);
    Ok(cmd)
}

/// Starts this test binary in helper `mode` and reads the first `n` lines it prints (each
/// within 30 s), trimmed; the helper keeps running (and is killed if the handle is dropped).
pub async fn start_helper_reading(
    mode: &str,
    n: usize,
) -> Result<(tokio::process::Child, Vec<String>), BoxError> {
    use tokio::io::AsyncBufReadExt;
    let mut cmd = helper_command(mode)?;
    cmd.stdout(std::process::Stdio::piped());
    let mut helper = cmd.spawn()?;
    let stdout = helper.stdout.take().ok_or("no stdout")?;
    let mut reader = tokio::io::BufReader::new(stdout);
    let mut lines = Vec::new();
    for _ in 0..n {
        let mut line = String::new();
        tokio::time::timeout(Duration::from_secs(30), reader.read_line(&mut line)).await??;
        lines.push(line.trim().to_string());
    }
    Ok((helper, lines))
}

/// Runs this test binary in helper `mode` with environment `extra` (at most 30 s); returns
/// its exit status, stdout and stderr.
pub async fn run_helper(mode: &str, extra: &[(&str, String)]) -> Result<HelperOutput, BoxError> {
    run_helper_with(mode, extra, &[]).await
}

/// [`run_helper`] with command-line arguments `args` too.
pub async fn run_helper_with(
    mode: &str,
    extra: &[(&str, String)],
    args: &[&str],
) -> Result<HelperOutput, BoxError> {
    let mut cmd = helper_command(mode)?;
    cmd.args(args);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output()).await??;
    Ok((
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}
