//! How a function crosses a process boundary.
//!
//! A target is a `fn` item or a closure that captures nothing: a zero-sized type whose only
//! value the child can produce itself. What crosses is the address of a *trampoline*
//! monomorphised for that function, measured from an anchor symbol; the child, running the
//! very same binary (checked by fingerprint in the handshake), turns the offset back into the
//! trampoline, which decodes the arguments, calls the function, and catches its panic.

use std::any::Any;
use std::future::Future;
use std::marker::PhantomData;
use std::os::fd::{AsFd, OwnedFd};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::process::{ExitCode, Termination};

use futures::FutureExt;
use serde::Serialize;
use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, SeqAccess, Visitor};

use crate::error::{Error, TaskFailure};
use crate::sys::{self, FnZst};
use crate::wire::codec;
use crate::wire::plain::{self, AppendItems, ItemsOwned};
use crate::wire::{Encoded, Fd, FrameBuf, send_blocking};

/// Marks a target that returns its result directly.
#[doc(hidden)]
pub struct Blocking<R>(PhantomData<fn() -> R>);

/// Marks an `async fn` target: its future runs on the child's own runtime.
#[doc(hidden)]
pub struct Async<Fut>(PhantomData<fn() -> Fut>);

/// A call that finished, or a future that will.
#[doc(hidden)]
pub enum Invoked<R> {
    Ready(R),
    Pending(Pin<Box<dyn Future<Output = R> + Send>>),
}

/// A function that can run in another process: a `fn` item or a closure that captures
/// nothing, taking `Args`, a tuple of 0 to 6 arguments (like Python's `args=(...)`).
///
/// Implemented for every such function, and for `async fn`s; the `Marker` parameter tells
/// the two kinds apart and is always inferred. What the result must be depends on the user:
/// a [`Process`](crate::Process) target returns what `main` may return (`()`, or a `Result`
/// whose error is printed and gives exit code 1).
///
/// A closure that captures variables cannot cross: pass the values as arguments instead.
/// The trait is sealed: it is implemented for every such function, and nothing else can
/// implement it.
///
/// ```compile_fail,E0080
/// let name = String::from("bob");
/// // error: "a target must be a `fn` item or a closure that captures nothing: ..."
/// let process = tokio_multiprocessing::Process::new(move || println!("{name}"), ());
/// ```
///
/// The same closure without the capture is a target:
///
/// ```
/// # #[tokio::main]
/// # async fn main() -> tokio_multiprocessing::Result<()> {
/// tokio_multiprocessing::Process::new(|name: String| println!("{name}"), ("bob".to_string(),))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run in another process with arguments `{Args}`",
    label = "not a `fn` item or non-capturing closure taking these arguments",
    note = "a target crosses to the other process by address: it must be a `fn` item or a \
            closure that captures nothing, taking its arguments as a tuple like Python's \
            `args=(...)` whose items implement serde's traits; pass captured values as \
            arguments instead",
    note = "`map`, `imap` and `imap_unordered` pass each item as the function's one argument: \
            for a function of several arguments, map over tuples of them with `starmap`"
)]
pub trait Target<Args, Marker>: sealed::Sealed<Args, Marker> + Send + Sync + 'static {
    /// What the function returns (for an `async fn`, what its future resolves to).
    type Output: Send + 'static;

    /// Whether the function is an `async fn` (its call returns a future to await).
    #[doc(hidden)]
    const IS_ASYNC: bool;

    #[doc(hidden)]
    fn __invoke(self, args: Args) -> Invoked<Self::Output>;

    #[doc(hidden)]
    fn __conjure() -> Self;
}

/// Keeps [`Target`] implemented only here, for the functions the trampolines can call.
mod sealed {
    pub trait Sealed<Args, Marker> {}
}

