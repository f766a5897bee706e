//! What a node keeps on disk, and how it reaches the disk.
//!
//! [`Durable`] is everything of a node that survives a crash or a restart
//! of the whole cluster. The protocol assumes that it is on disk before any
//! message that depends on it leaves; the host makes that true by writing
//! what [`ClusterNode::take_changes`](crate::ClusterNode::take_changes)
//! hands it, and holding messages as [`crate::outbox`] says.
//!
//! The journals' entries are written as they change (one row per entry, in
//! the host's journal); the rest is one small [`SessionState`] row per
//! session plus one row per replicated record, written only when they
//! change, which is when sessions are created or move, never per action.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::crdt::Delta;
use crate::node::{JournalChange, JournalEntry, Key, Record};

/// A map from session to `V` that remembers which sessions changed, until
/// taken: how the core knows which rows to write without comparing all.
/// Reads go through `Deref`; writes only through the methods below.
#[derive(Clone, Debug)]
pub struct Tracked<V> {
    map: BTreeMap<String, V>,
    changed: BTreeSet<String>,
}

impl<V> Default for Tracked<V> {
    fn default() -> Self {
        Tracked {
            map: BTreeMap::new(),
            changed: BTreeSet::new(),
        }
    }
}

impl<V> Deref for Tracked<V> {
    type Target = BTreeMap<String, V>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl<V: PartialEq> Tracked<V> {
    /// Sets `session`'s value; a change only if it differs.
    pub fn insert(&mut self, session: String, value: V) {
        if self.map.get(&session) != Some(&value) {
            self.changed.insert(session.clone());
            self.map.insert(session, value);
        }
    }

    /// Removes `session`'s value.
    pub fn remove(&mut self, session: &str) -> Option<V> {
        let old = self.map.remove(session);
        if old.is_some() {
            self.changed.insert(session.to_owned());
        }
        old
    }

    /// Changes `session`'s value, if it has one; a change only if `f`
    /// altered it (a no-op update writes no row).
    pub fn update(&mut self, session: &str, f: impl FnOnce(&mut V))
    where
        V: Clone,
    {
        if let Some(value) = self.map.get_mut(session) {
            let before = value.clone();
            f(value);
            if *value != before {
                self.changed.insert(session.to_owned());
            }
        }
    }

    /// Gives `session` the value `make` returns, unless it has one.
    pub fn insert_if_absent(&mut self, session: &str, make: impl FnOnce() -> V) {
        if !self.map.contains_key(session) {
            self.changed.insert(session.to_owned());
            self.map.insert(session.to_owned(), make());
        }
    }

    fn take_changed(&mut self) -> BTreeSet<String> {
        std::mem::take(&mut self.changed)
    }
}

impl<V> FromIterator<(String, V)> for Tracked<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        Tracked {
            map: iter.into_iter().collect(),
            changed: BTreeSet::new(),
        }
    }
}

/// What a node keeps in its store: all that survives a crash.
#[derive(Clone, Debug, Default)]
pub struct Durable {
    /// Journals of sessions this node owns or replicates.
    pub journals: BTreeMap<String, Vec<JournalEntry>>,
    /// The highest epoch seen per session.
    pub epochs: Tracked<u64>,
    /// The replicated records as last known.
    pub records: Delta<Key, Record>,
    /// Sessions this node replicates holding every entry that can have been
    /// acknowledged (since the epoch given): the condition for promotion.
    pub complete: Tracked<u64>,
    /// Replica changes this node (as owner) is releasing the old replica
    /// for: session → the learner to make replica. A restart finishes them.
    pub designating: Tracked<String>,
    /// Sessions this node passed its replica rights on for, up to this
    /// epoch: their owners of that epoch get no more acknowledgements here.
    pub handed: Tracked<Handed>,
    /// Sessions whose journal here is a learner's copy (a handoff's or a
    /// replica change's target) that held the whole journal of the owner
    /// of the epoch given, at some moment. Should that owner go for good
    /// before its replica was ever called, this copy holds every entry
    /// that can have been acknowledged, and goes to the replica.
    pub learned: Tracked<u64>,
    /// Sessions whose replica role this node gave up when the owner asked
    /// (to name another), in the epoch given: it may have acknowledged
    /// what only its successor holds now, so no learner's copy makes it
    /// complete for that epoch again.
    pub released: Tracked<u64>,
    /// Sessions this node, passing its replica rights on, sent a transfer
    /// for, and to which node: that node may own them already, so it is
    /// the only one they are offered to until the offer is answered.
    pub offered_to: Tracked<String>,
}

