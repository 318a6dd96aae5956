//! The cluster's key, and the environment that carries it and the head's address.

use crate::error::{Error, Result};

/// The environment variable that carries the cluster's key, in hex, to an agent (and to
/// [`Cluster::from_env`](super::Cluster::from_env)).
pub const AUTHKEY_ENV: &str = "TOKIO_MULTIPROCESSING_AUTHKEY";

/// The environment variable that [`Cluster::from_env`](super::Cluster::from_env) reads the
/// address to listen on from (`0.0.0.0:7000`, say).
pub const ADDRESS_ENV: &str = "TOKIO_MULTIPROCESSING_CLUSTER";

/// The environment variable that [`Cluster::from_env`](super::Cluster::from_env) reads the
/// address agents dial from, when it is not the one listened on (a Kubernetes Service's
/// name, say; see [`ClusterBuilder::advertise`](super::ClusterBuilder::advertise)).
pub const ADVERTISE_ENV: &str = "TOKIO_MULTIPROCESSING_ADVERTISE";

/// A fresh random key of 32 bytes.
pub(super) fn random_key() -> Result<Vec<u8>> {
    let mut key = vec![0u8; 32];
    crate::sys::fill_random(&mut key)?;
    Ok(key)
}

/// The key in hex.
pub(super) fn to_hex(key: &[u8]) -> String {
    crate::error::hex(key)
}

/// A key from its hex form (surrounding whitespace ignored).
pub(super) fn from_hex(text: &str) -> Result<Vec<u8>> {
    let text = text.trim();
    if text.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no cluster key: set {} to it in hex, or write it on the agent's stdin",
            super::AUTHKEY_ENV
        )));
    }
    let bad = || {
        Error::InvalidArgument(
            "the cluster key is not hex: it must be an even number of digits 0-9, a-f".into(),
        )
    };
    if !text.len().is_multiple_of(2) {
        return Err(bad());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .ok_or_else(bad)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let key = random_key().unwrap();
        assert_eq!(from_hex(&to_hex(&key)).unwrap(), key);
        assert!(from_hex("abc").is_err());
        // No key at all is told apart from a key that is not hex.
        let none = from_hex(" \n").unwrap_err().to_string();
        assert!(
            none.contains(AUTHKEY_ENV) && none.contains("stdin"),
            "{none}"
        );
        let not_hex = from_hex("zz").unwrap_err().to_string();
        assert!(not_hex.contains("not hex"), "{not_hex}");
        assert!(from_hex("zz").is_err());
        assert!(from_hex("").is_err());
    }
}