macro_rules! targets {
    ($($a:ident),*) => {
        impl<F, R, $($a),*> sealed::Sealed<($($a,)*), Blocking<R>> for F
        where
            F: Fn($($a),*) -> R + FnZst<($($a,)*), R> + Send + Sync,
            R: Unpin + Send + 'static,
        {
        }

        impl<F, Fut, $($a),*> sealed::Sealed<($($a,)*), Async<Fut>> for F
        where
            F: Fn($($a),*) -> Fut + FnZst<($($a,)*), Fut> + Send + Sync,
            Fut: Future + Send + 'static,
            Fut::Output: Send + 'static,
        {
        }

        impl<F, R, $($a),*> Target<($($a,)*), Blocking<R>> for F
        where
            F: Fn($($a),*) -> R + FnZst<($($a,)*), R> + Send + Sync,
            // `Unpin` tells a plain result from an `async fn`'s future, which never is.
            R: Unpin + Send + 'static,
        {
            type Output = R;
            const IS_ASYNC: bool = false;

            #[allow(non_snake_case)]
            fn __invoke(self, ($($a,)*): ($($a,)*)) -> Invoked<R> {
                Invoked::Ready(self($($a),*))
            }

            fn __conjure() -> Self {
                <F as FnZst<($($a,)*), R>>::conjure()
            }
        }

        impl<F, Fut, $($a),*> Target<($($a,)*), Async<Fut>> for F
        where
            F: Fn($($a),*) -> Fut + FnZst<($($a,)*), Fut> + Send + Sync,
            Fut: Future + Send + 'static,
            Fut::Output: Send + 'static,
        {
            type Output = Fut::Output;
            const IS_ASYNC: bool = true;

            #[allow(non_snake_case)]
            fn __invoke(self, ($($a,)*): ($($a,)*)) -> Invoked<Fut::Output> {
                Invoked::Pending(Box::pin(self($($a),*)))
            }

            fn __conjure() -> Self {
                <F as FnZst<($($a,)*), Fut>>::conjure()
            }
        }
    };
}
targets!();
targets!(A);
targets!(A, B);
targets!(A, B, C);
targets!(A, B, C, D);
targets!(A, B, C, D, E);
targets!(A, B, C, D, E, G);

/// Why a call produced no result.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The arguments did not decode.
    Args(Error),
    /// The function panicked.
    Panicked(Panic),
}

/// A panic caught in a call: its message, and where it happened when the panic hook of
/// [`record_panics`] saw it.
#[derive(Debug, Default)]
pub(crate) struct Panic {
    message: String,
    location: Option<String>,
    backtrace: Option<String>,
}

impl std::fmt::Display for Panic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(at) => write!(f, "{} (at {at})", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl From<&str> for Panic {
    fn from(message: &str) -> Panic {
        Panic {
            message: message.to_string(),
            ..Panic::default()
        }
    }
}

impl Failure {
    /// How the failure is reported to the pool.
    pub(crate) fn into_task_failure(self) -> TaskFailure {
        match self {
            Failure::Args(Error::Decode { type_name, message }) => {
                TaskFailure::BadArgs(format!("`{type_name}`: {message}"))
            }
            Failure::Args(Error::Encode { type_name, message }) => {
                TaskFailure::BadResult(format!("`{type_name}`: {message}"))
            }
            Failure::Args(Error::FrameTooLarge { size, max }) => TaskFailure::TooLarge {
                size,
                max: max as u64,
            },
            Failure::Args(e) => TaskFailure::Refused(e.to_string()),
            Failure::Panicked(p) => TaskFailure::Panicked {
                message: p.message,
                location: p.location,
                backtrace: p.backtrace,
            },
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with a payload that is not a string".to_string()
    }
}

thread_local! {
    /// Where the last panic on this thread happened, and its backtrace, as the hook of
    /// [`record_panics`] saw it; taken when the panic is caught.
    static LAST_PANIC: std::cell::RefCell<Option<(String, Option<String>)>> =
        const { std::cell::RefCell::new(None) };
}

/// Makes this process record where each panic happens (and its backtrace, when
/// `RUST_BACKTRACE` asks for one), for the calls that catch it to report; the panic is
/// printed on stderr as usual only if `print`. A pool worker calls it: its caller gets the
/// panic in the task's error, so the worker's stderr (the caller's terminal) stays clean.
pub(crate) fn record_panics(print: bool) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let location = info
            .location()
            .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()));
        let bt = std::backtrace::Backtrace::capture();
        let backtrace =
            (bt.status() == std::backtrace::BacktraceStatus::Captured).then(|| bt.to_string());
        if let Some(location) = location {
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, backtrace)));
        }
        if print {
            previous(info);
        }
    }));
}

/// A caught panic, with where it happened if the hook recorded it.
fn caught(payload: &(dyn Any + Send)) -> Panic {
    let (location, backtrace) = LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .map_or((None, None), |(l, b)| (Some(l), b));
    Panic {
        message: panic_message(payload),
        location,
        backtrace,
    }
}

