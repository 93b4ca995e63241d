//! The per-document op-log index: which envelopes a replica holds, its
//! version vector, and what a peer with another vector lacks.

use alloc::collections::{BTreeMap, BTreeSet};
use alloc::vec::Vec;

use crate::id::{PeerId, RoomId};
use crate::wire::{Envelope, VersionVector};

/// What inserting an envelope did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// New. `ready` holds the envelopes (this one and any held back behind a
    /// gap) that are now contiguous for their author, in seq order.
    New { ready: Vec<Envelope> },
    /// Already held (same envelope id): nothing changes.
    Duplicate,
    /// Another envelope already holds this (author, seq): the first is kept
    /// and the author is reported.
    Equivocation { author: PeerId, seq: u64 },
    /// The envelope belongs to another room.
    WrongRoom,
}

#[derive(Debug, Default, Clone)]
struct AuthorLog {
    /// Highest seq such that 1..=contiguous are all held.
    contiguous: u64,
    entries: BTreeMap<u64, Envelope>,
}

/// Envelopes of one document, indexed by (author, seq).
#[derive(Debug, Clone)]
pub struct DocLog {
    room: RoomId,
    authors: BTreeMap<PeerId, AuthorLog>,
    equivocators: BTreeSet<PeerId>,
    envelopes: usize,
    bytes: usize,
}

impl DocLog {
    pub fn new(room: RoomId) -> Self {
        DocLog {
            room,
            authors: BTreeMap::new(),
            equivocators: BTreeSet::new(),
            envelopes: 0,
            bytes: 0,
        }
    }

    pub fn room(&self) -> RoomId {
        self.room
    }

    /// Adds an envelope whose signature the caller has checked.
    pub fn insert(&mut self, env: Envelope) -> Inserted {
        if env.header().room != self.room {
            return Inserted::WrongRoom;
        }
        let (author, seq) = (env.author(), env.seq());
        let log = self.authors.entry(author).or_default();
        if let Some(held) = log.entries.get(&seq) {
            if held.id() == env.id() {
                return Inserted::Duplicate;
            }
            self.equivocators.insert(author);
            return Inserted::Equivocation { author, seq };
        }
        self.envelopes += 1;
        self.bytes += env.len();
        log.entries.insert(seq, env);
        let mut ready = Vec::new();
        while let Some(next) = log.entries.get(&(log.contiguous + 1)) {
            ready.push(next.clone());
            log.contiguous += 1;
        }
        Inserted::New { ready }
    }

    /// Author → highest contiguous seq.
    pub fn vector(&self) -> VersionVector {
        VersionVector(
            self.authors
                .iter()
                .filter(|(_, l)| l.contiguous > 0)
                .map(|(a, l)| (*a, l.contiguous))
                .collect(),
        )
    }

    pub fn contiguous(&self, author: &PeerId) -> u64 {
        self.authors.get(author).map_or(0, |l| l.contiguous)
    }

    pub fn get(&self, author: &PeerId, seq: u64) -> Option<&Envelope> {
        self.authors.get(author)?.entries.get(&seq)
    }

    /// Authors caught signing two envelopes for one position.
    pub fn equivocators(&self) -> &BTreeSet<PeerId> {
        &self.equivocators
    }

