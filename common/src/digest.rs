//! Order-independent digests of claim sets. Each record hashes to 256 bits and the set's
//! digest is their sum modulo 2^256: independent of order (nodes record claims in
//! different orders), and unlike XOR a duplicated record changes it, so double counting
//! is visible in clearing.

use sha2::{Digest, Sha256};

/// A running multiset digest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SetDigest([u8; 32]);

impl SetDigest {
    /// Adds one record, given as its canonical byte encoding.
    pub fn add(&mut self, record: &[u8]) {
        let h: [u8; 32] = Sha256::digest(record).into();
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let s = u16::from(self.0[i]) + u16::from(h[i]) + carry;
            self.0[i] = (s & 0xff) as u8;
            carry = s >> 8;
        }
    }

    /// Combines two digests (the union of their multisets).
    pub fn merge(&mut self, other: &SetDigest) {
        let mut carry = 0u16;
        for i in (0..32).rev() {
            let s = u16::from(self.0[i]) + u16::from(other.0[i]) + carry;
            self.0[i] = (s & 0xff) as u8;
            carry = s >> 8;
        }
    }

    /// Lower-case hex.
    #[must_use]
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses lower- or upper-case hex of 64 characters.
    #[must_use]
    pub fn from_hex(s: &str) -> Option<Self> {
        let v = hex::decode(s).ok()?;
        Some(Self(v.try_into().ok()?))
    }
}

/// SHA-256 hex of a byte string (policy documents, request payloads).
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_independent_and_duplicate_sensitive() {
        let mut a = SetDigest::default();
        a.add(b"c1");
        a.add(b"c2");
        let mut b = SetDigest::default();
        b.add(b"c2");
        b.add(b"c1");
        assert_eq!(a, b);
        b.add(b"c2");
        assert_ne!(a, b);
        let mut m = SetDigest::default();
        let mut one = SetDigest::default();
        one.add(b"c1");
        let mut two = SetDigest::default();
        two.add(b"c2");
        m.merge(&one);
        m.merge(&two);
        assert_eq!(m, a);
        assert_eq!(SetDigest::from_hex(&a.to_hex()), Some(a));
    }
}
