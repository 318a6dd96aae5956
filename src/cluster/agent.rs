//! The host agent: what [`init`](crate::init) runs when the program was started by a
//! launcher with [`AGENT_FLAG`](super::AGENT_FLAG).
//!
//! It dials the head, answers and makes the challenge, says hello, then does what the head
//! asks: for each spawn it dials a worker link, starts a pool worker on it with the local
//! machinery, reports its pid, and once it is dead reports its exit code and the last task
//! its started mark shows. It kills its workers and exits when the head's connection
//! closes, when the head is silent for the head deadline, or when told.

use std::collections::HashMap;
use std::io::BufRead;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc::{self, UnboundedSender, unbounded_channel};

use super::MAX_WORKERS_PER_HOST;
use super::key;
use super::proto::{AgentHello, Dial, FromAgent, ToAgent, Welcome};
use crate::error::{Error, Result};
use crate::process::KillHandle;
use crate::start::Environment;
use crate::sys;
use crate::wire::{FrameBuf, Framed, Hello, Transport};

/// How long an agent keeps trying to reach the head when it starts.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// The exit code of an agent that could not join the head (refused, wrong key, unreachable).
const JOIN_FAILED: i32 = 2;

/// The exit code of an agent that lost the head (silent past the deadline).
const HEAD_LOST: i32 = 3;

/// What the launcher put on the agent's command line.
struct Args {
    address: String,
    workers: usize,
    id: String,
}

/// Whether this process was launched as a host agent (its first argument is the agent flag).
pub(crate) fn launched_as_agent() -> bool {
    std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == super::AGENT_FLAG)
}

/// Runs the agent and exits if this process was launched as one; returns otherwise.
pub(crate) fn run_if_agent() {
    if !launched_as_agent() {
        return;
    }
    // After the program's name and the flag.
    let mut argv = std::env::args().skip(2);
    let (Some(address), Some(workers), id) = (argv.next(), argv.next(), argv.next()) else {
        fail(
            JOIN_FAILED,
            "usage: <exe> --tokio-multiprocessing-agent <address> <workers> [<id>]",
        )
    };
    let Ok(workers) = workers.parse::<usize>() else {
        fail(
            JOIN_FAILED,
            format!("the number of workers {workers:?} is not a number"),
        )
    };
    if workers > MAX_WORKERS_PER_HOST {
        fail(
            JOIN_FAILED,
            format!("{workers} workers asked, more than a host may run ({MAX_WORKERS_PER_HOST})"),
        )
    }
    let args = Args {
        address,
        workers,
        id: id.unwrap_or_default(),
    };
    let (key, from_input) = match read_key() {
        Ok(k) => k,
        Err(e) => fail(JOIN_FAILED, e),
    };
    let input_ended = from_input.then(watch_input);
    let run = move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => fail(JOIN_FAILED, format!("cannot build a runtime: {e}")),
        };
        rt.block_on(serve(args, key, input_ended))
    };
    // Inside `#[tokio::main]` a runtime exists already on this thread: the agent's own runs
    // on a thread of its own.
    let code = if tokio::runtime::Handle::try_current().is_ok() {
        match std::thread::Builder::new()
            .name("host-agent".into())
            .spawn(run)
        {
            Ok(t) => t.join().unwrap_or(JOIN_FAILED),
            Err(e) => fail(JOIN_FAILED, format!("cannot start the agent's thread: {e}")),
        }
    } else {
        run()
    };
    sys::flush_std_streams();
    std::process::exit(code)
}

fn fail(code: i32, message: impl std::fmt::Display) -> ! {
    eprintln!(
        "tokio-multiprocessing host agent {}: {message}",
        sys::current_pid()
    );
    sys::flush_std_streams();
    std::process::exit(code)
}