/// Calls `f(args)`, turning a panic (in the call or in its future) into a [`Failure`].
pub(crate) fn invoke_caught<F, A, M>(f: F, args: A) -> Invoked<Result<F::Output, Failure>>
where
    F: Target<A, M>,
{
    match catch_unwind(AssertUnwindSafe(|| f.__invoke(args))) {
        Ok(Invoked::Ready(r)) => Invoked::Ready(Ok(r)),
        Ok(Invoked::Pending(fut)) => Invoked::Pending(Box::pin(
            AssertUnwindSafe(fut)
                .catch_unwind()
                .map(|r| r.map_err(|p| Failure::Panicked(caught(&*p)))),
        )),
        Err(p) => Invoked::Ready(Err(Failure::Panicked(caught(&*p)))),
    }
}

/// The entry point a child calls for a `Process` target: decodes the arguments, runs the
/// target, and turns its result into an exit code as `main`'s would be.
pub(crate) type ProcessEntry = fn(&[u8], Vec<OwnedFd>) -> Invoked<Result<i32, Failure>>;

/// The exit code `main` would give for `result`: `Termination::report`, which also prints
/// an `Err` to stderr.
fn exit_code_of(result: impl Termination) -> i32 {
    let code = result.report();
    (0..=255u8)
        .find(|n| ExitCode::from(*n) == code)
        .map_or(1, i32::from)
}

/// The [`ProcessEntry`] of target `F`.
pub(crate) fn process_entry<F, A, M>() -> ProcessEntry
where
    F: Target<A, M>,
    F::Output: Termination,
    A: DeserializeOwned,
{
    run_process::<F, A, M>
}

/// The [`ProcessEntry`] of `target`, with its type inferred.
pub(crate) fn process_entry_for<F, A, M>(_target: F) -> ProcessEntry
where
    F: Target<A, M>,
    F::Output: Termination,
    A: DeserializeOwned,
{
    run_process::<F, A, M>
}

fn run_process<F, A, M>(bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked<Result<i32, Failure>>
where
    F: Target<A, M>,
    F::Output: Termination,
    A: DeserializeOwned,
{
    run_then::<F, A, M, _>(bytes, fds, exit_code_of)
}

/// Decodes the arguments, runs target `F` on them, and turns its result by `then`.
fn run_then<F, A, M, T>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
    then: fn(F::Output) -> T,
) -> Invoked<Result<T, Failure>>
where
    F: Target<A, M>,
    A: DeserializeOwned,
    T: 'static,
{
    let args: A = match codec::decode(bytes, fds) {
        Ok(a) => a,
        Err(e) => return Invoked::Ready(Err(Failure::Args(e))),
    };
    match invoke_caught(F::__conjure(), args) {
        Invoked::Ready(r) => Invoked::Ready(r.map(then)),
        Invoked::Pending(fut) => Invoked::Pending(Box::pin(fut.map(move |r| r.map(then)))),
    }
}