/// A replica's decision to pass a session on (kept across restarts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Handed {
    /// The epoch whose owner gets no more acknowledgements here.
    pub served: u64,
    /// The highest epoch offered in a transfer so far.
    pub offered: u64,
    /// Whether a transfer was acknowledged.
    pub done: bool,
}

/// One session's row: everything durable about it but its journal's
/// entries. `None` fields are absent from [`Durable`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionState {
    /// [`Durable::epochs`].
    pub epoch: Option<u64>,
    /// [`Durable::complete`].
    pub complete: Option<u64>,
    /// [`Durable::designating`].
    pub designating: Option<String>,
    /// [`Durable::handed`].
    pub handed: Option<Handed>,
    /// Whether the session has a journal here, and the epoch of each of its
    /// entries as runs: `(first index, epoch)`, in order. Epochs change only
    /// when a session moves, so this stays a few pairs long.
    pub journal: Option<Vec<(u64, u64)>>,
    /// [`Durable::learned`]. This and the fields after it come last, so
    /// that a row written before they existed reads as one without them
    /// (see the host's row decoding).
    pub learned: Option<u64>,
    /// [`Durable::released`].
    pub released: Option<u64>,
    /// [`Durable::offered_to`].
    pub offered_to: Option<String>,
}

impl SessionState {
    /// Whether there is nothing to keep (the row can go).
    pub fn is_empty(&self) -> bool {
        *self == SessionState::default()
    }
}

/// What changed in the durable state besides journal entries: rows to write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateChange {
    /// Sessions whose row changed, with the row as it stands now (empty:
    /// delete it).
    pub sessions: Vec<(String, SessionState)>,
    /// Records that changed, as they stand now.
    pub records: Delta<Key, Record>,
}

/// Everything to write after a step of the core, as one write: the
/// journals' new entries and the rows, so that a crash never keeps entries
/// whose epochs their row does not describe yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Journal changes, one per session.
    pub journals: Vec<JournalChange>,
    /// Rows and records.
    pub state: StateChange,
}

impl Changes {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.journals.is_empty() && self.state.is_empty()
    }
}

impl StateChange {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty() && self.records.is_empty()
    }
}

impl Durable {
    /// `session`'s row as it stands now.
    pub fn session_state(&self, session: &str) -> SessionState {
        SessionState {
            epoch: self.epochs.get(session).copied(),
            complete: self.complete.get(session).copied(),
            designating: self.designating.get(session).cloned(),
            handed: self.handed.get(session).copied(),
            journal: self.journals.get(session).map(|j| epoch_runs(j)),
            learned: self.learned.get(session).copied(),
            released: self.released.get(session).copied(),
            offered_to: self.offered_to.get(session).cloned(),
        }
    }

    /// Sessions whose row changed since the last call, and forgets them.
    pub(crate) fn take_changed(&mut self) -> BTreeSet<String> {
        let mut changed = self.epochs.take_changed();
        changed.append(&mut self.complete.take_changed());
        changed.append(&mut self.designating.take_changed());
        changed.append(&mut self.handed.take_changed());
        changed.append(&mut self.learned.take_changed());
        changed.append(&mut self.released.take_changed());
        changed.append(&mut self.offered_to.take_changed());
        changed
    }

