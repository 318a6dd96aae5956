//! The frame header: a `u32` big-endian body length, then a `u8` count of the descriptors
//! sent beside the frame.

use crate::error::{Error, Result};
use crate::sys;
use crate::wire::max_frame_size;

/// Bytes of the frame header.
pub(crate) const HEADER_LEN: usize = 5;

/// Writes a frame header (body length, descriptor count) into the first [`HEADER_LEN`] bytes
/// of `head`; fails for a body over the maximum frame size or too many descriptors.
pub(crate) fn write_header(head: &mut [u8], body: usize, nfds: usize) -> Result<()> {
    let max = max_frame_size();
    if body > max {
        return Err(Error::FrameTooLarge {
            size: body as u64,
            max,
        });
    }
    let count = u8::try_from(nfds)
        .ok()
        .filter(|&n| usize::from(n) <= sys::MAX_FDS_PER_MESSAGE)
        .ok_or_else(|| {
            Error::InvalidArgument(format!(
                "a message may carry at most {} descriptors, this one holds {nfds}",
                sys::MAX_FDS_PER_MESSAGE
            ))
        })?;
    head[..4].copy_from_slice(&(body as u32).to_be_bytes());
    head[4] = count;
    Ok(())
}

/// The body length a header announces (what it claims: not checked against anything).
/// `head` holds at least the first 4 bytes of a header.
pub(crate) fn body_len(head: &[u8]) -> usize {
    u32::from_be_bytes([head[0], head[1], head[2], head[3]]) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_what_was_written() {
        let mut head = [0u8; HEADER_LEN];
        write_header(&mut head, 70_000, 3).unwrap();
        assert_eq!(body_len(&head), 70_000);
        assert_eq!(head[4], 3);
    }

    #[test]
    fn too_many_descriptors_are_refused() {
        let mut head = [0u8; HEADER_LEN];
        let e = write_header(&mut head, 1, sys::MAX_FDS_PER_MESSAGE + 1).unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
}
