//! The only home of system calls and `unsafe`.
//!
//! Contract: every descriptor this module creates is close-on-exec (and non-blocking where it
//! is a socket that tokio will drive), every syscall error becomes an [`std::io::Error`], and
//! every `unsafe` block names the invariant it relies on. Code above this module never calls
//! `libc` or `nix` directly. Linux only for now: pidfd, eventfd, memfd and `SCM_RIGHTS` are
//! the mechanisms the rest of the crate is built on.

mod bytes;
mod clock;
mod constructor;
mod eventfd;
mod fd;
mod ident;
mod load;
mod overflow;
mod owner;
mod pid;
mod proc;
mod random;
mod resident;
mod ring;
mod shm;
mod socket_opts;
mod spill;

pub(crate) use bytes::{
    Number, bytes_of_number, for_each_number, is_number, number_bytes, read_numbers,
};
pub(crate) use clock::{machine_monotonic_nanos, monotonic_nanos};
pub(crate) use constructor::keep_constructor;
pub(crate) use eventfd::{eventfd, eventfd_add, eventfd_take, is_eventfd};
pub(crate) use fd::socketpair_seqpacket;
pub(crate) use fd::{
    FileId, MAX_FDS_PER_MESSAGE, close_all_except, descriptor_free, descriptor_limit_note,
    descriptors_left, dup_fd, fd_target, file_id, file_size, has_input, is_unix_socket, open_fds,
    peek, peer_hung_up, raise_descriptor_limit, recv_appending, recv_with_fds, register_owned,
    register_shared, send_headed_with_fds, send_with_fds, set_nonblocking, socketpair_stream,
    too_many_in_flight, wait_writable,
};
pub(crate) use ident::{
    FnZst, SameBinary, executable_path, fingerprint, offset_from_anchor, open_executable,
    resolve_entry,
};
pub(crate) use load::core_spare;
pub(crate) use overflow::{AltStack, report_stack_overflows};
pub(crate) use owner::{owner_gone, owner_pid, owner_pidfd};
pub(crate) use pid::{cached_owner, cached_pid};
#[cfg(feature = "test-hooks")]
pub(crate) use proc::fork_and_reap;
pub(crate) use proc::{
    SavedSignal, adopt_inherited_socket, advise_huge_pages, at_exit, check_enterable_dir,
    children_reaped_by_kernel, clear_env_var, cpus_allowed, current_pid, default_signal_handlers,
    descendants_of, exit_now, flush_std_streams, fork_process, fork_sibling, ignore_hangup,
    ignore_sigint, ignore_sigpipe, ignore_sigterm, ignore_terminal_signals, is_no_child,
    is_own_child, keep_freed_memory, kill_and_reap, open_closed_standard_fds, parent_pid,
    pidfd_open, pidfd_send_signal, pipe, poll_readable, readable_now, redirect_std, restore_sigint,
    set_env_var, set_parent_death_signal, signal_name, sigterm_fd, soften_parent_death_signal,
    spawn_exe, spawned_fd, start_own_session, stdin_from_dev_null, try_wait_pidfd,
    wait_pid_blocking, wait_pidfd_blocking,
};
pub(crate) use random::fill_random;
pub(crate) use resident::ResidentMemory;
pub(crate) use ring::{Head, Message, Popped, Pushed, SLOT_DATA, ShmRing};
pub use shm::Pod;
pub(crate) use shm::{
    SHM_NAME_MAX, SharedRegion, anonymous_file, memfd_name, segment_name, shm_attach, shm_create,
    shm_create_unnamed, shm_exists, shm_name_segment, shm_remove, shm_remove_own,
};
pub(crate) use socket_opts::{
    fail_when_silent, grow_send_buffer, set_listen_backlog, shutdown_socket,
};
pub(crate) use spill::{KeptViews, RECYCLE_MAX, SpillWriter, spill_file, write_at};

use std::io;

/// Signal numbers the crate sends.
pub(crate) use libc::{SIGINT, SIGKILL, SIGTERM};

/// Turns a `-1`-means-errno return value into an [`io::Result`].
fn cvt<T: PartialEq + From<i8>>(ret: T) -> io::Result<T> {
    if ret == T::from(-1) {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}
