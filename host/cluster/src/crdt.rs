//! A delta-state CRDT map: last writer wins by [`Stamp`], adds win ties.
//!
//! Every local change and every change learnt from a peer is numbered with
//! this replica's change counter, kept per key. A peer that acknowledged
//! counter `n` has seen every change up to `n`, so what it still needs, the
//! *delta interval*, is exactly the entries changed after `n`: no buffer of
//! deltas to keep, and a new peer (acknowledged nothing) gets a full sync
//! from the same code. Tombstones stay until every peer acknowledged them and
//! `tombstone_ttl` passed; a replica away for longer than that must rejoin
//! with an empty map (see [`DeltaMap::gc`]).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Orders writes to one key: a higher epoch wins, then a higher version
/// within the epoch, then the writer's name (only to break exact ties).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Stamp {
    /// The ownership epoch the write was made in.
    pub epoch: u64,
    /// Writes within one epoch, in order.
    pub version: u64,
    /// Who wrote it.
    pub node: String,
}

/// One key's state: a value, or a tombstone (`None`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<V> {
    /// The write's stamp.
    pub stamp: Stamp,
    /// The value; `None` once removed.
    pub value: Option<V>,
}

impl<V: Ord> Entry<V> {
    /// Whether `self` wins over `other`: the higher stamp; on equal stamps a
    /// value over a tombstone (adds win), then the greater value, so that
    /// every replica picks the same one whatever the order of delivery.
    fn beats(&self, other: &Entry<V>) -> bool {
        (&self.stamp, self.value.is_some(), &self.value)
            > (&other.stamp, other.value.is_some(), &other.value)
    }
}

/// A set of entries sent to a peer: a delta, or the whole map.
pub type Delta<K, V> = BTreeMap<K, Entry<V>>;

#[derive(Clone, Debug)]
struct Slot<V> {
    entry: Entry<V>,
    /// This replica's change counter when the entry last changed here.
    changed: u64,
    /// When it became a tombstone, on this replica's clock.
    removed_at: Option<u64>,
}

/// The map. `P` names peers (node names).
#[derive(Clone, Debug)]
pub struct DeltaMap<K, V, P = String> {
    slots: BTreeMap<K, Slot<V>>,
    /// Each key under the counter of its last change: a delta interval is a
    /// range of it, not a scan of every slot.
    by_change: BTreeMap<u64, K>,
    counter: u64,
    acked: BTreeMap<P, u64>,
}

impl<K: Ord + Clone, V: Ord + Clone, P: Ord + Clone> Default for DeltaMap<K, V, P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Clone, V: Ord + Clone, P: Ord + Clone> DeltaMap<K, V, P> {
    /// An empty map.
    pub fn new() -> Self {
        DeltaMap {
            slots: BTreeMap::new(),
            by_change: BTreeMap::new(),
            counter: 0,
            acked: BTreeMap::new(),
        }
    }

    /// The live value under `key`.
    pub fn get(&self, key: &K) -> Option<&V> {
        self.slots.get(key)?.entry.value.as_ref()
    }

    /// The entry under `key`, tombstones included.
    pub fn entry(&self, key: &K) -> Option<&Entry<V>> {
        self.slots.get(key).map(|s| &s.entry)
    }

    /// Every live value, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.slots
            .iter()
            .filter_map(|(k, s)| Some((k, s.entry.value.as_ref()?)))
    }

    /// Every entry, tombstones included: the state two replicas compare.
    pub fn entries(&self) -> Delta<K, V> {
        self.slots
            .iter()
            .map(|(k, s)| (k.clone(), s.entry.clone()))
            .collect()
    }

    /// Tombstones still held.
    pub fn tombstones(&self) -> usize {
        self.slots
            .values()
            .filter(|s| s.entry.value.is_none())
            .count()
    }

    /// Writes `value` under `key` with `stamp`; returns the delta to send,
    /// empty if an entry with a higher stamp is already there.
    pub fn insert(&mut self, key: K, value: V, stamp: Stamp, now: u64) -> Delta<K, V> {
        let entry = Entry {
            stamp,
            value: Some(value),
        };
        self.join(BTreeMap::from([(key, entry)]), now)
    }

    /// Removes `key` with `stamp` (a tombstone); returns the delta to send.
    pub fn remove(&mut self, key: K, stamp: Stamp, now: u64) -> Delta<K, V> {
        let entry = Entry { stamp, value: None };
        self.join(BTreeMap::from([(key, entry)]), now)
    }

    /// Joins a delta (or a whole map) into this one; returns the entries
    /// that changed here, which is the delta this join adds.
    pub fn join(&mut self, delta: Delta<K, V>, now: u64) -> Delta<K, V> {
        let mut changed = BTreeMap::new();
        for (key, entry) in delta {
            if let Some(slot) = self.slots.get(&key)
                && !entry.beats(&slot.entry)
            {
                continue;
            }
            self.counter += 1;
            let removed_at = entry.value.is_none().then_some(now);
            changed.insert(key.clone(), entry.clone());
            if let Some(old) = self.slots.get(&key) {
                self.by_change.remove(&old.changed);
            }
            self.by_change.insert(self.counter, key.clone());
            self.slots.insert(
                key,
                Slot {
                    entry,
                    changed: self.counter,
                    removed_at,
                },
            );
        }
        changed
    }

    /// This replica's change counter: a peer that acknowledges it has
    /// everything this replica has now.
    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// Starts tracking `peer` (a full sync is due), if new.
    pub fn add_peer(&mut self, peer: P) {
        self.acked.entry(peer).or_insert(0);
    }

    /// Stops tracking `peer`: it no longer holds back tombstone collection.
    pub fn remove_peer(&mut self, peer: &P) {
        self.acked.remove(peer);
    }

    /// What `peer` still needs (everything for a new peer), and the counter
    /// to acknowledge once it has joined it; `None` if it is up to date.
    pub fn delta_for(&self, peer: &P) -> Option<(Delta<K, V>, u64)> {
        let acked = self.acked.get(peer).copied().unwrap_or(0);
        if acked >= self.counter {
            return None;
        }
        Some((self.changed_since(acked), self.counter))
    }

    /// The entries changed here after change counter `n`.
    pub fn changed_since(&self, n: u64) -> Delta<K, V> {
        if n >= self.counter {
            return Delta::new();
        }
        self.by_change
            .range(n + 1..)
            .filter_map(|(_, k)| Some((k.clone(), self.slots.get(k)?.entry.clone())))
            .collect()
    }

    /// `peer` has joined everything up to `upto`. Acks only move forward,
    /// so a duplicated or reordered ack changes nothing.
    pub fn ack(&mut self, peer: &P, upto: u64) {
        if let Some(acked) = self.acked.get_mut(peer) {
            *acked = (*acked).max(upto.min(self.counter));
        }
    }

    /// Drops tombstones that every tracked peer has acknowledged and that
    /// are older than `ttl`. Returns how many went.
    pub fn gc(&mut self, now: u64, ttl: u64) -> usize {
        let floor = self.acked.values().copied().min().unwrap_or(self.counter);
        let before = self.slots.len();
        let by_change = &mut self.by_change;
        self.slots.retain(|_, s| {
            let keep = match s.removed_at {
                Some(at) => !(s.changed <= floor && now.saturating_sub(at) >= ttl),
                None => true,
            };
            if !keep {
                by_change.remove(&s.changed);
            }
            keep
        });
        before - self.slots.len()
    }
}
