//! A small, fast, non-cryptographic hasher for maps whose keys the server assigns itself
//! (session keys, connection ids, query ids, server-made call ids). Keys that clients choose
//! (user ids) stay on the standard keyed SipHash, so nobody can flood a map with collisions.
//!
//! Public for the server's own maps of such keys (its connections, looked up for every frame).
//!
//! ```
//! use callplus_session::switchboard::FastMap;
//!
//! let mut conns: FastMap<u64, &str> = FastMap::default();
//! conns.insert(7, "alice's phone");
//! assert_eq!(conns.get(&7), Some(&"alice's phone"));
//! ```

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Multiply-xor word hashing (like rustc's FxHasher) with a full-avalanche finish.
#[derive(Debug, Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0 ^ word).wrapping_mul(K);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut word = [0u8; 8];
            for (dst, src) in word.iter_mut().zip(rest) {
                *dst = *src;
            }
            self.add(u64::from_le_bytes(word) ^ ((rest.len() as u64) << 59));
        }
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        // The multiply only carries differences upwards; a full avalanche (murmur3's fmix64)
        // spreads them over the bits the table uses (low bits for the slot, high for the tag).
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        h ^ (h >> 33)
    }
}

/// A `HashMap` on [`FastHasher`].
pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

/// A `HashSet` on [`FastHasher`].
pub type FastSet<K> = HashSet<K, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use std::hash::{BuildHasher, BuildHasherDefault};

    use super::*;

    #[test]
    fn spreads_sequential_keys_and_strings() {
        let b = BuildHasherDefault::<FastHasher>::default();
        let mut low: Vec<u64> = (0..64u64).map(|k| b.hash_one(k) & 63).collect();
        low.sort_unstable();
        low.dedup();
        assert!(low.len() > 32, "low bits vary: {}", low.len());
        assert_ne!(b.hash_one("abc-1"), b.hash_one("abc-2"));
        assert_ne!(b.hash_one("abcdefgh"), b.hash_one("abcdefgh\0"));
    }
}