    /// Rebuilds what a node kept from its rows: the session rows, the
    /// records, and each journal's entries (`actions(session)` reads them
    /// from the host's journal, in order from index 0).
    pub fn from_rows<E>(
        sessions: impl IntoIterator<Item = (String, SessionState)>,
        records: Delta<Key, Record>,
        mut actions: impl FnMut(&str) -> Result<Vec<Vec<u8>>, E>,
    ) -> Result<Durable, RowsError<E>> {
        let mut durable = Durable {
            records,
            ..Durable::default()
        };
        let (mut epochs, mut complete, mut designating, mut handed) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut learned, mut released, mut offered_to) = (Vec::new(), Vec::new(), Vec::new());
        for (session, state) in sessions {
            if let Some(runs) = state.journal {
                let actions = actions(&session).map_err(RowsError::Journal)?;
                let journal = with_epochs(&runs, actions)
                    .ok_or_else(|| RowsError::Damaged(session.clone()))?;
                durable.journals.insert(session.clone(), journal);
            }
            epochs.extend(state.epoch.map(|e| (session.clone(), e)));
            complete.extend(state.complete.map(|e| (session.clone(), e)));
            designating.extend(state.designating.map(|d| (session.clone(), d)));
            handed.extend(state.handed.map(|h| (session.clone(), h)));
            learned.extend(state.learned.map(|e| (session.clone(), e)));
            released.extend(state.released.map(|e| (session.clone(), e)));
            offered_to.extend(state.offered_to.map(|to| (session.clone(), to)));
        }
        durable.epochs = epochs.into_iter().collect();
        durable.complete = complete.into_iter().collect();
        durable.designating = designating.into_iter().collect();
        durable.handed = handed.into_iter().collect();
        durable.learned = learned.into_iter().collect();
        durable.released = released.into_iter().collect();
        durable.offered_to = offered_to.into_iter().collect();
        Ok(durable)
    }
}

/// Why [`Durable::from_rows`] failed.
#[derive(Debug, thiserror::Error)]
pub enum RowsError<E> {
    /// Reading a journal failed.
    #[error("reading a journal: {0}")]
    Journal(E),
    /// A journal's entries and its epoch runs disagree.
    #[error("the journal of {0} does not match its epochs (a damaged store)")]
    Damaged(String),
}

/// A journal's epochs as runs of `(first index, epoch)`.
pub(crate) fn epoch_runs(journal: &[JournalEntry]) -> Vec<(u64, u64)> {
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, entry) in journal.iter().enumerate() {
        if runs.last().is_none_or(|(_, e)| *e != entry.epoch) {
            runs.push((i as u64, entry.epoch));
        }
    }
    runs
}

/// Entries from their actions and epoch runs; `None` when the runs do not
/// describe that many entries.
fn with_epochs(runs: &[(u64, u64)], actions: Vec<Vec<u8>>) -> Option<Vec<JournalEntry>> {
    if runs.first().is_some_and(|(from, _)| *from != 0) || (runs.is_empty() != actions.is_empty()) {
        return None;
    }
    if runs
        .last()
        .is_some_and(|(from, _)| *from >= actions.len() as u64)
    {
        return None;
    }
    let mut entries = Vec::with_capacity(actions.len());
    let mut run = 0;
    for (i, action) in actions.into_iter().enumerate() {
        while runs.get(run + 1).is_some_and(|(from, _)| *from <= i as u64) {
            run += 1;
        }
        entries.push(JournalEntry {
            epoch: runs[run].1,
            action,
        });
    }
    Some(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(epoch: u64, byte: u8) -> JournalEntry {
        JournalEntry {
            epoch,
            action: vec![byte],
        }
    }

    #[test]
    fn a_journal_comes_back_from_its_actions_and_epoch_runs() {
        let journal = vec![
            entry(1, 0),
            entry(1, 1),
            entry(3, 2),
            entry(4, 3),
            entry(4, 4),
        ];
        let runs = epoch_runs(&journal);
        assert_eq!(runs, vec![(0, 1), (2, 3), (3, 4)]);
        let actions = journal.iter().map(|e| e.action.clone()).collect();
        assert_eq!(with_epochs(&runs, actions), Some(journal));
        assert_eq!(with_epochs(&[], Vec::new()), Some(Vec::new()));
    }

    #[test]
    fn runs_that_do_not_fit_the_entries_are_damage() {
        assert_eq!(with_epochs(&[(0, 1), (5, 2)], vec![vec![0]; 3]), None);
        assert_eq!(with_epochs(&[(1, 1)], vec![vec![0]; 3]), None);
        assert_eq!(with_epochs(&[], vec![vec![0]]), None);
        assert_eq!(with_epochs(&[(0, 1)], Vec::new()), None);
    }

    #[test]
    fn only_real_changes_are_tracked() {
        let mut map: Tracked<u64> = [("a".to_owned(), 1)].into_iter().collect();
        map.insert("a".into(), 1);
        assert!(map.take_changed().is_empty());
        map.insert("a".into(), 2);
        map.remove("b");
        assert_eq!(map.take_changed(), BTreeSet::from(["a".to_owned()]));
        map.remove("a");
        assert_eq!(map.take_changed(), BTreeSet::from(["a".to_owned()]));
    }
}