/// The [`ProcessEntry`] of a [`Process::call`](crate::Process::call) target `F`: decodes
/// its arguments and the socket its answer goes to (`(A, Fd)`), runs it, and sends back
/// `Ok(result)` or `Err(TaskFailure)` in one frame. Exit code 0 once a result went out, 1
/// after a failure (as a panicking `Process` target's).
pub(crate) fn call_entry<F, A, M>(bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked<Result<i32, Failure>>
where
    F: Target<A, M>,
    F::Output: Serialize,
    A: DeserializeOwned,
{
    let (args, answer): (A, Fd) = match codec::decode(bytes, fds) {
        Ok(a) => a,
        Err(e) => return Invoked::Ready(Err(Failure::Args(e))),
    };
    let answer = answer.into_owned();
    // A panic travels to the caller in the answer, as a pool task's does, not to stderr.
    record_panics(false);
    match invoke_caught(F::__conjure(), args) {
        Invoked::Ready(r) => Invoked::Ready(Ok(answer_call(&answer, r))),
        Invoked::Pending(fut) => {
            Invoked::Pending(Box::pin(fut.map(move |r| Ok(answer_call(&answer, r)))))
        }
    }
}

/// Sends a call's outcome on `answer`, and gives the child's exit code. A result that cannot
/// be encoded, or is over the maximum frame size, is sent as that failure. A parent that
/// is gone cannot be answered: the code says how the call went all the same.
fn answer_call<R: Serialize>(answer: &OwnedFd, r: Result<R, Failure>) -> i32 {
    let (frame, code) = match r.and_then(|v| answer_frame(&v)) {
        Ok(frame) => (Ok(frame), 0),
        Err(f) => {
            let f = f.into_task_failure();
            let frame = FrameBuf::of(&Err::<(), TaskFailure>(f)).and_then(|mut f| {
                f.check_size()?;
                Ok(f)
            });
            (frame, 1)
        }
    };
    if let Ok(mut frame) = frame
        && let Err(e) = send_blocking(answer.as_fd(), &mut frame)
    {
        tracing::debug!("a called process could not answer its parent: {e}");
    }
    code
}

/// The answer that carries a call's result `v`. A `Serialize` of the user's that panics
/// fails the call as a panic of its target does (uncaught, it ended the child unanswered);
/// one that fails, or a frame over the maximum size, fails it naming `R`, not our wrapper.
fn answer_frame<R: Serialize>(v: &R) -> Result<FrameBuf, Failure> {
    let encoded = catch_unwind(AssertUnwindSafe(|| FrameBuf::of(&Ok::<&R, TaskFailure>(v))))
        .map_err(|p| Failure::Panicked(caught(&*p)))?;
    encoded
        .and_then(|mut f| f.check_size().map(|()| f))
        .map_err(|e| Failure::Args(e.naming::<R>()))
}

/// What a pool's or a manager's initializer may return: what `main` may return (`()`, an
/// [`ExitCode`], or a `Result` of one of these whose error implements `Debug`), read so
/// that a failure's text reaches the caller, in
/// [`Error::InitializerFailed`](crate::Error::InitializerFailed), rather than the
/// initializer's stderr.
///
/// Implement it for a [`Termination`] type of your own to return that from an initializer:
/// [`failure`](Self::failure) says what went wrong, or `None`.
pub trait InitializerOutput: Termination {
    /// `None` for a success; for a failure, what the caller is told. An `Err(e)` is told as
    /// `main` prints it: `returned an error: {e:?}`.
    fn failure(self) -> Option<String>;
}

impl InitializerOutput for () {
    fn failure(self) -> Option<String> {
        None
    }
}

impl InitializerOutput for ExitCode {
    fn failure(self) -> Option<String> {
        match exit_code_of(self) {
            0 => None,
            code => Some(format!("returned exit code {code}")),
        }
    }
}

impl InitializerOutput for std::convert::Infallible {
    fn failure(self) -> Option<String> {
        match self {}
    }
}

impl<T: InitializerOutput, E: std::fmt::Debug> InitializerOutput for Result<T, E> {
    fn failure(self) -> Option<String> {
        match self {
            Ok(t) => t.failure(),
            Err(e) => Some(format!("returned an error: {e:?}")),
        }
    }
}

/// The entry point of an initializer (a pool worker's, a manager server's): decodes the
/// arguments, runs it, and gives `Err` with what its failure says.
pub(crate) type InitializerEntry =
    fn(&[u8], Vec<OwnedFd>) -> Invoked<Result<Result<(), String>, Failure>>;

fn run_initializer<F, A, M>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Invoked<Result<Result<(), String>, Failure>>
where
    F: Target<A, M>,
    F::Output: InitializerOutput,
    A: DeserializeOwned,
{
    run_then::<F, A, M, _>(bytes, fds, |out: F::Output| match out.failure() {
        None => Ok(()),
        Some(message) => Err(message),
    })
}

/// An initializer as it travels to the process that runs it (a pool worker, a manager
/// server): the entry point of `F` and its arguments, encoded.
///
/// # Errors
/// [`Error::Encode`](crate::Error::Encode) if the arguments cannot be encoded.
pub(crate) fn initializer<F, A, M>(args: &A) -> crate::Result<(InitializerEntry, Encoded)>
where
    F: Target<A, M>,
    F::Output: InitializerOutput,
    A: Serialize + DeserializeOwned,
{
    Ok((run_initializer::<F, A, M>, Encoded::new(args)?))
}

/// What an initializer's run gives (a pool worker's, a manager server's), for the process
/// that asked for it: `Err` says how it failed.
pub(crate) fn initializer_outcome(
    out: std::result::Result<std::result::Result<(), String>, Failure>,
) -> std::result::Result<(), String> {
    match out {
        Ok(r) => r,
        Err(Failure::Panicked(p)) => Err(format!("panicked: {p}")),
        Err(Failure::Args(e)) => Err(e.to_string()),
    }
}

/// The offset that names an initializer's entry to a process running the same binary.
pub(crate) fn initializer_entry_offset(entry: InitializerEntry) -> i64 {
    sys::offset_from_anchor(entry as usize)
}

/// The offset that names `entry` to a process running the same binary.
pub(crate) fn process_entry_offset(entry: ProcessEntry) -> i64 {
    sys::offset_from_anchor(entry as usize)
}

/// The entry point a pool worker calls for one task: decodes the arguments, runs the target
/// and encodes its result.
pub(crate) type TaskEntry = fn(&[u8], Vec<OwnedFd>) -> Invoked<Result<Encoded, Failure>>;

/// The [`TaskEntry`] that runs target `F` once, on one tuple of arguments `A`.
pub(crate) fn task_entry<F, A, M>() -> TaskEntry
where
    F: Target<A, M>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    run_task::<F, A, M>
}

