//! A process's identity as one word of shared memory, which a recycled pid does not share.
//!
//! A pid names a process only while it runs: once the process is reaped, the kernel gives
//! the number to a later process (soon, where `pid_max` is 32768 and processes start
//! quickly). A lock word that held a dead holder's bare pid would then look held by a live
//! stranger, and its waiters would wait for the stranger's end. An *owner word* holds the pid
//! in its low 32 bits and the low 32 bits of the process's start time (clock ticks since
//! boot, field 22 of `/proc/<pid>/stat`) in its high ones. A process that takes the pid
//! later starts later, so its start time differs, and the word no longer names it. Only a
//! process that took the pid within the clock tick (10 ms) in which the owner started would
//! share the word; the kernel hands pids out in turn, so that takes a pid chosen on purpose
//! (`ns_last_pid`, `clone3`'s `set_tid`).
//!
//! A word whose start time is 0 (a bare pid, where a word has no room for more, or a
//! process whose start time could not be read) names whichever process has the pid.

use std::io;
use std::os::fd::OwnedFd;

use super::proc::{pidfd_of, readable_now};

/// The pid an owner word names.
pub(crate) fn owner_pid(word: u64) -> u32 {
    word as u32
}

/// The owner word of process `pid`, from its start time: 0 in the high bits if it cannot
/// be read.
pub(super) fn owner_word(pid: u32) -> u64 {
    let start = start_time(pid).ok().flatten().unwrap_or(0);
    (u64::from(start as u32) << 32) | u64::from(pid)
}

/// The start time of process `pid` in clock ticks since boot; `None` if there is no such
/// process.
fn start_time(pid: u32) -> io::Result<Option<u64>> {
    let stat = match std::fs::read(format!("/proc/{pid}/stat")) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Ok(None),
        Err(e) => return Err(e),
    };
    // The command name (field 2) is in parentheses and may hold spaces and parentheses
    // itself: count fields after the last `)`, where field 3 begins.
    let after_name = stat
        .iter()
        .rposition(|&b| b == b')')
        .map_or(&stat[..0], |i| &stat[i + 1..]);
    let field = after_name
        .split(|b| b.is_ascii_whitespace())
        .filter(|f| !f.is_empty())
        .nth(22 - 3);
    field
        .and_then(|f| std::str::from_utf8(f).ok())
        .and_then(|f| f.parse().ok())
        .map(Some)
        .ok_or_else(|| io::Error::other(format!("no start time in /proc/{pid}/stat")))
}

/// A pidfd of the process that `word` names; `None` if it has ended and been reaped (its
/// pid free, or another process's now).
pub(crate) fn owner_pidfd(word: u64) -> io::Result<Option<OwnedFd>> {
    let pid = owner_pid(word);
    let Some(fd) = pidfd_of(pid)? else {
        return Ok(None);
    };
    let start = (word >> 32) as u32;
    if start == 0 {
        return Ok(Some(fd));
    }
    // The pidfd pins the process it was opened on, and the start time is read after it:
    // if that time is the word's, the process the pidfd pins is the word's (a later process
    // with the pid would have started later).
    match start_time(pid)? {
        Some(t) if t as u32 == start => Ok(Some(fd)),
        _ => Ok(None),
    }
}

/// Whether the process that `word` names has ended (a zombie not yet reaped included) or
/// never existed, checked without waiting: a pidfd, and a poll of it with no timeout.
pub(crate) fn owner_gone(word: u64) -> io::Result<bool> {
    match owner_pidfd(word)? {
        Some(fd) => readable_now(std::os::fd::AsFd::as_fd(&fd)),
        None => Ok(true),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_word_names_its_own_process_and_not_a_later_one_with_its_pid() {
        let me = std::process::id();
        let word = owner_word(me);
        assert_ne!(word >> 32, 0, "this process's start time reads as 0");
        assert!(!owner_gone(word).unwrap());
        assert!(owner_pidfd(word).unwrap().is_some());
        // The same pid with another start time: a process that had the pid before.
        let earlier = word ^ (1 << 32);
        assert!(owner_gone(earlier).unwrap());
        assert!(owner_pidfd(earlier).unwrap().is_none());
        // A bare pid names whoever has it.
        assert!(!owner_gone(u64::from(me)).unwrap());
    }

    #[test]
    fn a_command_name_with_parentheses_and_spaces_is_skipped() {
        let dir = std::env::temp_dir().join(format!("owner-word-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let odd = dir.join("a) 1 2 (b");
        // A link: its name is the command name, and it is never open for writing (a copy
        // written while another test forks could not be run: ETXTBSY).
        std::os::unix::fs::symlink("/bin/sleep", &odd).unwrap();
        let mut child = std::process::Command::new(&odd).arg("5").spawn().unwrap();
        let word = owner_word(child.id());
        child.kill().unwrap();
        child.wait().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let ours = owner_word(std::process::id()) >> 32;
        // Started after this process, within the few seconds of a test run.
        let started = word >> 32;
        assert!(
            started >= ours && started - ours < 100 * 60,
            "{started} vs {ours}"
        );
        assert!(owner_gone(word).unwrap());
    }
}
