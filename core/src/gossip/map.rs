//! A small ordered map: a sorted `Vec` of pairs.
//!
//! The peer table is bounded by `max_peers` (64), the replay floors of
//! evicted peers by twice that: a sorted `Vec` gives the
//! same order as a `BTreeMap` (so the state machine makes the same
//! choices from the same seed), lookups in O(log n), and far less code
//! per key and value type in the browser's .wasm than the B-tree (10–13 KB
//! raw each; see docs/design-decisions.md).

use alloc::vec::Vec;

#[derive(Debug, Clone)]
pub(crate) struct VecMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for VecMap<K, V> {
    fn default() -> Self {
        VecMap(Vec::new())
    }
}

impl<K: Ord, V> VecMap<K, V> {
    pub(crate) const fn new() -> Self {
        VecMap(Vec::new())
    }

    fn find(&self, key: &K) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(crate) fn get(&self, key: &K) -> Option<&V> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    pub(crate) fn get_mut(&mut self, key: &K) -> Option<&mut V> {
        self.find(key).ok().map(|i| &mut self.0[i].1)
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.find(key).is_ok()
    }

    /// Inserts or replaces; returns the former value.
    pub(crate) fn insert(&mut self, key: K, value: V) -> Option<V> {
        match self.find(&key) {
            Ok(i) => Some(core::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (key, value));
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &K) -> Option<V> {
        self.find(key).ok().map(|i| self.0.remove(i).1)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// In key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeMap;

    #[test]
    fn behaves_as_a_btree_map() {
        let mut m = VecMap::new();
        let mut b = BTreeMap::new();
        let mut x: u32 = 7;
        for _ in 0..2000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let k = (x >> 16) % 97;
            match x % 3 {
                0 => assert_eq!(m.remove(&k), b.remove(&k)),
                _ => assert_eq!(m.insert(k, x), b.insert(k, x)),
            }
            assert_eq!(m.get(&k), b.get(&k));
            assert_eq!(m.len(), b.len());
        }
        assert!(m.iter().eq(b.iter()));
        assert!(m.keys().eq(b.keys()));
        assert!(m.values().eq(b.values()));
        if let (Some(v), Some(w)) = (m.get_mut(&3), b.get_mut(&3)) {
            (*v, *w) = (0, 0);
        }
        assert!(m.iter().eq(b.iter()));
    }
}
