//! [`PutError`]: a `put` that failed, with the item handed back (tokio's `SendError<T>`).

use std::fmt;

use crate::error::Error;

/// A `put` that failed, with the item handed back.
pub struct PutError<T> {
    error: Error,
    item: T,
}

impl<T> PutError<T> {
    pub(crate) fn new(error: Error, item: T) -> PutError<T> {
        PutError { error, item }
    }

    /// Why the put failed: [`Error::Full`], [`Error::HandleClosed`], [`Error::ShutDown`],
    /// [`Error::Encode`],
    /// [`Error::FrameTooLarge`] or an I/O error.
    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The item that was not put.
    pub fn into_inner(self) -> T {
        self.item
    }

    /// The error and the item.
    pub fn into_parts(self) -> (Error, T) {
        (self.error, self.item)
    }
}

impl<T> fmt::Debug for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PutError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<T> fmt::Display for PutError<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot put the item: {}", self.error)
    }
}

impl<T> std::error::Error for PutError<T> {}

impl<T> From<PutError<T>> for Error {
    fn from(e: PutError<T>) -> Error {
        e.error
    }
}