/// The [`TaskEntry`] that runs target `F` on each tuple of a chunk (an encoded `Vec<A>`) in
/// turn, and encodes a [`ChunkOut`]: the items' results and the panic messages of those that
/// failed. One frame carries a whole chunk, so a million trivial calls cost a few thousand
/// messages.
pub(crate) fn chunk_entry<F, A, M>() -> TaskEntry
where
    F: Target<A, M>,
    A: DeserializeOwned + Send + 'static,
    F::Output: Serialize,
{
    run_chunk::<F, A, M>
}

/// The offset that names a task entry to a process running the same binary.
pub(crate) fn task_entry_offset(entry: TaskEntry) -> i64 {
    sys::offset_from_anchor(entry as usize)
}

fn encode_result<R: Serialize>(r: R) -> Result<Encoded, Failure> {
    Encoded::new(&r).map_err(Failure::Args)
}

fn run_task<F, A, M>(bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked<Result<Encoded, Failure>>
where
    F: Target<A, M>,
    A: DeserializeOwned,
    F::Output: Serialize,
{
    let args: A = match codec::decode(bytes, fds) {
        Ok(a) => a,
        Err(e) => return Invoked::Ready(Err(Failure::Args(e))),
    };
    match invoke_caught(F::__conjure(), args) {
        Invoked::Ready(r) => Invoked::Ready(r.and_then(encode_result)),
        Invoked::Pending(fut) => Invoked::Pending(Box::pin(fut.map(|r| r.and_then(encode_result)))),
    }
}

/// Calls a pool task's entry, turning a panic anywhere in it into a [`Failure`]: in the
/// target (as [`invoke_caught`] does), and also in decoding its arguments or encoding its
/// result (a `Deserialize` or `Serialize` of the user's that panics), in the call or in its
/// future. So such a panic fails its task alone, as the target's own does: the worker lives
/// on, and an `async fn` task is answered rather than lost with its runtime's task.
pub(crate) fn call_task(
    entry: TaskEntry,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Invoked<Result<Encoded, Failure>> {
    call_caught(entry, bytes, fds)
}

/// Calls a `Process` target's entry as [`call_task`] calls a task's: a panic in decoding
/// its arguments (a `Deserialize` of the user's) or in reporting its result (a `Debug` of
/// the error it returned) is a panic of the target, exit code 1. Uncaught, it reached the
/// child's bootstrap, which cannot unwind (abort, exit code -6), or, in a `fork` child, the
/// copy of its parent's stack, which then ran on as if it were the parent.
pub(crate) fn call_process(
    entry: ProcessEntry,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Invoked<Result<i32, Failure>> {
    call_caught(entry, bytes, fds)
}

/// An entry point whose call yields a `T` or a [`Failure`]: a [`TaskEntry`] or a
/// [`ProcessEntry`].
type Entry<T> = fn(&[u8], Vec<OwnedFd>) -> Invoked<Result<T, Failure>>;

fn call_caught<T: 'static>(
    entry: Entry<T>,
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Invoked<Result<T, Failure>> {
    match catch_unwind(AssertUnwindSafe(|| entry(bytes, fds))) {
        Ok(Invoked::Ready(r)) => Invoked::Ready(r),
        Ok(Invoked::Pending(fut)) => Invoked::Pending(Box::pin(
            AssertUnwindSafe(fut)
                .catch_unwind()
                .map(|r| r.unwrap_or_else(|p| Err(Failure::Panicked(caught(&*p))))),
        )),
        Err(p) => Invoked::Ready(Err(Failure::Panicked(caught(&*p)))),
    }
}

/// A chunk's answer: the results of the items that succeeded, in order, and the index and
/// failure of each item that failed (rarely any, so the common case costs nothing per item
/// beyond its result).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(bound(
    serialize = "R: Serialize + 'static",
    deserialize = "R: serde::de::DeserializeOwned + 'static"
))]
pub(crate) struct ChunkOut<R> {
    /// Plain numbers travel as one `bin` (see [`plain`]).
    #[serde(with = "plain::vec")]
    pub(crate) ok: Vec<R>,
    pub(crate) failed: Vec<(u32, TaskFailure)>,
}