    pub fn len(&self) -> usize {
        self.envelopes
    }
    pub fn is_empty(&self) -> bool {
        self.envelopes == 0
    }
    /// Encoded bytes of all envelopes held.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Envelopes of every author in seq order, authors in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Envelope> {
        self.authors.values().flat_map(|l| l.entries.values())
    }

    /// The next batch for a peer whose position is `cursor` (what it holds,
    /// plus what was already sent to it): contiguous envelopes only, oldest
    /// first per author, at most `max_bytes` in all (but always at least one
    /// envelope when any is due) and at most `max_count`. Advances `cursor`.
    pub fn next_batch(
        &self,
        cursor: &mut VersionVector,
        max_bytes: usize,
        max_count: usize,
    ) -> Vec<Envelope> {
        let mut out = Vec::new();
        let mut bytes = 0;
        for (author, log) in &self.authors {
            let from = cursor.get(author);
            if from >= log.contiguous {
                continue;
            }
            for (seq, env) in log.entries.range(from + 1..=log.contiguous) {
                if out.len() >= max_count || (!out.is_empty() && bytes + env.len() > max_bytes) {
                    return out;
                }
                bytes += env.len();
                out.push(env.clone());
                cursor.set(*author, *seq);
            }
        }
        out
    }

    /// True when the log holds something `remote` lacks.
    pub fn is_ahead_of(&self, remote: &VersionVector) -> bool {
        self.authors
            .iter()
            .any(|(a, l)| l.contiguous > remote.get(a))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DocKey, DocKeys, Identity, Rng};
    use crate::id::DocId;
    use crate::wire::EnvelopeKind;
    use alloc::vec;

    fn sealed(keys: &mut DocKeys, id: &Identity, seq: u64, rng: &mut Rng) -> Envelope {
        keys.seal(id, EnvelopeKind::Change, seq, &[seq as u8; 100], rng)
            .unwrap()
    }

    #[test]
    fn gaps_hold_back_until_filled() {
        let mut rng = Rng::from_seed([0; 32]);
        let id = Identity::generate(&mut rng);
        let mut keys = DocKeys::new(DocId([1; 16]), DocKey::from_bytes([2; 32]));
        let mut log = DocLog::new(keys.room());
        let e: Vec<_> = (1..=3)
            .map(|s| sealed(&mut keys, &id, s, &mut rng))
            .collect();
        assert_eq!(log.insert(e[2].clone()), Inserted::New { ready: vec![] });
        assert_eq!(log.vector().get(&id.peer_id()), 0);
        assert_eq!(
            log.insert(e[0].clone()),
            Inserted::New {
                ready: vec![e[0].clone()]
            }
        );
        assert_eq!(
            log.insert(e[1].clone()),
            Inserted::New {
                ready: vec![e[1].clone(), e[2].clone()]
            }
        );
        assert_eq!(log.vector().get(&id.peer_id()), 3);
        assert_eq!(log.insert(e[1].clone()), Inserted::Duplicate);
    }

    #[test]
    fn equivocation_keeps_the_first() {
        let mut rng = Rng::from_seed([0; 32]);
        let id = Identity::generate(&mut rng);
        let mut keys = DocKeys::new(DocId([1; 16]), DocKey::from_bytes([2; 32]));
        let mut log = DocLog::new(keys.room());
        let a = sealed(&mut keys, &id, 1, &mut rng);
        let b = sealed(&mut keys, &id, 1, &mut rng); // other nonce, same position
        assert!(matches!(log.insert(a.clone()), Inserted::New { .. }));
        assert_eq!(
            log.insert(b),
            Inserted::Equivocation {
                author: id.peer_id(),
                seq: 1
            }
        );
        assert_eq!(log.get(&id.peer_id(), 1), Some(&a));
        assert!(log.equivocators().contains(&id.peer_id()));
    }

    #[test]
    fn batches_are_bounded_and_oldest_first() {
        let mut rng = Rng::from_seed([0; 32]);
        let id = Identity::generate(&mut rng);
        let mut keys = DocKeys::new(DocId([1; 16]), DocKey::from_bytes([2; 32]));
        let mut log = DocLog::new(keys.room());
        for s in 1..=10 {
            log.insert(sealed(&mut keys, &id, s, &mut rng));
        }
        let one = log.get(&id.peer_id(), 1).unwrap().len();
        let mut cursor = VersionVector::default();
        cursor.set(id.peer_id(), 2);
        let b = log.next_batch(&mut cursor, one * 3, 100);
        assert_eq!(b.iter().map(|e| e.seq()).collect::<Vec<_>>(), [3, 4, 5]);
        let b = log.next_batch(&mut cursor, 1, 100);
        assert_eq!(b.len(), 1, "one envelope always fits");
        let b = log.next_batch(&mut cursor, usize::MAX, 2);
        assert_eq!(b.len(), 2);
        let rest = log.next_batch(&mut cursor, usize::MAX, 100);
        assert_eq!(rest.len(), 2);
        assert!(log.next_batch(&mut cursor, usize::MAX, 100).is_empty());
        assert!(!log.is_ahead_of(&cursor));
    }
}
