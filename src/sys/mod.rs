//! The only home of system calls and `unsafe`.
//!
//! Contract: every descriptor this module creates is close-on-exec (and non-blocking where it
//! is a socket that tokio will drive), every syscall error becomes an [`std::io::Error`], and
//! every `unsafe` block names the invariant it relies on. Code above this module never calls
//! `libc` or `nix` directly. Linux only for now: pidfd, eventfd, memfd and `SCM_RIGHTS` are
//! the mechanisms the rest of the crate is built on.

mod bytes;
mod eventfd;
mod fd;
mod ident;
mod ipc;
mod pid;
mod proc;
mod ring;
mod shm;

pub(crate) use bytes::{Number, number_bytes};
pub(crate) use eventfd::{eventfd, eventfd_add, eventfd_take};
pub(crate) use fd::socketpair_seqpacket;
pub(crate) use fd::{
    MAX_FDS_PER_MESSAGE, close_all_except, dup_fd, has_input, open_fds, peek, read_fd,
    recv_with_fds, register_owned, register_shared, send_with_fds, set_nonblocking,
    socketpair_stream, write_all_fd,
};
pub(crate) use ident::{FnZst, SameBinary, fingerprint, offset_from_anchor, resolve_entry};
pub(crate) use ipc::{
    RECYCLE_MAX, SpillView, file_size, fill_random, grow_send_buffer, shutdown_socket, spill_memfd,
};
pub(crate) use pid::cached_pid;
pub(crate) use proc::{
    adopt_inherited_socket, advise_huge_pages, at_exit, clear_env_var, cpus_allowed, current_pid,
    exit_now, flush_std_streams, fork_and_reap, fork_in_server, fork_process, keep_freed_memory,
    kill_and_reap, kill_pid, parent_pid, pidfd_of, pidfd_open, pidfd_send_signal, pipe_cloexec,
    poll_readable, process_gone, readable_now, set_parent_death_signal, signal_name, spawn_exe,
    stdin_from_dev_null, try_wait_pidfd, wait_pid_blocking, wait_pidfd_blocking,
};
pub(crate) use ring::{Popped, Pushed, SLOT_DATA, ShmRing, USER as RING_USER_WORDS};
pub use shm::Pod;
pub(crate) use shm::{SharedRegion, shm_attach, shm_create, shm_remove};

use std::io;

/// Signal numbers the crate sends.
pub(crate) use libc::{SIGKILL, SIGTERM};

/// Turns a `-1`-means-errno return value into an [`io::Result`].
fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