/// Decodes a [`ChunkOut`] by appending its results to a vector of the caller's; gives back
/// the failures (index and failure).
pub(crate) struct ChunkInto<'a, R>(pub(crate) &'a mut Vec<R>);

impl<'de, R: DeserializeOwned + 'static> DeserializeSeed<'de> for ChunkInto<'_, R> {
    type Value = Vec<(u32, TaskFailure)>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        // The fields of a `ChunkOut`, as serde derives them (a struct is a MessagePack array).
        d.deserialize_tuple(2, self)
    }
}

impl<'de, R: DeserializeOwned + 'static> Visitor<'de> for ChunkInto<'_, R> {
    type Value = Vec<(u32, TaskFailure)>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a chunk's results and failures")
    }

    fn visit_seq<S: SeqAccess<'de>>(self, mut seq: S) -> Result<Self::Value, S::Error> {
        let missing = || de::Error::custom("a chunk's answer lacks a field");
        seq.next_element_seed(AppendItems(self.0))?
            .ok_or_else(missing)?;
        seq.next_element()?.ok_or_else(missing)
    }
}

impl<R> ChunkOut<R> {
    fn with_capacity(n: usize) -> ChunkOut<R> {
        ChunkOut {
            ok: Vec::with_capacity(n),
            failed: Vec::new(),
        }
    }

    fn push(&mut self, index: usize, r: Result<R, Failure>) {
        match r {
            Ok(v) => self.ok.push(v),
            Err(f) => self.failed.push((index as u32, f.into_task_failure())),
        }
    }
}

fn run_chunk<F, A, M>(bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked<Result<Encoded, Failure>>
where
    F: Target<A, M>,
    A: DeserializeOwned + Send + 'static,
    F::Output: Serialize,
{
    match codec::decode::<ItemsOwned<A>>(bytes, fds) {
        Ok(items) => run_items::<F, A, M, _>(items.0.into_iter()),
        Err(e) => Invoked::Ready(Err(Failure::Args(e))),
    }
}

/// The [`TaskEntry`] that runs a one-argument target `F` on each item of a chunk, sent as
/// an encoded `Vec<T>` (each item the argument itself, not a one-element tuple).
pub(crate) fn chunk_entry1<F, T, M>() -> TaskEntry
where
    F: Target<(T,), M>,
    T: DeserializeOwned + Send + 'static,
    F::Output: Serialize,
{
    run_chunk1::<F, T, M>
}

fn run_chunk1<F, T, M>(bytes: &[u8], fds: Vec<OwnedFd>) -> Invoked<Result<Encoded, Failure>>
where
    F: Target<(T,), M>,
    T: DeserializeOwned + Send + 'static,
    F::Output: Serialize,
{
    if !F::IS_ASYNC
        && fds.is_empty()
        && let Some(items) = plain::items_in_place::<T>(bytes)
    {
        return Invoked::Ready(run_in_place::<F, T, M>(items));
    }
    match codec::decode::<ItemsOwned<T>>(bytes, fds) {
        Ok(items) => run_items::<F, (T,), M, _>(items.0.into_iter().map(|t| (t,))),
        Err(e) => Invoked::Ready(Err(Failure::Args(e))),
    }
}

/// Calls a blocking target, its panic caught.
fn call_blocking<F, A, M>(args: A) -> Result<F::Output, Failure>
where
    F: Target<A, M>,
{
    match invoke_caught(F::__conjure(), args) {
        Invoked::Ready(r) => r,
        Invoked::Pending(_) => Err(Failure::Panicked(
            "a blocking target returned a future".into(),
        )),
    }
}

/// Runs a blocking one-argument target on a chunk of plain numbers read where they lie in
/// the task's frame, with no vector of them in between; plain-number results are written
/// straight into the answer's encoding ([`PlainChunkOut`]), others gathered as usual.
fn run_in_place<F, T, M>(items: impl ExactSizeIterator<Item = T>) -> Result<Encoded, Failure>
where
    F: Target<(T,), M>,
    F::Output: Serialize,
{
    let Some(mut out) = PlainChunkOut::new::<F::Output>(items.len()) else {
        return run_blocking::<F, (T,), M>(items.map(|t| (t,)));
    };
    for (i, t) in items.enumerate() {
        match call_blocking::<F, (T,), M>((t,)) {
            Ok(v) => out.push(&v),
            Err(f) => out.fail(i, f),
        }
    }
    out.finish()
}

/// A [`ChunkOut`] of plain-number results, encoded as they come: the same bytes as
/// `ChunkOut`'s encoding (an array of the results, as one `bin`, and the failures), written
/// without a vector of results in between.
struct PlainChunkOut {
    /// The array's head, the `bin`'s head (its length written at the end), the results.
    bytes: Vec<u8>,
    failed: Vec<(u32, TaskFailure)>,
}

impl PlainChunkOut {
    /// The head: a two-element array, then a `bin` whose 4-byte length is filled in by
    /// [`finish`](Self::finish).
    const HEAD: [u8; 6] = [0x92, 0xc6, 0, 0, 0, 0];

    /// Room for `n` results, if `R` is a plain number type on a little-endian machine (the
    /// wire's order).
    fn new<R: 'static>(n: usize) -> Option<PlainChunkOut> {
        if !cfg!(target_endian = "little") || !plain::is_plain::<R>() {
            return None;
        }
        let mut bytes = Vec::with_capacity(Self::HEAD.len() + n * std::mem::size_of::<R>() + 1);
        bytes.extend_from_slice(&Self::HEAD);
        Some(PlainChunkOut {
            bytes,
            failed: Vec::new(),
        })
    }

    fn push<R: 'static>(&mut self, r: &R) {
        if let Some(b) = sys::bytes_of_number(r) {
            self.bytes.extend_from_slice(b);
        }
    }

    fn fail(&mut self, index: usize, f: Failure) {
        self.failed.push((index as u32, f.into_task_failure()));
    }

    /// The encoding, its `bin`'s length filled in and the failures after it.
    ///
    /// # Errors
    /// [`Failure::Args`] for results over 4 GiB (no `bin` holds them) or failures that
    /// cannot be encoded.
    fn finish(mut self) -> Result<Encoded, Failure> {
        let len = self.bytes.len() - Self::HEAD.len();
        let len = u32::try_from(len).map_err(|_| {
            Failure::Args(Error::FrameTooLarge {
                size: len as u64,
                max: crate::max_frame_size(),
            })
        })?;
        self.bytes[2..6].copy_from_slice(&len.to_be_bytes());
        let failed = Encoded::new(&self.failed).map_err(Failure::Args)?;
        self.bytes.extend_from_slice(&failed.bytes);
        Ok(Encoded {
            bytes: self.bytes,
            fds: Vec::new(),
        })
    }
}