/// The key: from the environment (then removed from it, so the workers do not inherit
/// it), else the first line of stdin; and whether it came from stdin.
fn read_key() -> Result<(Vec<u8>, bool)> {
    if let Some(hex) = std::env::var_os(super::AUTHKEY_ENV) {
        sys::clear_env_var(super::AUTHKEY_ENV.as_ref());
        let hex = hex.to_str().ok_or_else(|| {
            Error::InvalidArgument(format!("{} is not UTF-8", super::AUTHKEY_ENV))
        })?;
        return Ok((key::from_hex(hex)?, false));
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok((key::from_hex(&line)?, true))
}

/// Reads the agent's input after its key, on a thread of its own: when the next line is
/// [`END_WITH_INPUT`], the returned channel is told once the input ends (the launcher's
/// session is over: an `ssh` ended), and the agent then exits; anything else, or the end of
/// the input first (an agent started by hand with `echo <key> | ...`), and it is never told.
fn watch_input() -> tokio::sync::oneshot::Receiver<()> {
    use std::io::Read;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let watch = move || {
        let mut stdin = std::io::stdin().lock();
        let mut line = String::new();
        if !matches!(stdin.read_line(&mut line), Ok(n) if n > 0 && line.trim_end() == END_WITH_INPUT)
        {
            return;
        }
        let mut sink = [0u8; 512];
        loop {
            match stdin.read(&mut sink) {
                Ok(0) => break,
                Err(e) if e.kind() != std::io::ErrorKind::Interrupted => break,
                _ => {}
            }
        }
        let _ = tx.send(());
    };
    if let Err(e) = std::thread::Builder::new()
        .name("agent-input".into())
        .spawn(watch)
    {
        tracing::warn!("cannot watch the agent's input: {e}");
    }
    rx
}

/// Dials the head and runs the challenge; a connection refused is tried again until
/// [`CONNECT_DEADLINE`] (the head may still be starting), and no attempt outlasts it (an
/// address that drops what is sent to it would hold a connect for minutes).
async fn dial(address: &str, key: &[u8]) -> Result<Framed> {
    let deadline = tokio::time::Instant::now() + CONNECT_DEADLINE;
    let s = loop {
        let attempt = tokio::time::timeout_at(deadline, tokio::net::TcpStream::connect(address));
        match attempt.await {
            Ok(Ok(s)) => break s,
            Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("cannot reach the head at {address} yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => return Err(Error::Timeout),
        }
    };
    s.set_nodelay(true)?;
    let link = Framed::new(s.into_std()?.into(), Transport::Tcp)?;
    crate::listener::authenticate(&link, key).await?;
    Ok(link)
}

/// The line after the key on an agent's input that makes it exit once its input ends
/// (written by [`Ssh`](crate::launch::Ssh), whose session is the agent's input).
pub(crate) const END_WITH_INPUT: &str = "end-with-input";

/// The agent's life; returns its exit code. It exits when `input_ended` is told (see
/// [`watch_input`]).
async fn serve(
    args: Args,
    key: Vec<u8>,
    input_ended: Option<tokio::sync::oneshot::Receiver<()>>,
) -> i32 {
    let ctl = match dial(&args.address, &key).await {
        Ok(l) => l,
        Err(e) => fail(
            JOIN_FAILED,
            format!("cannot join the head at {}: {e}", args.address),
        ),
    };
    let hello = AgentHello {
        hello: Hello::ours(),
        hostname: hostname(),
        id: args.id.clone(),
        pid: u32::try_from(sys::current_pid()).unwrap_or(0),
        workers: args.workers,
    };
    let welcome = async {
        ctl.send(&mut FrameBuf::of(&Dial::Agent(hello))?).await?;
        ctl.recv().await?.decode_head::<Welcome>()
    };
    let (agent, head_deadline) = match tokio::time::timeout(CONNECT_DEADLINE, welcome).await {
        Ok(Ok(Welcome::Accepted {
            agent,
            head_deadline_ms,
        })) => (agent, Duration::from_millis(head_deadline_ms)),
        Ok(Ok(Welcome::Refused(message))) => fail(
            JOIN_FAILED,
            format!("refused by the head at {}: {message}", args.address),
        ),
        Ok(Err(e)) => fail(JOIN_FAILED, format!("no welcome from the head: {e}")),
        Err(_) => fail(JOIN_FAILED, "no welcome from the head in time"),
    };
    tracing::debug!(agent, "host agent joined the head");
    let ctl = Arc::new(ctl);
    let (control, mut control_rx) = unbounded_channel::<FromAgent>();
    let (output, mut output_rx) = mpsc::channel::<FromAgent>(OUTPUT_LINES_QUEUED);
    let out = Outbound { control, output };
    let writer = {
        let ctl = ctl.clone();
        tokio::spawn(async move {
            loop {
                // Answers to the head first: a backlog of output never delays a `Pong`.
                let m = tokio::select! {
                    biased;
                    m = control_rx.recv() => m,
                    Some(m) = output_rx.recv() => Some(m),
                };
                let Some(m) = m else { return };
                let Ok(mut f) = FrameBuf::of(&m) else {
                    continue;
                };
                if ctl.send(&mut f).await.is_err() {
                    return;
                }
            }
        })
    };
    let workers: Workers = Arc::default();
    let key: Arc<[u8]> = key.into();
    let address: Arc<str> = args.address.into();
    // Done only when told: a watcher that stopped watching drops its sender.
    let input_ended = async move {
        if let Some(rx) = input_ended
            && rx.await.is_ok()
        {
            return;
        }
        std::future::pending().await
    };
    tokio::pin!(input_ended);
    let code = loop {
        let received = tokio::select! {
            r = tokio::time::timeout(head_deadline, ctl.recv()) => r,
            () = &mut input_ended => {
                eprintln!(
                    "tokio-multiprocessing host agent {}: its launcher's session ended; exiting",
                    sys::current_pid()
                );
                break 0;
            }
        };
        let mut frame = match received {
            Ok(Ok(f)) => f,
            // The head is gone (it exited, or closed the cluster).
            Ok(Err(_)) => break 0,
            Err(_) => {
                eprintln!(
                    "tokio-multiprocessing host agent {}: heard nothing from the head for {head_deadline:?}; exiting",
                    sys::current_pid()
                );
                break HEAD_LOST;
            }
        };
        match frame.decode_head::<ToAgent>() {
            Ok(ToAgent::Spawn { token, env }) => {
                tokio::spawn(run_worker(
                    (address.clone(), key.clone(), head_deadline),
                    (agent, token, env.unwrap_or_default()),
                    out.clone(),
                    workers.clone(),
                ));
            }
            Ok(ToAgent::Kill { token }) => {
                if let Some(k) = lock(&workers).get(&token) {
                    k.kill();
                }
            }
            Ok(ToAgent::Ping) => {
                let _ = out.control.send(FromAgent::Pong);
            }
            Ok(ToAgent::Exit) => break 0,
            Err(e) => {
                eprintln!(
                    "tokio-multiprocessing host agent {}: the head sent a malformed frame: {e}",
                    sys::current_pid()
                );
                break HEAD_LOST;
            }
        }
    };
    for k in lock(&workers).values() {
        k.kill();
    }
    writer.abort();
    code
}

type Workers = Arc<Mutex<HashMap<u64, KillHandle>>>;

/// The lines of worker output an agent holds for the head at most, before its workers wait
/// in their writes.
const OUTPUT_LINES_QUEUED: usize = 1024;

/// The longest piece of a line of worker output sent as one message.
const OUTPUT_LINE_MAX: usize = 64 * 1024;

/// What an agent sends the head: its answers and reports, never held back, and its workers'
/// output, of which a bounded backlog waits (see [`forward_output`]).
#[derive(Clone)]
struct Outbound {
    control: UnboundedSender<FromAgent>,
    output: mpsc::Sender<FromAgent>,
}

fn lock(w: &Workers) -> std::sync::MutexGuard<'_, HashMap<u64, KillHandle>> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the worker for spawn `token`, with the pool's environment `env` over this
/// process's, and reports its pid, then its end. Its link fails once the head has been
/// unreachable on it for the head deadline, as the agent's own does.
async fn run_worker(
    (address, key, head_deadline): (Arc<str>, Arc<[u8]>, Duration),
    (agent, token, mut env): (u64, u64, Environment),
    out: Outbound,
    workers: Workers,
) {
    let started = async {
        // Checked before the link is dialled: a directory this host lacks costs no
        // connection (the start checks it again).
        env.check("a cluster worker")?;
        let link = dial(&address, &key).await?;
        sys::fail_when_silent(link.as_fd(), head_deadline)?;
        link.send(&mut FrameBuf::of(&Dial::Worker { agent, token })?)
            .await?;
        // The worker takes the socket; this process keeps no end of it, so the head sees
        // its end of stream when the worker dies.
        let fd = sys::dup_fd(link.as_fd())?;
        drop(link);
        crate::pool::HostWorker::start(fd, env).await
    };
    let mut worker = match started.await {
        Ok(w) => w,
        Err(e) => {
            let _ = out.control.send(FromAgent::SpawnFailed {
                token,
                message: e.to_string(),
                error: Some(e),
            });
            return;
        }
    };
    let pid = worker.pid();
    match worker.kill_handle() {
        Ok(k) => {
            lock(&workers).insert(token, k);
        }
        Err(e) => tracing::warn!("cannot keep a handle to kill worker {pid}: {e}"),
    }
    let _ = out.control.send(FromAgent::Spawned { token, pid });
    if let Some((stdout, stderr)) = worker.take_output() {
        for (fd, is_err) in [(stdout, false), (stderr, true)] {
            tokio::spawn(forward_output(fd, pid, is_err, out.output.clone()));
        }
    }
    let code = match worker.join().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("cannot wait for worker {pid}: {e}");
            -(sys::SIGKILL)
        }
    };
    lock(&workers).remove(&token);
    let _ = out.control.send(FromAgent::Exited {
        token,
        code,
        last_started: worker.last_started(),
    });
}

/// Forwards each line a worker writes on one of its output pipes to the head, until the
/// pipe's end of stream (the worker is gone). It waits while [`OUTPUT_LINES_QUEUED`] lines
/// wait for the head, and the worker then waits in its writes once its pipe is full, as a
/// program writing to a slow terminal does: the agent holds a bounded backlog, however much
/// its workers print. A line longer than [`OUTPUT_LINE_MAX`] goes in pieces of that size.
async fn forward_output(fd: OwnedFd, pid: u32, stderr: bool, out: mpsc::Sender<FromAgent>) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt};
    let pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(fd) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!("cannot read worker {pid}'s output: {e}");
            return;
        }
    };
    let mut pipe = tokio::io::BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let mut piece = (&mut pipe).take(OUTPUT_LINE_MAX as u64);
        match piece.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        if out
            .send(FromAgent::Output { pid, stderr, line })
            .await
            .is_err()
        {
            return;
        }
    }
}

/// This host's name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}
