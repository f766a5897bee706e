//! What a node may send, given what is on its disk.
//!
//! The protocol assumes that what a node keeps ([`Durable`](crate::Durable))
//! is on disk before any message that depends on it leaves: no peer may
//! learn of a decision the node could forget in a crash. The host writes
//! the core's [`Changes`] in the order given (a crash keeps a prefix), and
//! the [`Outbox`] numbers those writes and holds each message until the
//! writes it depends on are done, and no longer:
//!
//! - liveness (heartbeats), acks of records and client actions depend on
//!   nothing (a restarted node is a new boot, synced from scratch);
//! - records (`Delta`) wait for every write issued before them;
//! - an acknowledgement that promises a durable copy (`ReplicateAck`,
//!   `TransferAck`) waits for its session's journal and state writes;
//! - any other message about a session waits for that session's state
//!   writes, and for writes of records that belong to no one session
//!   (modules, evictions).
//!
//! So a node writing the state of many sessions at once (a drain of a
//! thousand) keeps renewing the leases of all the others; messages about
//! one session keep their order. The simulation drives its nodes through
//! the same type, with writes that take time and crashes that lose those
//! not done.

use std::collections::{BTreeMap, VecDeque};

use crate::durable::Changes;
use crate::membership::NodeId;
use crate::node::{Key, Message};

/// A node's messages and the writes they wait for.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Writes handed to the store, numbered from 1.
    issued: u64,
    /// Every write up to this one is on disk.
    written: u64,
    /// Per session, the write its next message waits for at least: its
    /// latest state write, or what a message about it held before waits
    /// for (so that they keep their order). Only pending ones are kept.
    sessions: BTreeMap<String, u64>,
    /// Per session, its latest journal write (pending ones only).
    journals: BTreeMap<String, u64>,
    /// The latest write of records that belong to no one session.
    shared: u64,
    /// Messages waiting, with the write each waits for, in order.
    held: VecDeque<(u64, NodeId, Message)>,
}

impl Outbox {
    /// Notes that `changes` were handed to the store, as the next write;
    /// returns its number (writes complete in that order).
    pub fn issue(&mut self, changes: &Changes) -> u64 {
        self.issued += 1;
        let generation = self.issued;
        for change in &changes.journals {
            self.journals.insert(change.session.clone(), generation);
        }
        for (session, _) in &changes.state.sessions {
            self.sessions.insert(session.clone(), generation);
        }
        for key in changes.state.records.keys() {
            match key {
                Key::Session(session) => {
                    self.sessions.insert(session.clone(), generation);
                }
                Key::Module(_) | Key::Evicted(_) => self.shared = generation,
            }
        }
        generation
    }

    /// The number of the latest write issued (0: none yet).
    pub fn issued(&self) -> u64 {
        self.issued
    }

    /// Whether write `generation` is on disk.
    pub fn is_written(&self, generation: u64) -> bool {
        generation <= self.written
    }

    /// `message` to `to`: back at once if it may go now, else held until
    /// [`Outbox::written`] releases it.
    pub fn send(&mut self, to: NodeId, message: Message) -> Option<(NodeId, Message)> {
        let waits_for = match about(&message) {
            About::Nothing => 0,
            About::Everything => self.issued,
            About::Session(session, copy) => {
                let mut waits_for = self.shared.max(self.pending(&self.sessions, session));
                if copy {
                    waits_for = waits_for.max(self.pending(&self.journals, session));
                }
                if waits_for > self.written {
                    self.sessions.insert(session.to_owned(), waits_for);
                }
                waits_for
            }
        };
        if waits_for <= self.written {
            return Some((to, message));
        }
        self.held.push_back((waits_for, to, message));
        None
    }

    fn pending(&self, map: &BTreeMap<String, u64>, session: &str) -> u64 {
        map.get(session).copied().unwrap_or(0)
    }

    /// Write `generation` (and so every one before it) is on disk: the
    /// messages that may go now, in the order they were sent.
    pub fn written(&mut self, generation: u64) -> Vec<(NodeId, Message)> {
        self.written = self.written.max(generation);
        let written = self.written;
        self.sessions.retain(|_, g| *g > written);
        self.journals.retain(|_, g| *g > written);
        let (ready, held): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(g, _, _)| *g <= written);
        self.held = held;
        ready
            .into_iter()
            .map(|(_, to, message)| (to, message))
            .collect()
    }

    /// Messages waiting for a write.
    pub fn held(&self) -> usize {
        self.held.len()
    }
}

