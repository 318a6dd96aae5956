//! A child's environment variables and working directory, as a
//! [`ProcessBuilder`](crate::ProcessBuilder) or a pool's builder sets them.
//!
//! The calls follow `std::process::Command`'s semantics: they apply in call order, the last
//! call for a name wins, and after `env_clear` the child has only the variables set after
//! it. Each start method carries them its own way, to the same end:
//!
//! - `spawn`: the child is executed with its final environment (the program's, edited), so
//!   the dynamic loader and everything before `main` see it; the crate's own variables are
//!   added for the bootstrap ([`ENV_BOOT`](super::ENV_BOOT)), which removes them, and for
//!   glibc's allocator (`GLIBC_TUNABLES`), which reads them as the process starts.
//! - `fork`: the child applies the edits to the environment it copied, before anything else.
//! - `forkserver`: the child applies them to the environment it copied from the server,
//!   which is the program's as it was when the server started; it enters the program's
//!   current directory unless told another, as a `spawn` child starts in it.
//!
//! Every child then applies them (again, for a `spawn` child) in its bootstrap, so that a
//! variable of the crate's that `env_clear` or `env_remove` took away is gone by the time
//! the target runs, whatever the method. The working directory is made absolute and checked
//! in the parent before any child exists, and entered by the child in its bootstrap: a
//! directory that vanishes in between fails the start with the child's error.
//!
//! A pool on a cluster sends its edits, as they were made, with each start it asks of a
//! host's agent; the agent checks them again (they came from another process) and is the
//! parent of the worker it starts: a relative directory is taken from the agent's.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{ENV_BOOT, tracker};
use crate::error::{Error, Result};
use crate::sys;

/// Environment variables and a working directory for a child, as built by the builder's
/// calls (see the module docs). The default leaves the child its parent's.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Environment {
    /// Whether the child starts from no variables at all (`env_clear`) rather than from the
    /// environment it inherits.
    clear: bool,
    /// Variables set (`Some`) or removed (`None`) after the inherited (or cleared) ones.
    vars: BTreeMap<OsString, Option<OsString>>,
    /// The working directory: absolute once [`checked`](Self::check_cwd).
    cwd: Option<OsString>,
}

impl Environment {
    /// Whether the child keeps its parent's variables and directory untouched.
    pub(crate) fn is_untouched(&self) -> bool {
        !self.clear && self.vars.is_empty() && self.cwd.is_none()
    }

    /// Sets `key` to `value` in the child (`Command::env`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `key` if it is empty, holds `=` or a NUL byte, or
    /// is one of the crate's own variables, or if `value` holds a NUL byte.
    pub(crate) fn set(&mut self, key: &OsStr, value: &OsStr) -> Result<()> {
        check_set(key, value)?;
        self.vars.insert(key.to_owned(), Some(value.to_owned()));
        Ok(())
    }

    /// Removes `key` from the child's environment (`Command::env_remove`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming `key` if it is empty or holds `=` or a NUL byte.
    pub(crate) fn remove(&mut self, key: &OsStr) -> Result<()> {
        check_name(key)?;
        match self.clear {
            true => self.vars.remove(key),
            false => self.vars.insert(key.to_owned(), None),
        };
        Ok(())
    }

    /// Leaves the child only the variables set from now on (`Command::env_clear`).
    pub(crate) fn clear(&mut self) {
        self.clear = true;
        self.vars.clear();
    }

    /// Sets the child's working directory (`Command::current_dir`).
    pub(crate) fn set_cwd(&mut self, dir: &Path) {
        self.cwd = Some(dir.as_os_str().to_owned());
    }

    /// Sets the working directory to this process's current one, unless one was set. A
    /// directory this process cannot name (it was removed) leaves it unset.
    pub(crate) fn default_cwd_to_current(&mut self) {
        if self.cwd.is_none() {
            match std::env::current_dir() {
                Ok(dir) => self.cwd = Some(dir.into_os_string()),
                Err(e) => tracing::debug!("a child keeps the fork server's directory: {e}"),
            }
        }
    }

    /// Checks the edits, as [`set`](Self::set) and [`remove`](Self::remove) check each (an
    /// environment decoded from another process, a cluster's head, was not built by them),
    /// then the working directory, as [`check_cwd`](Self::check_cwd) does.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] naming the first variable refused, else as
    /// [`check_cwd`](Self::check_cwd).
    pub(crate) fn check(&mut self, name: &str) -> Result<()> {
        for (key, value) in &self.vars {
            match value {
                Some(value) => check_set(key, value)?,
                None => check_name(key)?,
            }
        }
        self.check_cwd(name)
    }

    /// Makes the working directory absolute (against this process's, now) and checks that
    /// it is a directory the child may enter, for `name`, before any child is started.
    ///
    /// # Errors
    /// An [`Error::Io`] naming the directory and `name`: of kind `NotFound` if it does not
    /// exist, `NotADirectory` if it is something else, `PermissionDenied` if it may not be
    /// entered (Python's `FileNotFoundError`, `NotADirectoryError`, `PermissionError`).
    fn check_cwd(&mut self, name: &str) -> Result<()> {
        let Some(dir) = &self.cwd else {
            return Ok(());
        };
        let fail = |e: std::io::Error, resolved: Option<&Path>| {
            // A relative directory is named as given and as resolved.
            let resolved = resolved.map(|r| format!(" ({})", r.display()));
            Error::from(std::io::Error::new(
                e.kind(),
                format!(
                    "cannot start {name} in directory {:?}{}: {e}",
                    Path::new(dir).display(),
                    resolved.unwrap_or_default()
                ),
            ))
        };
        if dir.is_empty() {
            // As chdir("") fails, rather than as `absolute` does (InvalidInput).
            return Err(fail(std::io::ErrorKind::NotFound.into(), None));
        }
        let absolute = std::path::absolute(Path::new(dir)).map_err(|e| fail(e, None))?;
        if let Err(e) = sys::check_enterable_dir(&absolute) {
            let resolved = (absolute.as_os_str() != dir).then_some(&*absolute);
            return Err(fail(e, resolved));
        }
        self.cwd = Some(absolute.into_os_string());
        Ok(())
    }

