//! [`StartMethod`], and the method used when none is named: the program's default, which a
//! child inherits from the method that started it.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::error::{Error, Result};

/// How a child process comes to life, as in Python's `multiprocessing.set_start_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StartMethod {
    /// Re-execute this program (`/proc/self/exe`); the child runs `main` up to
    /// [`init`](crate::init), which runs the target. Safe whatever threads the parent has.
    /// The default.
    #[default]
    Spawn,
    /// Ask a fork server to fork a child: the server is this program re-executed once, which
    /// forks a copy of itself per child, so starts are fast whatever threads the parent has.
    ForkServer,
    /// Fork the calling process directly: the fastest start. Refused with an error unless the
    /// caller has a single thread (a `current_thread` runtime that has not started blocking
    /// threads), because forking a multi-threaded process (tokio's default runtime included)
    /// is unsound. The child keeps only the descriptors its arguments own, so the parent's
    /// runtime's are closed in it: an `async fn` target runs on a runtime the crate builds
    /// for it first, but a plain target cannot build a tokio runtime of its own there.
    /// The first start by `Spawn` or `ForkServer` (a pool's or a manager's included) starts
    /// the crate's launcher thread, which stays: `Fork` is then refused in that process, so
    /// a process that mixes methods forks first.
    Fork,
}

impl StartMethod {
    pub(super) fn to_u8(self) -> u8 {
        match self {
            StartMethod::Spawn => 0,
            StartMethod::ForkServer => 1,
            StartMethod::Fork => 2,
        }
    }

    pub(super) fn from_u8(v: u8) -> Option<StartMethod> {
        match v {
            0 => Some(StartMethod::Spawn),
            1 => Some(StartMethod::ForkServer),
            2 => Some(StartMethod::Fork),
            _ => None,
        }
    }

    /// Python's name for this method: `"spawn"`, `"forkserver"` or `"fork"`.
    pub fn name(self) -> &'static str {
        match self {
            StartMethod::Spawn => "spawn",
            StartMethod::ForkServer => "forkserver",
            StartMethod::Fork => "fork",
        }
    }
}

/// Parses Python's name of a method (`"spawn"`, `"forkserver"`, `"fork"`); any other name
/// is [`Error::InvalidArgument`], as Python's `ValueError`.
impl std::str::FromStr for StartMethod {
    type Err = Error;

    fn from_str(s: &str) -> Result<StartMethod> {
        match s {
            "spawn" => Ok(StartMethod::Spawn),
            "forkserver" => Ok(StartMethod::ForkServer),
            "fork" => Ok(StartMethod::Fork),
            other => Err(Error::InvalidArgument(format!(
                "unknown start method {other:?} (expected spawn, forkserver or fork)"
            ))),
        }
    }
}

/// The default method (its [`StartMethod::to_u8`]), with [`FIXED`] once it has been set or
/// read: one atomic, so that a [`try_set_start_method`] racing a read or another set either
/// wins whole or fails.
static DEFAULT_METHOD: AtomicU8 = AtomicU8::new(0);

/// The bit of [`DEFAULT_METHOD`] that says the default was set or used (Python's
/// `_actual_context` once it is not `None`).
const FIXED: u8 = 0x80;

/// Sets the start method used when a [`Process`](crate::Process) or pool does not name one
/// (Python's `multiprocessing.set_start_method(method, force=True)`).
///
/// It always sets it, whether or not it had been set or used before; a library that must
/// not override a choice the program made uses [`try_set_start_method`], which refuses as
/// Python's default `force=False` does.
///
/// A child inherits the method that started it as its own default, as in Python: a child
/// started with [`StartMethod::ForkServer`], explicitly or because the parent set it here,
/// starts its own children with the fork server too.
pub fn set_start_method(method: StartMethod) {
    DEFAULT_METHOD.store(method.to_u8() | FIXED, Ordering::SeqCst);
}

/// Sets the start method used when none is named, unless it has already been set or used
/// (Python's `multiprocessing.set_start_method(method)`, whose `force` is `False`).
///
/// As in Python, the default counts as set once [`set_start_method`] or this function set
/// it, and once something read it: [`get_start_method`], or a [`Process`](crate::Process),
/// pool or manager started with the default. A child started by this crate has its
/// parent's method set, so there it always fails, as Python's does.
///
/// # Errors
/// [`Error::StartMethodSet`] naming the method in force, if the default was set or used
/// already (Python's `RuntimeError: context has already been set`); the default is then
/// left as it was.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::{self as mp, StartMethod};
///
/// # fn main() {
/// # mp::init();
/// mp::try_set_start_method(StartMethod::ForkServer).unwrap();
/// // A second choice is refused, and the first stays.
/// assert!(matches!(
///     mp::try_set_start_method(StartMethod::Spawn),
///     Err(mp::Error::StartMethodSet { method: "forkserver" })
/// ));
/// assert_eq!(mp::get_start_method(), StartMethod::ForkServer);
/// # }
/// ```
pub fn try_set_start_method(method: StartMethod) -> Result<()> {
    let unset = DEFAULT_METHOD.load(Ordering::SeqCst);
    let set = method.to_u8() | FIXED;
    // A set or a read in between makes the exchange fail: refused as if it came first.
    if unset & FIXED == 0
        && DEFAULT_METHOD
            .compare_exchange(unset, set, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        return Ok(());
    }
    Err(Error::StartMethodSet {
        method: get_start_method().name(),
    })
}

/// The start method used when none is named (Python's `multiprocessing.get_start_method`):
/// in the program, [`StartMethod::Spawn`] unless changed by [`set_start_method`]; in a
/// child, the method that started it, unless the child changed it.
///
/// As Python's, reading it fixes it: [`try_set_start_method`] fails from then on
/// ([`set_start_method`] still sets it).
pub fn get_start_method() -> StartMethod {
    let v = DEFAULT_METHOD.fetch_or(FIXED, Ordering::SeqCst);
    StartMethod::from_u8(v & !FIXED).unwrap_or_default()
}

/// Every start method this platform offers, the default first (Python's
/// `multiprocessing.get_all_start_methods`).
///
/// As in Python, "the default" is the platform's, [`StartMethod::default()`], which
/// [`get_start_method`] returns until [`set_start_method`] changes it; the list does not
/// follow [`set_start_method`]. [`StartMethod::Fork`] is listed although it is refused in a
/// process with more than one thread.
///
/// # Examples
///
/// ```
/// use tokio_multiprocessing::{StartMethod, get_all_start_methods};
///
/// let methods = get_all_start_methods();
/// assert_eq!(methods[0], StartMethod::default());
/// assert!(methods.contains(&StartMethod::ForkServer));
/// ```
pub fn get_all_start_methods() -> Vec<StartMethod> {
    let default = StartMethod::default();
    let mut all = vec![default];
    all.extend(
        [
            StartMethod::Fork,
            StartMethod::Spawn,
            StartMethod::ForkServer,
        ]
        .into_iter()
        .filter(|&m| m != default),
    );
    all
}
