//! [`IdMap`]: the scheduler's maps by task or worker id, hashed by one multiplication.
//!
//! The standard map hashes its keys with SipHash, which resists keys chosen by an attacker
//! to collide. The pool hands out these ids itself (a counter), and an id that comes back
//! from a worker is only looked up, never inserted; so a plain multiplicative hash does, at a
//! fraction of the cost: with 10,000 tasks in flight, SipHash was 4.5% of the pool process's
//! time.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// A map keyed by ids the pool hands out itself.
pub(super) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`]: Fibonacci hashing of the id (the id times 2⁶⁴ over the golden
/// ratio), which spreads consecutive ids over the whole table.
#[derive(Debug, Default)]
pub(super) struct IdHasher(u64);

const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    /// Bytes other than a `u64` key (not used by [`IdMap`], which hashes `u64`s only).
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(*b)).wrapping_mul(GOLDEN);
        }
    }

    fn write_u64(&mut self, id: u64) {
        self.0 = id.wrapping_mul(GOLDEN);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_ids_spread_over_the_table() {
        // The table's bucket is picked from the low bits and a tag from the high ones: both
        // must differ between neighbouring ids.
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        let low: std::collections::HashSet<u64> = (0..1024).map(|i| hash(i) & 1023).collect();
        assert_eq!(low.len(), 1024);
        let high: std::collections::HashSet<u64> = (0..128).map(|i| hash(i) >> 57).collect();
        assert!(high.len() > 64, "{}", high.len());
        let mut m: IdMap<u64> = IdMap::default();
        for i in 0..10_000 {
            m.insert(i, i * 2);
        }
        assert!((0..10_000).all(|i| m.get(&i) == Some(&(i * 2))));
    }
}