/// Runs a blocking target on each tuple of a chunk in turn and encodes their [`ChunkOut`].
fn run_blocking<F, A, M>(items: impl ExactSizeIterator<Item = A>) -> Result<Encoded, Failure>
where
    F: Target<A, M>,
    F::Output: Serialize,
{
    let mut out = ChunkOut::with_capacity(items.len());
    for (i, args) in items.enumerate() {
        out.push(i, call_blocking::<F, A, M>(args));
    }
    encode_result(out)
}

fn run_items<F, A, M, I>(items: I) -> Invoked<Result<Encoded, Failure>>
where
    F: Target<A, M>,
    A: Send + 'static,
    I: ExactSizeIterator<Item = A> + Send + 'static,
    F::Output: Serialize,
{
    if !F::IS_ASYNC {
        return Invoked::Ready(run_blocking::<F, A, M>(items));
    }
    Invoked::Pending(Box::pin(async move {
        let mut out = ChunkOut::with_capacity(items.len());
        for (i, args) in items.enumerate() {
            let r = match invoke_caught(F::__conjure(), args) {
                Invoked::Ready(r) => r,
                Invoked::Pending(fut) => fut.await,
            };
            out.push(i, r);
        }
        encode_result(out)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn appended<R>(chunk: &ChunkOut<R>, out: &mut Vec<R>) -> Vec<(u32, TaskFailure)>
    where
        R: Serialize + DeserializeOwned + 'static,
    {
        let enc = Encoded::new(chunk).expect("encodes");
        codec::decode_with(&enc.bytes, Vec::new(), ChunkInto(out)).expect("decodes")
    }

    #[test]
    fn a_chunk_decodes_onto_the_results_so_far() {
        let mut out = vec![1u64, 2];
        let chunk = ChunkOut {
            ok: vec![3u64, 4],
            failed: Vec::new(),
        };
        assert!(appended(&chunk, &mut out).is_empty());
        assert_eq!(out, vec![1, 2, 3, 4]);

        let mut out = vec!["a".to_string()];
        let chunk = ChunkOut {
            ok: vec!["b".to_string()],
            failed: vec![(1, TaskFailure::Refused("boom".to_string()))],
        };
        let failed = appended(&chunk, &mut out);
        assert!(
            matches!(&failed[..], [(1, TaskFailure::Refused(m))] if m == "boom"),
            "{failed:?}"
        );
        assert_eq!(out, vec!["a".to_string(), "b".to_string()]);
    }

    fn halve_or_panic(x: i64) -> i64 {
        assert!(x % 7 != 3, "no {x}");
        x / 2
    }

    fn tenth(x: u32) -> f64 {
        f64::from(x) / 10.0
    }

    fn label(x: u16) -> String {
        format!("#{x}")
    }

    /// A chunk's answer as the caller sees it: the results, and each failure's index and
    /// description.
    type Seen<R> = (Vec<R>, Vec<(u32, String)>);

    /// A chunk of `items` as a map sends it, run by `f` in place and as a decoded vector:
    /// both answers, for the two to be compared.
    fn both_ways_of<F, T, M>(f: F, items: Vec<T>) -> [Seen<F::Output>; 2]
    where
        F: Target<(T,), M>,
        T: Serialize + DeserializeOwned + Send + 'static,
        F::Output: Serialize + DeserializeOwned,
    {
        let _ = f;
        let args = Encoded::new(&plain::Items::all(&items)).expect("encodes");
        let in_place = plain::items_in_place::<T>(&args.bytes).expect("plain");
        let fast = run_in_place::<F, T, M>(in_place).expect("runs");
        let slow = match run_chunk::<F, (T,), M>(
            &Encoded::new(&items.iter().map(|t| (t,)).collect::<Vec<_>>())
                .expect("encodes")
                .bytes,
            Vec::new(),
        ) {
            Invoked::Ready(r) => r.expect("runs"),
            Invoked::Pending(_) => panic!("a blocking target"),
        };
        [fast, slow].map(|enc| {
            let mut out = Vec::new();
            let failed =
                codec::decode_with(&enc.bytes, Vec::new(), ChunkInto(&mut out)).expect("decodes");
            let failed = failed
                .into_iter()
                .map(|(i, f)| (i, format!("{f:?}")))
                .collect();
            (out, failed)
        })
    }

    #[test]
    fn a_chunk_run_in_place_answers_as_a_decoded_one() {
        let [fast, slow] = both_ways_of(halve_or_panic, Vec::new());
        assert_eq!(fast, slow);
        assert!(fast.0.is_empty() && fast.1.is_empty());

        let items: Vec<i64> = (-40..300).collect();
        let [fast, slow] = both_ways_of(halve_or_panic, items.clone());
        assert_eq!(fast, slow);
        assert_eq!(fast.1.len(), items.iter().filter(|x| *x % 7 == 3).count());
        assert!(fast.1[0].1.contains("no "), "{:?}", fast.1[0]);
        let ok: Vec<i64> = items
            .iter()
            .filter(|x| *x % 7 != 3)
            .map(|x| x / 2)
            .collect();
        assert_eq!(fast.0, ok);

        // Other plain result types, and results that are not plain numbers.
        let [fast, slow] = both_ways_of(tenth, (0..1000).collect());
        assert_eq!(fast, slow);
        assert_eq!(fast.0[999], 99.9);
        let [fast, slow] = both_ways_of(label, vec![1, 65535]);
        assert_eq!(fast, slow);
        assert_eq!(fast.0, vec!["#1".to_string(), "#65535".to_string()]);
    }

    #[test]
    fn only_a_whole_bin_of_plain_numbers_is_read_in_place() {
        let bin = Encoded::new(&plain::Items::all(&vec![1u32, 2, 3])).expect("encodes");
        assert_eq!(
            plain::items_in_place::<u32>(&bin.bytes).map(Iterator::collect::<Vec<_>>),
            Some(vec![1, 2, 3])
        );
        // Not a whole number of items, a truncated or padded bin, another item type.
        assert!(plain::items_in_place::<u64>(&bin.bytes).is_none());
        assert!(plain::items_in_place::<u32>(&bin.bytes[..bin.bytes.len() - 1]).is_none());
        let mut padded = bin.bytes.clone();
        padded.push(0);
        assert!(plain::items_in_place::<u32>(&padded).is_none());
        assert!(plain::items_in_place::<String>(&bin.bytes).is_none());
        assert!(plain::items_in_place::<u8>(&[0x93, 1, 2, 3]).is_none());
    }

    #[test]
    fn a_malformed_chunk_is_an_error() {
        let enc = Encoded::new(&(1u8,)).expect("encodes");
        let mut out: Vec<u64> = Vec::new();
        assert!(codec::decode_with(&enc.bytes, Vec::new(), ChunkInto(&mut out)).is_err());
    }
}
