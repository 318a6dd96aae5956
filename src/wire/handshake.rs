//! The handshake: magic, protocol version and binary fingerprint.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, hex};
use crate::sys::{self, SameBinary};

/// "TKMP": the first word of every conversation between our processes.
pub(crate) const MAGIC: u32 = 0x544b_4d50;
/// Bumped whenever a message changes shape.
pub(crate) const PROTOCOL_VERSION: u16 = 1;

/// The greeting a parent sends before anything else.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    magic: u32,
    version: u16,
    #[serde(with = "serde_bytes")]
    fingerprint: Vec<u8>,
}

impl Hello {
    /// Our greeting.
    pub(crate) fn ours() -> Hello {
        Hello::with_fingerprint(sys::fingerprint().to_vec())
    }

    /// A greeting that claims another binary (for tests of the refusal).
    pub(crate) fn with_fingerprint(fingerprint: Vec<u8>) -> Hello {
        Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            fingerprint,
        }
    }

    /// Checks a peer's greeting: right magic, same protocol version, same binary.
    pub(crate) fn check(&self) -> Result<SameBinary> {
        if self.magic != MAGIC {
            return Err(Error::Protocol(format!(
                "wrong magic {:#010x} (expected {MAGIC:#010x}): the peer is not a tokio-multiprocessing process",
                self.magic
            )));
        }
        if self.version != PROTOCOL_VERSION {
            return Err(Error::Protocol(format!(
                "protocol version {} is not ours ({PROTOCOL_VERSION})",
                self.version
            )));
        }
        SameBinary::check(&self.fingerprint).ok_or_else(|| Error::BinaryMismatch {
            ours: hex(sys::fingerprint()),
            theirs: hex(&self.fingerprint),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_own_greeting_passes() {
        Hello::ours().check().unwrap();
    }

    #[test]
    fn a_forged_fingerprint_is_refused() {
        let err = Hello::with_fingerprint(vec![1, 2, 3]).check().unwrap_err();
        assert!(matches!(err, Error::BinaryMismatch { .. }), "{err}");
    }
}