    /// The variables a child executed with this environment gets, from this process's:
    /// its own (or none, once cleared) with the edits applied.
    pub(crate) fn exec_vars(&self) -> Vec<(OsString, OsString)> {
        let inherited = match self.clear {
            true => Vec::new(),
            false => std::env::vars_os()
                .filter(|(k, _)| !self.vars.contains_key(k))
                .collect(),
        };
        let set = self
            .vars
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)));
        inherited.into_iter().chain(set).collect()
    }

    /// Applies the edits to this process, a child before its target runs: the variables
    /// first, then the working directory.
    ///
    /// # Errors
    /// A message naming the directory, if it cannot be entered.
    pub(crate) fn apply_in_child(&self) -> std::result::Result<(), String> {
        if self.clear {
            for (key, _) in std::env::vars_os() {
                if !self.vars.contains_key(&key) {
                    sys::clear_env_var(&key);
                }
            }
        }
        for (key, value) in &self.vars {
            match value {
                Some(value) => sys::set_env_var(key, value),
                None => sys::clear_env_var(key),
            }
        }
        match &self.cwd {
            Some(dir) => std::env::set_current_dir(dir).map_err(|e| {
                format!(
                    "cannot enter the working directory {:?}: {e}",
                    PathBuf::from(dir).display()
                )
            }),
            None => Ok(()),
        }
    }
}

/// Checks a variable set for a child: its name as [`check_name`] does, not one of the
/// crate's own, and a value without NUL.
fn check_set(key: &OsStr, value: &OsStr) -> Result<()> {
    check_name(key)?;
    if key == ENV_BOOT || key == tracker::ENV_TRACKER {
        return Err(Error::InvalidArgument(format!(
            "environment variable {key:?} is tokio-multiprocessing's own and cannot be set \
             for a child"
        )));
    }
    if value.as_bytes().contains(&0) {
        return Err(Error::InvalidArgument(format!(
            "the value of environment variable {key:?} holds a NUL byte"
        )));
    }
    Ok(())
}

/// Checks a variable's name as `setenv` would take it.
fn check_name(key: &OsStr) -> Result<()> {
    let bytes = key.as_bytes();
    let why = if bytes.is_empty() {
        "is empty"
    } else if bytes.contains(&b'=') {
        "holds '='"
    } else if bytes.contains(&0) {
        "holds a NUL byte"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!(
        "environment variable name {key:?} {why}"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(env: &Environment) -> Vec<(String, Option<String>)> {
        env.vars
            .iter()
            .map(|(k, v)| {
                let s = |s: &OsString| s.to_string_lossy().into_owned();
                (s(k), v.as_ref().map(s))
            })
            .collect()
    }

    #[test]
    fn calls_apply_in_order_as_commands_do() {
        let mut env = Environment::default();
        env.set("A".as_ref(), "1".as_ref()).unwrap();
        env.remove("B".as_ref()).unwrap();
        env.set("A".as_ref(), "2".as_ref()).unwrap();
        assert_eq!(
            names(&env),
            [("A".into(), Some("2".into())), ("B".into(), None)]
        );
        env.clear();
        env.set("C".as_ref(), "3".as_ref()).unwrap();
        env.remove("D".as_ref()).unwrap();
        assert_eq!(names(&env), [("C".into(), Some("3".into()))]);
        assert_eq!(
            env.exec_vars(),
            [(OsString::from("C"), OsString::from("3"))]
        );
    }

    #[test]
    fn bad_names_and_values_are_refused_by_name() {
        let mut env = Environment::default();
        for bad in ["", "A=B", "A\0B"] {
            let e = env.set(bad.as_ref(), "v".as_ref()).unwrap_err();
            assert!(matches!(&e, Error::InvalidArgument(m) if m.contains(&format!("{bad:?}"))));
            assert!(env.remove(bad.as_ref()).is_err());
        }
        let e = env.set("K".as_ref(), "a\0b".as_ref()).unwrap_err();
        assert!(
            matches!(&e, Error::InvalidArgument(m) if m.contains("\"K\"")),
            "{e}"
        );
        assert!(env.set(ENV_BOOT.as_ref(), "3,1".as_ref()).is_err());
        assert!(env.is_untouched());
    }

    #[test]
    fn edits_from_another_process_are_checked_as_the_builder_checks_them() {
        let bad: [(&[u8], Option<&[u8]>); 6] = [
            (b"A=B", Some(b"v")),
            (b"A\0B", Some(b"v")),
            (b"", None),
            (b"K", Some(b"a\0b")),
            (ENV_BOOT.as_bytes(), Some(b"3,1")),
            (b"A=B", None),
        ];
        for (key, value) in bad {
            let mut env = Environment::default();
            env.vars.insert(
                OsStr::from_bytes(key).to_owned(),
                value.map(|v| OsStr::from_bytes(v).to_owned()),
            );
            let e = env.check("a worker").unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{key:?}: {e}");
        }
        // Names and values that are not UTF-8 are the system's to take.
        let mut env = Environment::default();
        env.set(OsStr::from_bytes(b"K\xff"), OsStr::from_bytes(b"\xfe"))
            .unwrap();
        env.check("a worker").unwrap();
    }
}