enum About<'a> {
    Nothing,
    Everything,
    /// A session; whether the message promises a durable copy.
    Session(&'a str, bool),
}

fn about(message: &Message) -> About<'_> {
    match message {
        Message::Heartbeat(_) | Message::DeltaAck { .. } | Message::Act { .. } => About::Nothing,
        Message::Delta { .. } => About::Everything,
        Message::ReplicateAck { session, .. } | Message::TransferAck { session, .. } => {
            About::Session(session, true)
        }
        Message::Replicate { session, .. }
        | Message::Stale { session, .. }
        | Message::Transfer { session, .. }
        | Message::Handover { session, .. }
        | Message::HandoverAck { session, .. }
        | Message::Release { session, .. }
        | Message::Released { session, .. }
        | Message::Restore { session, .. } => About::Session(session, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::{SessionState, StateChange};
    use crate::node::JournalChange;

    fn peer() -> NodeId {
        NodeId {
            name: "b".into(),
            boot: 1,
        }
    }

    fn state_of(session: &str) -> Changes {
        Changes {
            journals: Vec::new(),
            state: StateChange {
                sessions: vec![(session.into(), SessionState::default())],
                ..StateChange::default()
            },
        }
    }

    fn journal_of(session: &str) -> Changes {
        Changes {
            journals: vec![JournalChange {
                session: session.into(),
                from: 0,
                entries: Vec::new(),
                len: 0,
            }],
            state: StateChange::default(),
        }
    }

    fn stale(session: &str) -> Message {
        Message::Stale {
            session: session.into(),
            epoch: 2,
        }
    }

    fn ack(session: &str) -> Message {
        Message::TransferAck {
            session: session.into(),
            epoch: 2,
        }
    }

    #[test]
    fn a_message_waits_only_for_its_own_sessions_writes() {
        let mut outbox = Outbox::default();
        let first = outbox.issue(&state_of("s"));
        assert!(outbox.send(peer(), stale("s")).is_none());
        assert!(
            outbox.send(peer(), stale("t")).is_some(),
            "t has nothing pending"
        );
        assert!(outbox.send(peer(), Message::DeltaAck { upto: 1 }).is_some());
        assert!(
            outbox
                .send(
                    peer(),
                    Message::Delta {
                        entries: Default::default(),
                        upto: 1
                    }
                )
                .is_none(),
            "records wait for every write"
        );
        assert_eq!(outbox.held(), 2);
        let released = outbox.written(first);
        assert_eq!(released.len(), 2);
        assert_eq!(released[0].1, stale("s"));
        assert!(outbox.send(peer(), stale("s")).is_some());
    }

    #[test]
    fn acknowledgements_of_copies_also_wait_for_the_journal() {
        let mut outbox = Outbox::default();
        let write = outbox.issue(&journal_of("s"));
        assert!(outbox.send(peer(), stale("s")).is_some());
        assert!(outbox.send(peer(), ack("s")).is_none());
        // Held behind the ack: the order of one session's messages stays.
        assert!(outbox.send(peer(), stale("s")).is_none());
        let released: Vec<Message> = outbox.written(write).into_iter().map(|(_, m)| m).collect();
        assert_eq!(released, vec![ack("s"), stale("s")]);
    }

    #[test]
    fn writes_complete_in_order() {
        let mut outbox = Outbox::default();
        let first = outbox.issue(&state_of("s"));
        let second = outbox.issue(&state_of("t"));
        assert!(outbox.send(peer(), stale("t")).is_none());
        assert!(outbox.written(first).is_empty());
        assert!(outbox.is_written(first) && !outbox.is_written(second));
        assert_eq!(outbox.written(second).len(), 1);
    }

    #[test]
    fn records_of_no_one_session_hold_every_session_message() {
        let mut outbox = Outbox::default();
        let mut changes = Changes::default();
        changes.state.records.insert(
            Key::Evicted("c".into()),
            crate::crdt::Entry {
                stamp: crate::crdt::Stamp {
                    epoch: 0,
                    version: 0,
                    node: "a".into(),
                },
                value: Some(crate::node::Record::Evicted),
            },
        );
        let write = outbox.issue(&changes);
        assert!(outbox.send(peer(), stale("any")).is_none());
        assert_eq!(outbox.written(write).len(), 1);
    }
}
