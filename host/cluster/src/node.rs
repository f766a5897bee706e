//! One node's share of the cluster protocol, as a state machine: inputs
//! (`now`, messages, client actions, drain) in; messages and events out. It
//! decides who owns each session, keeps every owned session's journal on one
//! replica, and moves sessions on drain and on failure.
//!
//! # The rules
//!
//! - A session has one **owner** (a node boot, [`NodeId`]) per **epoch** and
//!   one **replica** (a node name: its durable store survives restarts).
//! - The owner applies an action only under a valid **lease**, which only
//!   the replica's acknowledgements extend: an ack of a message the owner
//!   sent at `t` (its clock) gives a lease until `t + lease_ms`. A client is
//!   acknowledged once the replica holds the entry.
//! - Each ack is the replica's **promise**: no promotion until `lease_ms +
//!   drift_ms` after it, on the replica's clock. Once the promise lapsed and
//!   the owner is down, the replica **promotes** itself with a higher epoch;
//!   it holds every acknowledged entry, since acks needed it.
//! - A node that has seen a higher epoch for a session applies nothing and
//!   acknowledges nothing for it. Epochs spread through the replicated
//!   records and in every replication message's answer.
//! - **Drain**: per owned session, a target (ready, newest version, least
//!   loaded) gets a learner copy while the session keeps serving; then the
//!   owner fences, at a quiet moment if one comes within a heartbeat (the
//!   replica holds every entry and the target was sent them all: the
//!   transfer follows them on the same stream at once), else once the
//!   target caught up, and transfers with `epoch + 1` once the replica
//!   holds every entry; it is done when the target acknowledged. The replica is
//!   told the new owner (a **handover**) so that it serves it. A node that
//!   creates an epoch on its own (a promotion) skips one, so that it never
//!   takes the epoch a transfer it has not heard of may have given away;
//!   so the transfer need not wait for the handover's acknowledgement. A
//!   replica that drains is replaced by its owner: learner copy, release
//!   of the old replica (acknowledged), then the learner is made replica.
//! - A replica named as its epoch began (by a promotion) that was never
//!   called holds nothing, yet nothing of the epoch can have been
//!   acknowledged without it: if the owner goes for good, a learner copy
//!   of that owner's whole journal (a handoff's target) makes it complete,
//!   and it takes over. A node whose store holds the journal of a session
//!   its previous boot owned sends it to the replica, and does not finish
//!   a drain until the replica took over; if the replica was evicted (and
//!   so was the learner a half-done replica change was making replica),
//!   it takes the session back itself.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::crdt::{Delta, DeltaMap, Stamp};
pub use crate::durable::{Changes, Durable, Handed, SessionState, StateChange};
use crate::membership::{Change, Membership, NodeId, NodeInfo};
use crate::placement;

/// The newest wire version this core speaks. From 3, promotions skip an
/// epoch, so a handoff's transfer goes out with its handover (to a replica
/// that speaks 3) instead of after the replica acknowledged it.
pub const WIRE: u32 = 3;

/// Timings, all in milliseconds of a node's own clock.
#[derive(Clone, Debug)]
pub struct Config {
    /// Heartbeats and record deltas go out this often.
    pub heartbeat_ms: u64,
    /// A node silent this long is down.
    pub detect_ms: u64,
    /// How long one replica acknowledgement keeps the owner's lease.
    pub lease_ms: u64,
    /// Bound on how far two clocks drift apart over one lease.
    pub drift_ms: u64,
    /// A drain gives up on sessions still not handed off after this long
    /// (they then fail over to their replica when the node is gone).
    pub drain_deadline_ms: u64,
    /// Tombstones of removed records are kept at least this long.
    pub tombstone_ttl_ms: u64,
    /// A handoff fences only once the host said the target is warm
    /// ([`ClusterNode::warmed`]: it holds a recent snapshot), so that the
    /// cutover replays a few entries, not the whole journal.
    pub await_warm: bool,
    /// Sessions a node moves at once (handoffs and replica changes); the
    /// rest keep serving, their leases renewed, until one is done. A node
    /// that moved thousands at once would starve its own renewals.
    pub max_moves: usize,
    /// The wire version this node speaks ([`WIRE`]; older ones only to
    /// simulate a cluster of mixed versions).
    pub wire: u32,
    /// Test only: apply without a valid lease and ignore higher epochs, to
    /// show that the simulation's checker catches a double owner.
    #[doc(hidden)]
    pub unsafe_ignore_fencing: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            heartbeat_ms: 50,
            detect_ms: 300,
            lease_ms: 500,
            drift_ms: 50,
            drain_deadline_ms: 5_000,
            tombstone_ttl_ms: 60_000,
            await_warm: false,
            max_moves: 64,
            wire: WIRE,
            unsafe_ignore_fencing: false,
        }
    }
}

/// A replicated record's key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Key {
    /// A session, by id.
    Session(String),
    /// A module, by `name@version`.
    Module(String),
    /// A node name the operator evicted: gone for good, never chosen again.
    Evicted(String),
}

/// A replicated record.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Record {
    /// Where a session lives.
    Session(SessionRecord),
    /// A published module.
    Module {
        /// Its content hash.
        hash: String,
        /// Its snapshot format version.
        format: u32,
    },
    /// The name under [`Key::Evicted`] is out of the cluster.
    Evicted,
}

/// Where a session lives and what it runs.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The owner.
    pub owner: NodeId,
    /// The ownership epoch.
    pub epoch: u64,
    /// The replica's node name.
    pub replica: String,
    /// The module, `name@version`.
    pub module: String,
    /// The module's content hash.
    pub module_hash: String,
    /// The host's own record of the session (players, limits), opaque here.
    pub meta: Vec<u8>,
    /// Snapshot format version.
    pub format: u32,
    /// Journal position of the latest snapshot.
    pub snapshot_seq: u64,
}

/// Why an owner's append was refused (nothing was appended).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Another node owns the session.
    #[error("not the owner; {0} is")]
    NotOwner(NodeId),
    /// The cluster knows no such session.
    #[error("no such session")]
    NoSession,
    /// The session is being handed off.
    #[error("the session is moving; retry on its new owner")]
    Moving,
    /// The replica has not renewed the lease.
    #[error("no valid lease; retry shortly")]
    NoLease,
}

/// What a new session runs, for its record.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewSession {
    /// The module, `name@version`.
    pub module: String,
    /// The module's content hash.
    pub module_hash: String,
    /// The host's own record of the session.
    pub meta: Vec<u8>,
}

/// One journal entry: the epoch it was applied in and the action's bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// Epoch of the owner that applied it.
    pub epoch: u64,
    /// The action, opaque to the protocol: an encoded runtime journal entry
    /// on a real node, an id in the simulation.
    pub action: Vec<u8>,
}

/// A change to [`Durable::journals`] that the host must write to its store:
/// the journal is `len` long and `entries` replace what stood from `from`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JournalChange {
    /// The session.
    pub session: String,
    /// Index (0-based) of the first entry that changed.
    pub from: u64,
    /// The entries from `from` on.
    pub entries: Vec<JournalEntry>,
    /// The journal's length now.
    pub len: u64,
}

/// Messages between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Membership: alive, with what the sender advertises.
    Heartbeat(NodeInfo),
    /// Record changes after what the receiver acknowledged.
    Delta {
        /// The entries.
        entries: Delta<Key, Record>,
        /// The sender's change counter they bring the receiver to.
        upto: u64,
    },
    /// The receiver joined a `Delta` up to `upto`.
    DeltaAck {
        /// The counter acknowledged.
        upto: u64,
    },
    /// Journal entries from `from` (0-based) of the owner's journal, which
    /// is `len` long; for the replica also a lease renewal.
    Replicate {
        /// The session.
        session: String,
        /// The owner's epoch.
        epoch: u64,
        /// Where `entries` start.
        from: u64,
        /// The entries.
        entries: Vec<JournalEntry>,
        /// The owner's journal length.
        len: u64,
        /// A replica (promises, may promote) or a learner (a copy only).
        replica: bool,
        /// When the owner sent it, echoed in the ack.
        sent_at: u64,
    },
    /// The receiver holds the owner's journal up to `len`.
    ReplicateAck {
        /// The session.
        session: String,
        /// The epoch acknowledged.
        epoch: u64,
        /// Entries held that match the owner's.
        len: u64,
        /// Echo of `Replicate::sent_at`.
        sent_at: u64,
        /// Whether this ack is a replica's promise.
        replica: bool,
    },
    /// The sender knows a higher epoch: the receiver must stand down.
    Stale {
        /// The session.
        session: String,
        /// The higher epoch.
        epoch: u64,
    },
    /// Ownership moves to the receiver at `epoch`.
    Transfer {
        /// The session.
        session: String,
        /// The new epoch.
        epoch: u64,
        /// The journal length at the fence.
        len: u64,
        /// The replica the new owner keeps.
        replica: String,
        /// The session's record, carried over.
        record: SessionRecord,
    },
    /// To the replica, before a transfer: `owner` takes `epoch`.
    Handover {
        /// The session.
        session: String,
        /// The next epoch.
        epoch: u64,
        /// Its owner.
        owner: NodeId,
    },
    /// The replica knows `epoch`'s owner and serves it.
    HandoverAck {
        /// The session.
        session: String,
        /// The epoch.
        epoch: u64,
    },
    /// The receiver of a `Transfer` owns the session now.
    TransferAck {
        /// The session.
        session: String,
        /// The new epoch.
        epoch: u64,
    },
    /// The receiver is no longer the session's replica.
    Release {
        /// The session.
        session: String,
        /// The owner's epoch.
        epoch: u64,
    },
    /// The receiver of a `Release` gave up its replica role.
    Released {
        /// The session.
        session: String,
        /// The epoch.
        epoch: u64,
    },
    /// From a restarted node whose previous boot owned the session: its
    /// journal, so that the replica holds every acknowledged entry before it
    /// takes over (the previous boot may have been its only other holder).
    Restore {
        /// The session.
        session: String,
        /// The epoch the previous boot owned.
        epoch: u64,
        /// The whole journal.
        entries: Vec<JournalEntry>,
        /// To the learner of an unfinished replica change whose old replica
        /// confirmed its release: become the replica.
        designate: bool,
    },
    /// A client's action (the transport delivers it to the owner).
    Act {
        /// The session.
        session: String,
        /// The action.
        action: Vec<u8>,
    },
}

/// What a node reports to its host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// An action was applied at journal position `seq` (1-based).
    Applied {
        /// The session.
        session: String,
        /// The owner's epoch.
        epoch: u64,
        /// Journal position.
        seq: u64,
        /// The action.
        action: Vec<u8>,
    },
    /// An applied action is durable on the replica: acknowledge the client.
    Acked {
        /// The session.
        session: String,
        /// The owner's epoch.
        epoch: u64,
        /// Journal position.
        seq: u64,
        /// The action.
        action: Vec<u8>,
    },
    /// An action was not applied.
    Refused {
        /// The session.
        session: String,
        /// The action.
        action: Vec<u8>,
        /// Why.
        reason: String,
    },
    /// This node owns a session now (creation, promotion or transfer).
    Owner {
        /// The session.
        session: String,
        /// The epoch.
        epoch: u64,
    },
    /// A new session is running: its owner holds a lease from its replica,
    /// so both hold it. Creation is acknowledged to the client from here.
    Started {
        /// The session.
        session: String,
    },
    /// A session's replica changed: `replica` holds it now with `len` entries.
    ReplicaChanged {
        /// The session.
        session: String,
        /// The new replica's name.
        replica: String,
        /// Entries the new replica was known to hold.
        len: u64,
    },
    /// This node stopped owning a session.
    SteppedDown {
        /// The session.
        session: String,
        /// The epoch it owned.
        epoch: u64,
        /// The new owner, when known: this node handed the session to it, or
        /// the records that made it step down name it.
        to: Option<NodeId>,
    },
    /// A handoff of an owned session to `to` began: the host may warm the
    /// target (see [`Config::await_warm`]).
    HandingOff {
        /// The session.
        session: String,
        /// The target.
        to: NodeId,
    },
    /// An owned session was fenced for a handoff to `to`: nothing more is
    /// appended here; its journal is `len` long.
    Fenced {
        /// The session.
        session: String,
        /// The epoch it is owned in.
        epoch: u64,
        /// The journal length at the fence.
        len: u64,
        /// The target.
        to: NodeId,
    },
    /// A handoff was called off (the target went away before the
    /// transfer): the session stays, and serves here again if fenced.
    HandoffCalledOff {
        /// The session.
        session: String,
        /// The epoch it is owned in.
        epoch: u64,
    },
    /// A drain ended: every session handed off, or the deadline passed.
    Drained {
        /// Sessions owned or replicated here when it ended.
        left: usize,
    },
    /// Membership changed.
    Membership(Change),
}

/// What a node wants sent.
#[derive(Debug, Default)]
pub struct Transmit {
    /// Messages that depend on no write of this node's: to send at once,
    /// ahead of the writes of this round. Today only a new owner's first
    /// message to its replica after a transfer: its epoch was given to this
    /// boot alone, and the journal it sends is the learner copy it already
    /// acknowledged (so on disk). If its own write of the transfer is lost
    /// in a crash, the replica serves a boot that is gone and promotes once
    /// its promise lapsed; no client was acknowledged (that needs this
    /// node's writes, done in order). The cutover saves a write's wait.
    pub at_once: Vec<(NodeId, Message)>,
    /// The rest, oldest first: each waits in the host's
    /// [`crate::outbox::Outbox`] for the writes it depends on.
    pub ordered: Vec<(NodeId, Message)>,
}

/// An owned session's replication and handoff state.
#[derive(Clone, Debug)]
struct Owning {
    epoch: u64,
    replica: String,
    /// Entries the replica acknowledged holding (only grows: clients are
    /// acknowledged up to it).
    replica_len: u64,
    /// Where the next message to the replica starts: its latest answer.
    replica_next: u64,
    /// The journal length last sent to the replica: entries past it are
    /// new to it. Between renewals only those are sent, so that acks of
    /// entries still in flight send nothing (else every ack would resend
    /// what is in flight, and the messages multiply while a copy lags).
    replica_sent: u64,
    lease_until: u64,
    last_sent: Option<u64>,
    pending: BTreeMap<u64, Vec<u8>>,
    fenced: bool,
    moving: Option<Move>,
}

impl Owning {
    /// Replicates to `replica` from now on, sending it everything again.
    fn switch_replica(&mut self, replica: String) {
        self.replica = replica;
        self.replica_len = 0;
        self.replica_next = 0;
        self.replica_sent = 0;
    }
}

#[derive(Clone, Debug)]
struct Move {
    /// The new owner (handoff) or the new replica (replica change).
    to: NodeId,
    handoff: bool,
    learner_len: u64,
    /// The journal length last sent to the learner (see `replica_sent`).
    learner_sent: u64,
    /// Handoff: the replica acknowledged the handover.
    handed_over: bool,
    stage: Stage,
    /// Since when the host has warmed the target (or since the move began,
    /// if it need not: see `Config::await_warm`). The fence waits for a
    /// quiet moment from then (see `advance_move`).
    warm_since: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    /// The learner is catching up; the session serves.
    Syncing,
    /// Replica change: the old replica is being released.
    Releasing,
    /// Handoff: fenced and copied; the replica is told the next epoch's
    /// owner, so that it can never promote itself into that epoch.
    Handover,
    /// Handoff: transfer sent, waiting for its ack; the replica agreed, or
    /// is told alongside (see [`WIRE`]).
    Transferring,
}

/// A draining replica's transfer of a session whose owner is down.
#[derive(Clone, Debug)]
struct Handing {
    /// The node taking the session over.
    to: NodeId,
    /// Entries it holds.
    held: u64,
    /// The epoch offered with the latest transfer: a retry with another
    /// node offers a higher one, so two attempts never share an epoch.
    epoch: u64,
}

#[derive(Clone, Debug)]
enum Role {
    Owner(Owning),
    /// A copy with promotion rights.
    Replica {
        epoch: u64,
        owner: NodeId,
        promise_until: u64,
        confirmed: u64,
        /// Whether this epoch's owner has called: one that never did can
        /// have applied nothing, so waiting for it is pointless.
        called: bool,
    },
    /// A copy without promotion rights (handoff target, future replica).
    Learner {
        epoch: u64,
        confirmed: u64,
    },
}

/// One node.
#[derive(Debug)]
pub struct ClusterNode {
    id: NodeId,
    config: Config,
    host_version: u32,
    capacity: u32,
    durable: Durable,
    records: DeltaMap<Key, Record, NodeId>,
    membership: Membership,
    peers: BTreeSet<NodeId>,
    roles: BTreeMap<String, Role>,
    draining: Option<u64>,
    drained: bool,
    /// Sessions whose old replica confirmed its release to this boot.
    released: BTreeSet<String>,
    /// The wire version spoken with each peer, by name.
    wires: BTreeMap<String, u32>,
    /// A draining replica passing the session on (its owner is down).
    handing: BTreeMap<String, Handing>,
    /// When this boot last offered a learner's copy to a replica, per
    /// session (see `offer_learned_copy`): once a lease.
    copies_offered: BTreeMap<String, u64>,
    /// Peers whose records this boot has joined at least once.
    synced_from: BTreeSet<NodeId>,
    last_heartbeat: Option<u64>,
    /// Per session, the first journal index changed since the host took them.
    changed: BTreeMap<String, u64>,
    /// Per session, the journal length the host was last told of: a change
    /// that does not start there rewrote the journal.
    reported: BTreeMap<String, u64>,
    /// Sessions whose journal's epoch runs changed since the host took them.
    reshaped: BTreeSet<String>,
    /// The records' change counter as of the last [`StateChange`].
    records_written: u64,
    outbox: Vec<(NodeId, Message)>,
    /// Messages that depend on no write of this node (see [`Transmit`]).
    at_once: Vec<(NodeId, Message)>,
    events: Vec<Event>,
    /// Moves under way, as counted by the running tick.
    moves_started: usize,
}

impl ClusterNode {
    /// A node starting at `now` with what its store kept. It owns nothing
    /// (ownership belongs to a process, not a name), and it is again the
    /// replica of every session whose record names it, promising at once as
    /// if it had just acknowledged, since its previous life may have.
    pub fn new(
        id: NodeId,
        config: Config,
        host_version: u32,
        capacity: u32,
        mut durable: Durable,
        now: u64,
    ) -> Self {
        let mut records = DeltaMap::new();
        records.join(std::mem::take(&mut durable.records), now);
        let reported = durable
            .journals
            .iter()
            .map(|(s, j)| (s.clone(), j.len() as u64))
            .collect();
        let records_written = records.counter();
        let mut roles = BTreeMap::new();
        for (key, record) in records.iter() {
            if let (Key::Session(session), Record::Session(r)) = (key, record)
                && r.replica == id.name
            {
                roles.insert(
                    session.clone(),
                    Role::Replica {
                        epoch: r.epoch,
                        owner: r.owner.clone(),
                        promise_until: now + config.lease_ms + config.drift_ms,
                        // Its journal is durable, but what it matches of the
                        // owner's is re-established by the owner's resend.
                        confirmed: 0,
                        called: false,
                    },
                );
            }
        }
        ClusterNode {
            membership: Membership::new(config.detect_ms),
            id,
            config,
            host_version,
            capacity,
            durable,
            records,
            peers: BTreeSet::new(),
            roles,
            draining: None,
            drained: false,
            released: BTreeSet::new(),
            wires: BTreeMap::new(),
            synced_from: BTreeSet::new(),
            handing: BTreeMap::new(),
            copies_offered: BTreeMap::new(),
            last_heartbeat: None,
            changed: BTreeMap::new(),
            reported,
            reshaped: BTreeSet::new(),
            records_written,
            outbox: Vec::new(),
            at_once: Vec::new(),
            events: Vec::new(),
            moves_started: 0,
        }
    }

    /// This node's identity.
    pub fn id(&self) -> &NodeId {
        &self.id
    }

    /// `session`'s journal here.
    pub fn journal(&self, session: &str) -> Option<&[JournalEntry]> {
        self.durable.journals.get(session).map(Vec::as_slice)
    }

    /// Messages to send: those that may go at once, and the rest, oldest
    /// first, for the host's [`crate::outbox::Outbox`].
    pub fn poll_transmit(&mut self) -> Transmit {
        Transmit {
            at_once: std::mem::take(&mut self.at_once),
            ordered: std::mem::take(&mut self.outbox),
        }
    }

    /// Events for the host, oldest first.
    pub fn poll_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// A peer's address became known (seed list, DNS).
    pub fn add_peer(&mut self, peer: NodeId) {
        if peer != self.id {
            self.peers.insert(peer);
        }
    }

    /// The wire version this node speaks.
    pub fn wire(&self) -> u32 {
        self.config.wire
    }

    /// The wire version this node and node `name` agreed on (the transport
    /// negotiates it per connection).
    pub fn peer_wire(&mut self, name: &str, version: u32) {
        self.wires.insert(name.to_owned(), version);
    }

    /// How far past the epochs it knows a node creates one on its own: a
    /// node of wire 3 leaves the next to a transfer it may not have heard
    /// of yet.
    fn own_epoch_step(&self) -> u64 {
        if self.config.wire >= 3 { 2 } else { 1 }
    }

    /// Whether a handoff's transfer may go out with its handover: both this
    /// node and the replica skip an epoch on promotion.
    fn transfer_with_handover(&self, o: &Owning) -> bool {
        self.config.wire >= 3 && self.wires.get(&o.replica).is_some_and(|v| *v >= 3)
    }

    /// The record of `session`, as this node knows it.
    pub fn record(&self, session: &str) -> Option<&SessionRecord> {
        match self.records.get(&Key::Session(session.to_owned()))? {
            Record::Session(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the operator evicted node `name`.
    pub fn is_evicted(&self, name: &str) -> bool {
        self.records.get(&Key::Evicted(name.to_owned())).is_some()
    }

    /// Every record this node knows, tombstones included.
    pub fn records(&self) -> Delta<Key, Record> {
        self.records.entries()
    }

    /// Whether this node owns `session` with a valid lease at `now`.
    pub fn serving(&self, session: &str, now: u64) -> Option<u64> {
        match self.roles.get(session)? {
            Role::Owner(o) if !o.fenced && (o.lease_until > now) => Some(o.epoch),
            _ => None,
        }
    }

    /// Whether `session` is owned here and fenced for a handoff: appends
    /// are refused until it is gone (or called off), not worth waiting for.
    pub fn handing_off(&self, session: &str) -> bool {
        matches!(self.roles.get(session), Some(Role::Owner(o))
            if o.fenced && o.moving.as_ref().is_some_and(|m| m.handoff))
    }

    /// Every session's record.
    pub fn sessions(&self) -> Vec<(String, SessionRecord)> {
        self.records
            .iter()
            .filter_map(|(key, record)| match (key, record) {
                (Key::Session(id), Record::Session(r)) => Some((id.clone(), r.clone())),
                _ => None,
            })
            .collect()
    }

    /// Grows with every change to the replicated records.
    pub fn records_counter(&self) -> u64 {
        self.records.counter()
    }

    /// The nodes up now, this one excluded.
    pub fn peers_up(&self) -> Vec<NodeId> {
        self.membership.up().map(|(id, _)| id.clone()).collect()
    }

    /// Sessions this node owns, with their epochs.
    pub fn owned(&self) -> Vec<(String, u64)> {
        self.roles
            .iter()
            .filter_map(|(s, r)| match r {
                Role::Owner(o) => Some((s.clone(), o.epoch)),
                _ => None,
            })
            .collect()
    }

    /// Nodes this one is handing sessions to right now.
    pub fn handoff_targets(&self) -> Vec<NodeId> {
        self.roles
            .values()
            .filter_map(|r| match r {
                Role::Owner(Owning {
                    moving: Some(m), ..
                }) if m.handoff => Some(m.to.clone()),
                _ => None,
            })
            .collect()
    }

    /// This node's part in `session`, for logs and failing seeds.
    pub fn describe(&self, session: &str) -> String {
        format!(
            "{:?} complete={:?} journal={} known_epoch={}",
            self.roles.get(session),
            self.durable.complete.get(session),
            self.durable.journals.get(session).map_or(0, Vec::len),
            self.known_epoch(session)
        )
    }

    /// Whether this node joined the records of every peer it sees up: until
    /// then it may not know of sessions that exist.
    pub fn synced(&self) -> bool {
        self.membership
            .up()
            .all(|(id, _)| self.synced_from.contains(id))
    }

    /// Whether this node is draining.
    pub fn draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Whether a drain ended.
    pub fn drained(&self) -> bool {
        self.drained
    }

    fn info(&self) -> NodeInfo {
        NodeInfo {
            host_version: self.host_version,
            capacity: self.capacity,
            load: self
                .roles
                .values()
                .filter(|r| matches!(r, Role::Owner(_)))
                .count() as u32,
            ready: self.draining.is_none(),
        }
    }

    fn send(&mut self, to: NodeId, message: Message) {
        self.outbox.push((to, message));
    }

    fn journal_len(&self, session: &str) -> u64 {
        self.durable
            .journals
            .get(session)
            .map_or(0, |j| j.len() as u64)
    }

    fn known_epoch(&self, session: &str) -> u64 {
        self.durable.epochs.get(session).copied().unwrap_or(0)
    }

    fn raise_epoch(&mut self, session: &str, epoch: u64) {
        if epoch > self.known_epoch(session) {
            self.durable.epochs.insert(session.to_owned(), epoch);
        }
    }

    fn write_record(&mut self, session: &str, record: SessionRecord, version: u64, now: u64) {
        let stamp = Stamp {
            epoch: record.epoch,
            version,
            node: self.id.name.clone(),
        };
        self.records.insert(
            Key::Session(session.to_owned()),
            Record::Session(record),
            stamp,
            now,
        );
    }

    /// Nodes that may hold a replica: up and ready, any version, not this node.
    fn replica_candidates(&self) -> Vec<NodeId> {
        self.membership
            .up()
            .filter(|(id, info)| info.ready && **id != self.id && !self.is_evicted(&id.name))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Nodes that may own a moved session: up, ready, of the newest
    /// version, not this node; with their load.
    fn owner_candidates(&self) -> Vec<(NodeId, u32)> {
        let newest = placement::newest_ready(self.membership.up());
        newest
            .into_iter()
            .filter(|id| **id != self.id && !self.is_evicted(&id.name))
            .map(|id| {
                let load = self
                    .membership
                    .up()
                    .find(|(n, _)| *n == id)
                    .map_or(0, |(_, i)| i.load);
                (id.clone(), load)
            })
            .collect()
    }

    // --- inputs -------------------------------------------------------------

    /// Where a new session goes: `(owner, replica)` by rendezvous over the
    /// ready nodes of the newest version, this one included. Refused
    /// without a second ready node, since every session needs a replica.
    pub fn place(&self, session: &str) -> Result<(NodeId, NodeId), String> {
        let me = self.info();
        let mut nodes: Vec<(&NodeId, &NodeInfo)> = self
            .membership
            .up()
            .filter(|(id, _)| !self.is_evicted(&id.name))
            .collect();
        nodes.push((&self.id, &me));
        let candidates = placement::newest_ready(nodes);
        let (owner, replica) = placement::place(session, &candidates)
            .ok_or_else(|| "no ready node to place the session on".to_owned())?;
        let replica = replica
            .ok_or_else(|| "a session needs two ready nodes (owner and replica)".to_owned())?;
        Ok((owner.clone(), replica.clone()))
    }

    /// Places and records a new session (see [`ClusterNode::place`]).
    pub fn create(
        &mut self,
        session: &str,
        module: &str,
        now: u64,
    ) -> Result<SessionRecord, String> {
        let (owner, replica) = self.place(session)?;
        let new = NewSession {
            module: module.to_owned(),
            ..NewSession::default()
        };
        self.record_new(session, new, owner, replica.name, now)
    }

    /// Records a new session owned by this node, with the best-placed other
    /// ready node as its replica: for a host that forwarded the creation to
    /// where [`ClusterNode::place`] put it. It serves once
    /// [`Event::Started`] says the replica answered.
    pub fn create_here(
        &mut self,
        session: &str,
        new: NewSession,
        now: u64,
    ) -> Result<SessionRecord, String> {
        if self.draining.is_some() {
            return Err("this node is draining".to_owned());
        }
        let candidates = self.replica_candidates();
        let replica = placement::rank(session, &candidates)
            .first()
            .map(|id| id.name.clone())
            .ok_or_else(|| "a session needs two ready nodes (owner and replica)".to_owned())?;
        self.record_new(session, new, self.id.clone(), replica, now)
    }

    fn record_new(
        &mut self,
        session: &str,
        new: NewSession,
        owner: NodeId,
        replica: String,
        now: u64,
    ) -> Result<SessionRecord, String> {
        if self.record(session).is_some() {
            return Err(format!("session {session} exists"));
        }
        let record = SessionRecord {
            owner,
            epoch: 1,
            replica,
            module: new.module,
            module_hash: new.module_hash,
            meta: new.meta,
            format: 1,
            snapshot_seq: 0,
        };
        self.write_record(session, record.clone(), 0, now);
        self.adopt(session, now);
        Ok(record)
    }

    /// Records a published module (`name@version`) for the whole cluster:
    /// content-addressed, so the same id with other bytes is refused.
    pub fn publish_module(
        &mut self,
        id: &str,
        hash: &str,
        format: u32,
        now: u64,
    ) -> Result<(), String> {
        let key = Key::Module(id.to_owned());
        if let Some(Record::Module { hash: known, .. }) = self.records.get(&key)
            && known != hash
        {
            return Err(format!(
                "{id} is already published with other bytes ({known})"
            ));
        }
        let record = Record::Module {
            hash: hash.to_owned(),
            format,
        };
        let stamp = Stamp {
            epoch: 0,
            version: 0,
            node: self.id.name.clone(),
        };
        self.records.insert(key, record, stamp, now);
        Ok(())
    }

    /// Every module published in the cluster, as `(name@version, hash)`.
    pub fn modules(&self) -> Vec<(String, String)> {
        self.records
            .iter()
            .filter_map(|(key, record)| match (key, record) {
                (Key::Module(id), Record::Module { hash, .. }) => Some((id.clone(), hash.clone())),
                _ => None,
            })
            .collect()
    }

    /// Starts draining: not ready, sessions handed off, replicas moved away.
    pub fn drain(&mut self, now: u64) {
        if self.draining.is_none() {
            self.draining = Some(now + self.config.drain_deadline_ms);
            self.heartbeat(now);
        }
    }

    /// The host warmed `to`, the target of `session`'s handoff (it holds a
    /// recent snapshot, or the host gave up trying): the handoff may fence.
    pub fn warmed(&mut self, session: &str, to: &NodeId, now: u64) {
        if let Some(Role::Owner(o)) = self.roles.get_mut(session)
            && let Some(m) = o.moving.as_mut().filter(|m| m.handoff && m.to == *to)
        {
            m.warm_since.get_or_insert(now);
            self.advance_move(session, now);
        }
    }

    /// The operator declares node `name` gone for good (its drain deadline
    /// passed while it was unreachable, or its machine is lost): sessions it
    /// replicated get a new replica without waiting for its release. Only
    /// for a node that can no longer run: a live one could still promote.
    pub fn evict(&mut self, name: &str, now: u64) {
        let stamp = Stamp {
            epoch: 0,
            version: 0,
            node: self.id.name.clone(),
        };
        self.records
            .insert(Key::Evicted(name.to_owned()), Record::Evicted, stamp, now);
        self.on_evicted(name, now);
    }

    /// Acts on an eviction, learnt from the operator or the records.
    fn on_evicted(&mut self, name: &str, now: u64) {
        let owned: Vec<String> = self
            .roles
            .iter()
            .filter(|(_, r)| matches!(r, Role::Owner(o) if o.replica == name))
            .map(|(s, _)| s.clone())
            .collect();
        for session in owned {
            let releasing = matches!(self.roles.get(&session), Some(Role::Owner(o))
                if o.moving.as_ref().is_some_and(|m| !m.handoff && m.stage == Stage::Releasing));
            if releasing {
                self.designate(&session, now);
            } else if let Some(Role::Owner(o)) = self.roles.get_mut(&session) {
                o.replica = String::new();
                o.moving = None;
                o.fenced = false;
            }
        }
        // A replica change a previous boot left half done: the evicted
        // replica will never answer, so its release is taken as given.
        let pending: Vec<String> = self
            .durable
            .designating
            .keys()
            .filter(|s| self.record(s).is_some_and(|r| r.replica == name))
            .cloned()
            .collect();
        self.released.extend(pending);
        self.peers.retain(|p| p.name != name);
    }

    /// A client's action for `session`: applied and reported as
    /// [`Event::Applied`], or [`Event::Refused`].
    pub fn act(&mut self, session: &str, action: Vec<u8>, now: u64) {
        match self.append(session, action.clone(), now) {
            Ok((epoch, seq)) => self.events.push(Event::Applied {
                session: session.to_owned(),
                epoch,
                seq,
                action,
            }),
            Err(refusal) => self.events.push(Event::Refused {
                session: session.to_owned(),
                action,
                reason: refusal.to_string(),
            }),
        }
    }

    /// Appends an entry to an owned session's journal under a valid lease
    /// and starts replicating it: its `(epoch, seq)`, or why not. The
    /// replica's acknowledgement comes as [`Event::Acked`].
    pub fn append(
        &mut self,
        session: &str,
        action: Vec<u8>,
        now: u64,
    ) -> Result<(u64, u64), Refusal> {
        let ignore = self.config.unsafe_ignore_fencing;
        let known = self.known_epoch(session);
        let Some(Role::Owner(owning)) = self.roles.get_mut(session) else {
            return Err(match self.record(session) {
                Some(record) => Refusal::NotOwner(record.owner.clone()),
                None => Refusal::NoSession,
            });
        };
        if !ignore && (owning.fenced || owning.lease_until <= now || owning.epoch < known) {
            return Err(if owning.fenced {
                Refusal::Moving
            } else {
                Refusal::NoLease
            });
        }
        let epoch = owning.epoch;
        let journal = self.durable.journals.entry(session.to_owned()).or_default();
        journal.push(JournalEntry {
            epoch,
            action: action.clone(),
        });
        let seq = journal.len() as u64;
        owning.pending.insert(seq, action);
        self.touched(session, seq - 1);
        self.replicate(session, now, false);
        Ok((epoch, seq))
    }

    /// Notes that `session`'s journal changed from index `from` on.
    fn touched(&mut self, session: &str, from: u64) {
        let at = self.changed.entry(session.to_owned()).or_insert(from);
        *at = (*at).min(from);
    }

    /// What changed in the durable state since the last call, for the host
    /// to write to its store as one write, before anything that depends on
    /// it leaves: [`crate::outbox::Outbox`] tells which messages wait.
    pub fn take_changes(&mut self) -> Changes {
        let journals = self.take_journal_changes();
        Changes {
            journals,
            state: self.take_state_changes(),
        }
    }

    fn take_journal_changes(&mut self) -> Vec<JournalChange> {
        std::mem::take(&mut self.changed)
            .into_iter()
            .map(|(session, from)| {
                let journal = self
                    .durable
                    .journals
                    .get(&session)
                    .map_or(&[][..], Vec::as_slice);
                // Anything but an append in the last entry's epoch changes
                // the journal's epoch runs, which its row keeps.
                let appended = self.reported.get(&session) == Some(&from) && from > 0;
                let before = journal
                    .get(from.saturating_sub(1) as usize)
                    .map(|e| e.epoch);
                let same_epoch = journal
                    .get(from as usize..)
                    .unwrap_or_default()
                    .iter()
                    .all(|e| Some(e.epoch) == before);
                if !(appended && same_epoch) {
                    self.reshaped.insert(session.clone());
                }
                self.reported.insert(session.clone(), journal.len() as u64);
                JournalChange {
                    from: from.min(journal.len() as u64),
                    entries: journal.get(from as usize..).unwrap_or_default().to_vec(),
                    len: journal.len() as u64,
                    session,
                }
            })
            .collect()
    }

    /// Rows for the host to write; after the journal changes, which mark
    /// the journals whose epoch runs changed.
    fn take_state_changes(&mut self) -> StateChange {
        let mut sessions = self.durable.take_changed();
        sessions.append(&mut self.reshaped);
        if self.durable.journals.len() != self.reported.len() {
            // A journal began (empty): its row says it exists.
            for (session, journal) in &self.durable.journals {
                if !self.reported.contains_key(session) {
                    self.reported.insert(session.clone(), journal.len() as u64);
                    sessions.insert(session.clone());
                }
            }
        }
        let records = self.records.changed_since(self.records_written);
        self.records_written = self.records.counter();
        StateChange {
            sessions: sessions
                .into_iter()
                .map(|s| {
                    let state = self.durable.session_state(&s);
                    (s, state)
                })
                .collect(),
            records,
        }
    }

    // --- messages -----------------------------------------------------------

    /// A message from `from` at `now`.
    pub fn handle(&mut self, from: NodeId, message: Message, now: u64) {
        match message {
            Message::Heartbeat(_) if self.is_evicted(&from.name) => {}
            Message::Heartbeat(info) => {
                self.add_peer(from.clone());
                for change in self.membership.heard(&from, info, now) {
                    self.changed(change);
                }
            }
            Message::Delta { entries, upto } => {
                self.synced_from.insert(from.clone());
                let changed = self.records.join(entries, now);
                self.send(from, Message::DeltaAck { upto });
                for key in changed.keys() {
                    match key {
                        Key::Session(session) => self.adopt(session, now),
                        Key::Evicted(name) => self.on_evicted(name, now),
                        Key::Module(_) => {}
                    }
                }
            }
            Message::DeltaAck { upto } => self.records.ack(&from, upto),
            Message::Replicate {
                session,
                epoch,
                from: start,
                entries,
                len,
                replica,
                sent_at,
            } => self.on_replicate(
                from, session, epoch, start, entries, len, replica, sent_at, now,
            ),
            Message::ReplicateAck {
                session,
                epoch,
                len,
                sent_at,
                replica,
            } => self.on_replicate_ack(from, &session, epoch, len, sent_at, replica, now),
            Message::Stale { session, epoch } => {
                // Mid-handoff the replica already serves the next epoch and
                // says so; this node is fenced and finishes the transfer.
                let handing_over = matches!(self.roles.get(&session), Some(Role::Owner(o))
                    if o.moving.as_ref().is_some_and(|m| matches!(m.stage, Stage::Handover | Stage::Transferring)));
                if handing_over {
                    return;
                }
                self.raise_epoch(&session, epoch);
                self.stand_down_below(&session, epoch, now);
            }
            Message::Transfer {
                session,
                epoch,
                len,
                replica,
                record,
            } => self.on_transfer(from, session, epoch, len, replica, record, now),
            Message::TransferAck { session, epoch }
                if self
                    .handing
                    .get(&session)
                    .is_some_and(|h| h.to == from && h.epoch == epoch) =>
            {
                self.passed_on(&session, epoch);
            }
            Message::TransferAck { session, epoch } => {
                if let Some(Role::Owner(o)) = self.roles.get(&session)
                    && o.moving.as_ref().is_some_and(|m| m.handoff && m.to == from)
                    && epoch == o.epoch + 1
                {
                    self.roles.remove(&session);
                    self.raise_epoch(&session, epoch);
                    self.events.push(Event::SteppedDown {
                        session,
                        epoch: epoch - 1,
                        to: Some(from),
                    });
                }
            }
            Message::Handover {
                session,
                epoch,
                owner,
            } => self.on_handover(from, session, epoch, owner, now),
            Message::HandoverAck { session, epoch } => {
                if let Some(Role::Owner(o)) = self.roles.get_mut(&session)
                    && o.epoch + 1 == epoch
                    && let Some(m) = o.moving.as_mut().filter(|m| m.handoff)
                {
                    m.handed_over = true;
                    if m.stage == Stage::Handover {
                        m.stage = Stage::Transferring;
                        self.advance_move(&session, now);
                    }
                }
            }
            Message::Release { session, .. }
                if self
                    .durable
                    .handed
                    .get(&session)
                    .is_some_and(|h| h.offered > 0) => {}
            Message::Release { session, epoch } => {
                // The owner is back and moves its replica itself: stop
                // passing the session on (no transfer went out yet).
                if self
                    .durable
                    .handed
                    .get(&session)
                    .is_some_and(|h| h.offered == 0)
                {
                    self.handing.remove(&session);
                    self.durable.handed.remove(&session);
                }
                match self.roles.get(&session) {
                    Some(&Role::Replica { epoch: e, .. }) if e <= epoch => {
                        self.roles.remove(&session);
                        self.durable.complete.remove(&session);
                        self.durable.released.insert(session.clone(), e);
                    }
                    Some(&Role::Learner { epoch: e, .. }) if e <= epoch => {
                        self.roles.remove(&session);
                        self.durable.complete.remove(&session);
                        self.durable.learned.remove(&session);
                    }
                    _ => {}
                }
                // Only a node with no part in the session confirms, with the
                // newest epoch it knows (a higher one: someone took over).
                // One that handed its rights on did not let them go: its
                // successor holds them, as the records will tell the owner.
                let handed = self.handed_on(&session, epoch);
                if !self.roles.contains_key(&session) && !handed {
                    let epoch = self.known_epoch(&session);
                    self.send(from, Message::Released { session, epoch });
                }
            }
            Message::Released { session, epoch } => self.on_released(&session, epoch, now),
            Message::Restore {
                session,
                epoch,
                entries,
                designate,
            } => self.on_restore(from, &session, epoch, entries, designate, now),
            Message::Act { session, action } => self.act(&session, action, now),
        }
    }

    /// Brings this node's role for `session` in line with its record: the
    /// owner it names starts owning (new sessions), a higher epoch fences an
    /// older owner, and the replica it names knows whom it serves.
    fn adopt(&mut self, session: &str, now: u64) {
        let Some(record) = self.record(session).cloned() else {
            return;
        };
        self.raise_epoch(session, record.epoch);
        self.stand_down_below(session, record.epoch, now);
        let named = record.replica == self.id.name && record.owner != self.id;
        match self.roles.get(session).cloned() {
            Some(Role::Owner(o)) => {
                // Its replica handed its rights on while this owner was away
                // (its lease had lapsed): serve the successor, dropping any
                // replica change of its own.
                let successor = o.epoch == record.epoch
                    && o.replica != record.replica
                    && o.moving
                        .as_ref()
                        .is_none_or(|m| m.to.name != record.replica);
                if successor && let Some(Role::Owner(o)) = self.roles.get_mut(session) {
                    if o.moving.take().is_some() {
                        self.durable.designating.remove(session);
                    }
                    o.fenced = false;
                    o.switch_replica(record.replica.clone());
                    o.lease_until = o.lease_until.min(now);
                }
            }
            None if record.owner == self.id
                && record.epoch == 1
                && !self.durable.journals.contains_key(session) =>
            {
                self.durable.journals.insert(session.to_owned(), Vec::new());
                self.own(session, 1, record.replica.clone(), now);
            }
            None if named => {
                // Named by a new session's record: nothing can have been
                // acknowledged without this node, so it is complete.
                let created = self
                    .records
                    .entry(&Key::Session(session.to_owned()))
                    .is_some_and(|e| e.stamp.epoch == 1 && e.stamp.version == 0);
                if created {
                    self.durable.complete.insert(session.to_owned(), 1);
                }
                self.be_replica(session, &record, now);
            }
            Some(Role::Learner { epoch, .. }) if named => {
                // Made replica after a learner copy: its owner fenced until
                // the copy was whole, so it holds every acknowledged entry.
                if epoch == record.epoch {
                    self.durable.complete.insert(session.to_owned(), epoch);
                }
                self.be_replica(session, &record, now);
            }
            Some(Role::Replica { epoch, .. }) if named && epoch < record.epoch => {
                // A transfer keeps the replica: complete as it was.
                self.be_replica(session, &record, now);
            }
            Some(Role::Replica { .. }) if !named => {
                // Replaced (its release was missed): no longer a replica.
                self.roles.remove(session);
                self.durable.complete.remove(session);
            }
            _ => {}
        }
    }

    /// Becomes the replica the record names; the owner gets a lease's time
    /// to call before this node may take over.
    fn be_replica(&mut self, session: &str, record: &SessionRecord, now: u64) {
        self.roles.insert(
            session.to_owned(),
            Role::Replica {
                epoch: record.epoch,
                owner: record.owner.clone(),
                promise_until: now + self.config.lease_ms + self.config.drift_ms,
                confirmed: 0,
                called: false,
            },
        );
    }

    /// Drops ownership of `session` if it is below `epoch`: someone newer owns it.
    fn stand_down_below(&mut self, session: &str, epoch: u64, now: u64) {
        if self.config.unsafe_ignore_fencing {
            return;
        }
        if let Some(Role::Owner(o)) = self.roles.get(session)
            && o.epoch < epoch
        {
            let old = o.epoch;
            self.roles.remove(session);
            // The records may already name the newer owner (its delta can
            // overtake a transfer's acknowledgement): players follow it.
            let to = self
                .record(session)
                .filter(|r| r.epoch >= epoch && r.owner != self.id)
                .map(|r| r.owner.clone());
            self.events.push(Event::SteppedDown {
                to,
                session: session.to_owned(),
                epoch: old,
            });
            self.adopt(session, now);
        }
    }

    /// The owner hands the session to `owner` at `epoch`: serve it instead.
    fn on_handover(&mut self, from: NodeId, session: String, epoch: u64, owner: NodeId, now: u64) {
        let already = matches!(self.roles.get(&session),
            Some(Role::Replica { epoch: e, owner: o, .. }) if *e == epoch && *o == owner);
        if already {
            // The new owner called first (its transfer went out with this
            // handover), or this is a repeat: it is served already.
            self.send(from, Message::HandoverAck { session, epoch });
            return;
        }
        let agreed = match self.roles.get(&session) {
            Some(Role::Replica {
                epoch: e, owner: o, ..
            }) => *e + 1 == epoch && *o == from,
            _ => false,
        };
        if !agreed {
            let known = self.known_epoch(&session);
            if known >= epoch {
                self.send(
                    from,
                    Message::Stale {
                        session,
                        epoch: known,
                    },
                );
            }
            return;
        }
        self.raise_epoch(&session, epoch);
        self.roles.insert(
            session.clone(),
            Role::Replica {
                epoch,
                owner,
                // As if the new owner had been acknowledged just now.
                promise_until: now + self.config.lease_ms + self.config.drift_ms,
                confirmed: 0,
                called: false,
            },
        );
        self.send(from, Message::HandoverAck { session, epoch });
    }

    fn on_restore(
        &mut self,
        from: NodeId,
        session: &str,
        epoch: u64,
        entries: Vec<JournalEntry>,
        designate: bool,
        now: u64,
    ) {
        let is_replica =
            matches!(self.roles.get(session), Some(Role::Replica { epoch: e, .. }) if *e == epoch);
        let is_learner =
            matches!(self.roles.get(session), Some(Role::Learner { epoch: e, .. }) if *e == epoch);
        // A learner left from an older epoch's move (called off) holds
        // nothing this epoch's owner vouches for.
        let stale_learner =
            matches!(self.roles.get(session), Some(Role::Learner { epoch: e, .. }) if *e < epoch);
        // The message carries the whole journal, so a learner that lost its
        // copy (or its role, in a restart) can be made replica all the same.
        let no_part = !self.roles.contains_key(session);
        // One that passed its rights on for this epoch holds them no more,
        // whatever role a restart gave it back from stale records.
        if self.handed_on(session, epoch) {
            return;
        } else if designate
            && (is_learner || stale_learner || no_part)
            && self.known_epoch(session) == epoch
        {
            let Some(record) = self.record(session).cloned() else {
                return;
            };
            self.be_replica(session, &record, now);
        } else if !is_replica || self.durable.complete.contains_key(session) {
            return;
        } else if from.name != self.record(session).map_or("", |r| r.owner.name.as_str())
            && !self.sole_acknowledger_of(session, epoch)
        {
            // A learner's copy vouches only for what its owner held when it
            // was taken: everything acknowledged only if nothing could be
            // acknowledged in this epoch since (see `offer_learned_copy`).
            return;
        }
        // Both copies are prefixes of the epoch's history, unless this one
        // kept an older epoch's tail that was never acknowledged: keep it
        // only if it holds the owner's whole journal and more (entries the
        // owner acknowledged but did not write before it went down).
        let journal = self.durable.journals.entry(session.to_owned()).or_default();
        if stale_learner || !journal.starts_with(&entries) {
            *journal = entries;
            self.touched(session, 0);
        }
        self.durable.complete.insert(session.to_owned(), epoch);
    }

    /// The record of `session` if it is as its epoch began (a promotion or
    /// a transfer wrote it), not as a replica change in the epoch rewrote it.
    fn record_as_begun(&self, session: &str) -> Option<&SessionRecord> {
        let entry = self.records.entry(&Key::Session(session.to_owned()))?;
        match &entry.value {
            Some(Record::Session(r)) if entry.stamp.version == 0 => Some(r),
            _ => None,
        }
    }

    /// Whether nothing of `epoch` can have been acknowledged unless this
    /// node acknowledged it: it is the replica the record named as the
    /// epoch began, and was not released in it (see [`Durable::released`]).
    fn sole_acknowledger_of(&self, session: &str, epoch: u64) -> bool {
        self.record_as_begun(session)
            .is_some_and(|r| r.epoch == epoch && r.replica == self.id.name)
            && self
                .durable
                .released
                .get(session)
                .is_none_or(|e| *e < epoch)
    }

    /// Whether this node passed its replica rights for `session` on, for
    /// `epoch` or later: that epoch's owner gets no acknowledgements here.
    fn handed_on(&self, session: &str, epoch: u64) -> bool {
        self.durable
            .handed
            .get(session)
            .is_some_and(|h| epoch <= h.served)
    }

    fn own(&mut self, session: &str, epoch: u64, replica: String, now: u64) {
        self.raise_epoch(session, epoch);
        self.durable.complete.remove(session);
        self.durable.learned.remove(session);
        self.roles.insert(
            session.to_owned(),
            Role::Owner(Owning {
                epoch,
                replica,
                replica_len: 0,
                replica_next: 0,
                replica_sent: 0,
                lease_until: 0,
                last_sent: None,
                pending: BTreeMap::new(),
                fenced: false,
                moving: None,
            }),
        );
        self.events.push(Event::Owner {
            session: session.to_owned(),
            epoch,
        });
        self.replicate(session, now, true);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_replicate(
        &mut self,
        owner: NodeId,
        session: String,
        epoch: u64,
        start: u64,
        entries: Vec<JournalEntry>,
        len: u64,
        as_replica: bool,
        sent_at: u64,
        now: u64,
    ) {
        // A learner's copy that reaches the replica it has become since (a
        // late or repeated message): still the replica, still complete.
        let as_replica = as_replica
            || matches!(self.roles.get(&session),
                Some(Role::Replica { epoch: e, owner: o, .. }) if *e == epoch && *o == owner);
        let known = self.known_epoch(&session);
        let owns_now = matches!(self.roles.get(&session), Some(Role::Owner(o)) if o.epoch >= epoch);
        if as_replica && self.handed_on(&session, epoch) {
            return;
        }
        if epoch < known || owns_now {
            self.send(
                owner,
                Message::Stale {
                    session,
                    epoch: known.max(epoch),
                },
            );
            return;
        }
        self.raise_epoch(&session, epoch);
        self.stand_down_below(&session, epoch, now);
        // What this copy has confirmed of this owner's journal at this epoch.
        let confirmed = match self.roles.get(&session) {
            Some(Role::Replica {
                epoch: e,
                owner: o,
                confirmed,
                ..
            }) if *e == epoch && *o == owner => *confirmed,
            Some(Role::Learner {
                epoch: e,
                confirmed,
            }) if *e == epoch => *confirmed,
            _ => 0,
        };
        let confirmed = if start <= confirmed {
            let journal = self.durable.journals.entry(session.clone()).or_default();
            let mut changed = None;
            let sent = entries.len() as u64;
            for (i, entry) in entries.into_iter().enumerate() {
                let at = start as usize + i;
                match journal.get(at) {
                    Some(have) if *have == entry => continue,
                    Some(_) => {
                        journal.truncate(at);
                        journal.push(entry);
                    }
                    None => journal.push(entry),
                }
                changed.get_or_insert(at as u64);
            }
            // Entries past the owner's journal from an older epoch were never
            // acknowledged: the owner's history replaces them.
            if journal.len() as u64 > len && journal[len as usize..].iter().all(|e| e.epoch < epoch)
            {
                journal.truncate(len as usize);
                changed = Some(changed.map_or(len, |c| c.min(len)));
            }
            if let Some(from) = changed {
                self.touched(&session, from);
            }
            if as_replica {
                self.durable.complete.insert(session.clone(), epoch);
                self.durable.learned.remove(&session);
                // Called again by its owner (a replica change called off).
                self.durable.released.remove(&session);
            } else {
                self.durable.complete.remove(&session);
                // Entries always run to the end of the owner's journal.
                self.durable.learned.insert(session.clone(), epoch);
            }
            confirmed.max(start + sent)
        } else {
            confirmed
        };
        let role = if as_replica {
            Role::Replica {
                epoch,
                owner: owner.clone(),
                promise_until: now + self.config.lease_ms + self.config.drift_ms,
                confirmed,
                called: true,
            }
        } else {
            Role::Learner { epoch, confirmed }
        };
        self.roles.insert(session.clone(), role);
        self.send(
            owner,
            Message::ReplicateAck {
                session,
                epoch,
                len: confirmed,
                sent_at,
                replica: as_replica,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_replicate_ack(
        &mut self,
        from: NodeId,
        session: &str,
        epoch: u64,
        len: u64,
        sent_at: u64,
        replica: bool,
        now: u64,
    ) {
        let lease_ms = self.config.lease_ms;
        if let Some(h) = self.handing.get_mut(session)
            && h.to == from
        {
            h.held = len;
            return;
        }
        let journal_len = self.journal_len(session);
        let Some(Role::Owner(o)) = self.roles.get_mut(session) else {
            return;
        };
        if o.epoch != epoch {
            return;
        }
        if replica && from.name == o.replica {
            if o.epoch == 1 && o.lease_until == 0 {
                self.events.push(Event::Started {
                    session: session.to_owned(),
                });
            }
            o.lease_until = o.lease_until.max(sent_at + lease_ms);
            o.replica_len = o.replica_len.max(len.min(journal_len));
            o.replica_next = len.min(journal_len);
            let done: Vec<u64> = o.pending.range(..=o.replica_len).map(|(s, _)| *s).collect();
            for seq in done {
                if let Some(action) = o.pending.remove(&seq) {
                    self.events.push(Event::Acked {
                        session: session.to_owned(),
                        epoch,
                        seq,
                        action,
                    });
                }
            }
        } else if let Some(m) = o.moving.as_mut().filter(|m| m.to == from) {
            m.learner_len = len.min(journal_len);
        }
        self.advance_move(session, now);
    }

    #[allow(clippy::too_many_arguments)]
    fn on_transfer(
        &mut self,
        from: NodeId,
        session: String,
        epoch: u64,
        len: u64,
        replica: String,
        mut record: SessionRecord,
        now: u64,
    ) {
        if matches!(self.roles.get(&session), Some(Role::Owner(o)) if o.epoch == epoch) {
            // A duplicate: already done.
            self.send(from, Message::TransferAck { session, epoch });
            return;
        }
        // Only a copy of the sender's epoch counts: a learner copy left from
        // an older epoch may be as long and differ (the transfer can
        // overtake a lost copy of this epoch's entries).
        let held = match self.roles.get(&session) {
            Some(
                Role::Learner {
                    epoch: e,
                    confirmed,
                }
                | Role::Replica {
                    epoch: e,
                    confirmed,
                    ..
                },
            ) if *e == record.epoch => *confirmed,
            _ => 0,
        };
        if epoch <= self.known_epoch(&session) || held < len {
            return;
        }
        let replica = if replica.is_empty() || replica == self.id.name {
            let candidates: Vec<NodeId> = self
                .replica_candidates()
                .into_iter()
                .filter(|id| *id != from)
                .collect();
            match placement::rank(&session, &candidates).first() {
                Some(id) => id.name.clone(),
                None => return, // nobody to replicate to yet: the sender retries
            }
        } else {
            replica
        };
        // Held even when empty: a restart finds what its previous boot owned
        // by its journal.
        let held = self.durable.journals.contains_key(&session);
        let journal = self.durable.journals.entry(session.clone()).or_default();
        if journal.len() as u64 > len {
            journal.truncate(len as usize);
            self.touched(&session, len);
        } else if !held {
            self.touched(&session, 0);
        }
        record.owner = self.id.clone();
        record.epoch = epoch;
        record.replica = replica.clone();
        self.write_record(&session, record, 0, now);
        let queued = self.outbox.len();
        self.own(&session, epoch, replica, now);
        // The first lease request goes at once (see `Transmit::at_once`).
        let request = self.outbox.split_off(queued);
        self.at_once.extend(request);
        self.send(from, Message::TransferAck { session, epoch });
    }

    fn on_released(&mut self, session: &str, epoch: u64, now: u64) {
        if !self.roles.contains_key(session) {
            // The old replica confirms it let go: the restarted owner's
            // previous boot was designating a learner, which may now take over.
            if self.durable.designating.contains_key(session)
                && self.record(session).is_some_and(|r| r.epoch == epoch)
            {
                self.released.insert(session.to_owned());
            }
            return;
        }
        let Some(Role::Owner(o)) = self.roles.get_mut(session) else {
            return;
        };
        let releasing = o
            .moving
            .as_ref()
            .is_some_and(|m| !m.handoff && m.stage == Stage::Releasing);
        if releasing && epoch == o.epoch {
            self.designate(session, now);
        }
    }

    /// Ends a replica change once the old replica let go (or is gone): the
    /// learner becomes the replica if it is still up and ready; otherwise
    /// the session has no replica and the next change picks another.
    fn designate(&mut self, session: &str, now: u64) {
        let Some(Role::Owner(o)) = self.roles.get(session) else {
            return;
        };
        let Some(m) = o.moving.clone() else {
            return;
        };
        let usable = self.membership.is_ready(&m.to);
        // The learner went away: back to the old replica if it is ready
        // again (the records still name it), else none until the next
        // change. Left without one, an owner that drains away next would
        // strand the session: the old replica let go of it.
        let old = Some(&o.replica)
            .filter(|r| {
                self.membership
                    .by_name(r)
                    .is_some_and(|id| self.membership.is_ready(id))
            })
            .cloned();
        self.durable.designating.remove(session);
        let Some(Role::Owner(o)) = self.roles.get_mut(session) else {
            return;
        };
        o.moving = None;
        o.fenced = false;
        // The old replica's promises are void, and so is the lease they gave.
        o.lease_until = o.lease_until.min(now);
        // The old replica, called again from the start, is complete again.
        o.switch_replica(if usable {
            m.to.name.clone()
        } else {
            old.unwrap_or_default()
        });
        o.last_sent = None;
        if !usable {
            return;
        }
        let Some(mut record) = self.record(session).cloned() else {
            return;
        };
        let version = self
            .records
            .entry(&Key::Session(session.to_owned()))
            .map_or(0, |e| e.stamp.version + 1);
        record.replica = m.to.name.clone();
        self.write_record(session, record, version, now);
        self.replicate(session, now, true);
    }

    // --- time ---------------------------------------------------------------

    /// Advances to `now`: heartbeats, record sync, failure detection,
    /// lease renewal, promotion, drain progress.
    pub fn tick(&mut self, now: u64) {
        for change in self.membership.tick(now) {
            self.changed(change);
        }
        if self
            .last_heartbeat
            .is_none_or(|t| now >= t + self.config.heartbeat_ms)
        {
            self.heartbeat(now);
            // Journals this node neither owns nor replicates. Both maps are
            // sorted by session: one merged walk, not a lookup per journal.
            let mut roles = self.roles.iter().peekable();
            let copies: Vec<(String, bool)> = self
                .durable
                .journals
                .keys()
                .filter_map(|s| {
                    while roles.next_if(|(r, _)| *r < s).is_some() {}
                    match roles.peek() {
                        Some((r, role)) if *r == s => {
                            matches!(role, Role::Learner { .. }).then(|| (s.clone(), false))
                        }
                        _ => Some((s.clone(), true)),
                    }
                })
                .collect();
            for (session, orphan) in copies {
                if orphan {
                    self.restore(&session, now);
                }
                self.offer_learned_copy(&session, now);
            }
            self.records.gc(now, self.config.tombstone_ttl_ms);
        }
        // Moves under way count against `max_moves`, and so do those this
        // tick starts.
        self.moves_started = self
            .roles
            .values()
            .filter(|r| matches!(r, Role::Owner(o) if o.moving.is_some()))
            .count();
        for session in self.due(now) {
            self.tick_session(&session, now);
        }
        if let Some(deadline) = self.draining
            && !self.drained
            && (self.roles.is_empty() || now >= deadline)
        {
            // Done when nothing is owned or replicated here and no record
            // still names this node: a lost `Released` or `TransferAck` is
            // asked again until the owner's new record arrives. A record
            // naming a previous boot as owner waits too: its journal here
            // goes to the replica until the replica takes over.
            let named_here = self
                .records
                .iter()
                .filter(|(key, record)| match (key, record) {
                    (Key::Session(s), Record::Session(r)) => {
                        (r.replica == self.id.name || r.owner.name == self.id.name)
                            && !self.roles.contains_key(s)
                    }
                    _ => false,
                })
                .count();
            let left = self.roles.len() + named_here;
            // Nothing here is only known once every peer's records arrived.
            let informed = self
                .membership
                .up()
                .all(|(id, _)| self.synced_from.contains(id));
            if (left == 0 && informed) || now >= deadline {
                self.drained = true;
                self.events.push(Event::Drained { left });
            }
        }
    }

    fn heartbeat(&mut self, now: u64) {
        self.last_heartbeat = Some(now);
        let info = self.info();
        let peers: Vec<NodeId> = self.peers.iter().cloned().collect();
        for peer in peers {
            self.send(peer.clone(), Message::Heartbeat(info.clone()));
            if self.membership.is_up(&peer)
                && let Some((entries, upto)) = self.records.delta_for(&peer)
            {
                self.send(peer, Message::Delta { entries, upto });
            }
        }
    }

    fn changed(&mut self, change: Change) {
        match &change {
            Change::Up(id) => self.records.add_peer(id.clone()),
            Change::Down(id) => {
                self.records.remove_peer(id);
                // Keep calling a silent node (a partition heals), but not a
                // boot that a newer one of the same name replaced.
                if self.peers.iter().any(|p| p.name == id.name && p != id) {
                    self.peers.remove(id);
                }
            }
        }
        self.events.push(Event::Membership(change));
    }

    /// The sessions a tick has something to do for: a lease to renew, a
    /// move to start or advance, a replica's decision to make. The others
    /// (most of them, most of the time) are not visited: a node holding
    /// thousands ticks every 10 ms.
    fn due(&self, now: u64) -> Vec<String> {
        // Per replica name (a handful), whether it is leaving.
        let mut leaving: BTreeMap<&str, bool> = BTreeMap::new();
        // Owners waiting for a move slot: as many as are free (none frees
        // up within the tick), not all of them: a draining node would
        // otherwise visit every session it still owns on every tick.
        let mut free = self.config.max_moves.saturating_sub(self.moves_started);
        let mut due = Vec::new();
        for (session, role) in &self.roles {
            let is_due = match role {
                Role::Owner(o) if self.renew_due(o, now) || o.moving.is_some() => true,
                Role::Owner(o) => {
                    let waiting = free > 0
                        && (self.draining.is_some()
                            || *leaving
                                .entry(&o.replica)
                                .or_insert_with(|| self.replica_leaving(&o.replica)));
                    free -= usize::from(waiting);
                    waiting
                }
                Role::Replica { promise_until, .. } => {
                    now > *promise_until
                        || self.handing.contains_key(session)
                        || self.durable.handed.get(session).is_some_and(|h| !h.done)
                }
                Role::Learner { .. } => false,
            };
            if is_due {
                due.push(session.clone());
            }
        }
        due
    }

    fn renew_due(&self, o: &Owning, now: u64) -> bool {
        o.last_sent
            .is_none_or(|t| now >= t + self.config.lease_ms / 4)
    }

    /// Whether an owner with replica `replica` must find another: none,
    /// evicted, or up but no longer ready (draining).
    fn replica_leaving(&self, replica: &str) -> bool {
        replica.is_empty()
            || self.is_evicted(replica)
            || self
                .membership
                .by_name(replica)
                .and_then(|id| self.membership.up().find(|(n, _)| *n == id))
                .is_some_and(|(_, info)| !info.ready)
    }

    fn tick_session(&mut self, session: &str, now: u64) {
        match self.roles.get(session) {
            Some(Role::Owner(o)) => {
                if self.renew_due(o, now) {
                    self.replicate(session, now, true);
                }
                self.plan_move(session, now);
                self.advance_move(session, now);
            }
            Some(&Role::Replica {
                epoch,
                ref owner,
                promise_until,
                called,
                ..
            }) => {
                let owner = owner.clone();
                let decided = self.handing.contains_key(session)
                    || self.durable.handed.get(session).is_some_and(|h| !h.done);
                if decided {
                    // Decided: the old owner gets no more acknowledgements.
                    self.hand_on(session, epoch, now);
                } else if now > promise_until
                    && (!called || !self.membership.is_up(&owner))
                    && owner != self.id
                    && self.durable.complete.contains_key(session)
                {
                    if self.draining.is_some() {
                        // About to leave: pass the rights on rather than
                        // take ownership this node could not keep.
                        self.hand_on(session, epoch, now);
                    } else {
                        self.promote(session, epoch, now);
                    }
                }
            }
            Some(Role::Learner { .. }) | None => {}
        }
    }

    /// A draining replica whose owner is down passes the session on
    /// instead of taking ownership it could not keep: a learner copy to a
    /// ready node, then a transfer to it with a higher epoch, retried until
    /// acknowledged (or the records show the epoch taken). Only until the
    /// first transfer went out may another node be picked (with a fresh
    /// epoch), when the target goes away: after it, the target may own the
    /// session, and it alone gets it again.
    fn hand_on(&mut self, session: &str, epoch: u64, now: u64) {
        let journal = self
            .durable
            .journals
            .get(session)
            .cloned()
            .unwrap_or_default();
        let len = journal.len() as u64;
        let offered = self.durable.handed.get(session).map_or(0, |h| h.offered);
        let seen = self.record(session).map_or(0, |r| r.epoch);
        if offered > 0 && seen.max(self.known_epoch(session)) >= offered {
            // The records (or an answer) show the epoch offered, or a later
            // one: the transfer landed though its acknowledgement did not.
            self.passed_on(session, offered);
            return;
        }
        let candidates = self.replica_candidates();
        let current = self.handing.get(session).cloned();
        // Once a transfer went out, its target may own the session already
        // (its acknowledgement lost, or this node restarted since): offered
        // to another node too, the session would have two lines of owners.
        // So only that target gets it again, at the same epoch, once it is
        // up (a new boot of it gets the learner copy again first).
        let pinned = self.durable.offered_to.get(session).cloned();
        let handing = match (current, pinned) {
            (Some(h), Some(to)) if h.to.name == to && self.membership.is_up(&h.to) => h,
            (_, Some(to)) => {
                let Some(to) = self
                    .membership
                    .by_name(&to)
                    .filter(|id| self.membership.is_up(id))
                    .cloned()
                else {
                    return;
                };
                Handing {
                    to,
                    held: 0,
                    epoch: offered,
                }
            }
            (Some(h), None) if candidates.contains(&h.to) => h,
            (current, None) => {
                let owner = self.record(session).map(|r| r.owner.name.clone());
                let eligible: Vec<NodeId> = candidates
                    .into_iter()
                    .filter(|id| Some(&id.name) != owner.as_ref())
                    .collect();
                let Some(to) = placement::rank(session, &eligible)
                    .first()
                    .map(|id| (*id).clone())
                else {
                    return;
                };
                // Past its own offers, and past the epochs it knows as a
                // promotion would be.
                let own = current.map_or(0, |h| h.epoch).max(offered) + 1;
                let known = epoch.max(self.known_epoch(session)) + self.own_epoch_step();
                Handing {
                    to,
                    held: 0,
                    epoch: own.max(known),
                }
            }
        };
        // From here on the old owner gets no acknowledgements, so the journal
        // passed on is the whole acknowledged one.
        self.durable.handed.insert_if_absent(session, || Handed {
            served: epoch,
            ..Handed::default()
        });
        self.handing.insert(session.to_owned(), handing.clone());
        if handing.held < len {
            self.send(
                handing.to,
                Message::Replicate {
                    session: session.to_owned(),
                    epoch,
                    from: handing.held,
                    entries: journal[handing.held as usize..].to_vec(),
                    len,
                    replica: false,
                    sent_at: now,
                },
            );
            return;
        }
        // A transfer going out may land: from here there is no turning back.
        self.durable
            .handed
            .update(session, |h| h.offered = h.offered.max(handing.epoch));
        self.durable
            .offered_to
            .insert(session.to_owned(), handing.to.name.clone());
        if let Some(record) = self.record(session).cloned() {
            self.send(
                handing.to,
                Message::Transfer {
                    session: session.to_owned(),
                    epoch: handing.epoch,
                    len,
                    replica: String::new(),
                    record,
                },
            );
        }
    }

    /// A draining replica's transfer landed (at `epoch`): this node is no
    /// one's replica for the session any more, and the owner it served
    /// gets no acknowledgements here.
    fn passed_on(&mut self, session: &str, epoch: u64) {
        self.roles.remove(session);
        self.handing.remove(session);
        self.durable.complete.remove(session);
        self.durable.offered_to.remove(session);
        self.durable.handed.update(session, |h| h.done = true);
        self.raise_epoch(session, epoch);
    }

    /// The replica takes over: a higher epoch, a replica of its own.
    fn promote(&mut self, session: &str, epoch: u64, now: u64) {
        let epoch = epoch.max(self.known_epoch(session)) + self.own_epoch_step();
        let Some(mut record) = self.record(session).cloned() else {
            return;
        };
        let candidates = self.replica_candidates();
        let Some(replica) = placement::rank(session, &candidates)
            .into_iter()
            .find(|id| *id != &record.owner)
            .cloned()
        else {
            return; // Nobody to replicate to: wait.
        };
        record.owner = self.id.clone();
        record.epoch = epoch;
        record.replica = replica.name.clone();
        self.write_record(session, record, 0, now);
        self.durable.journals.entry(session.to_owned()).or_default();
        self.own(session, epoch, replica.name, now);
    }

    /// Sends the replica (and a learner, if any) what it lacks; `renew`
    /// sends even when nothing is new, to extend the lease.
    fn replicate(&mut self, session: &str, now: u64, renew: bool) {
        let Some(Role::Owner(o)) = self.roles.get(session) else {
            return;
        };
        let len = self.journal_len(session);
        let mut out = Vec::new();
        let replica = self.membership.by_name(&o.replica).cloned();
        if let Some(replica) = replica
            && (renew || o.replica_sent < len)
        {
            out.push((replica, o.replica_next, true));
        }
        // After a handoff's fence, the transfer may have gone before the
        // learner acknowledged the last entries: renewals resend them.
        if let Some(m) = &o.moving
            && (renew || m.learner_sent < len)
            && (m.stage == Stage::Syncing || m.handoff && renew && m.learner_len < len)
            && m.to.name != o.replica
        {
            out.push((m.to.clone(), m.learner_len, false));
        }
        let epoch = o.epoch;
        if let Some(Role::Owner(o)) = self.roles.get_mut(session) {
            for (_, _, replica) in &out {
                match (*replica, o.moving.as_mut()) {
                    // A message to the replica renews the lease.
                    (true, _) => {
                        o.last_sent = Some(now);
                        o.replica_sent = len;
                    }
                    (false, Some(m)) => m.learner_sent = len,
                    (false, None) => {}
                }
            }
        }
        let journal = self
            .durable
            .journals
            .get(session)
            .map_or(&[][..], Vec::as_slice);
        for (to, from, replica) in out {
            let entries = journal.get(from as usize..).unwrap_or_default().to_vec();
            self.outbox.push((
                to,
                Message::Replicate {
                    session: session.to_owned(),
                    epoch,
                    from,
                    entries,
                    len,
                    replica,
                    sent_at: now,
                },
            ));
        }
    }

    /// A session whose journal this node holds without a part: if its
    /// previous boot owned it, send the journal to the replica, which may
    /// hold less (it may never have been called).
    fn restore(&mut self, session: &str, now: u64) {
        // Called for every journal held here without a part, on every
        // heartbeat: nothing is cloned until it is one to send.
        let Some(record) = self.record(session) else {
            return;
        };
        if !(record.owner.name == self.id.name && record.owner != self.id) {
            // Not a previous boot's session.
            self.durable.designating.remove(session);
            return;
        }
        let record = record.clone();
        let learner_gone = self
            .durable
            .designating
            .get(session)
            .is_none_or(|learner| self.is_evicted(learner));
        if self.is_evicted(&record.replica) && learner_gone {
            // The replica is gone for good, and so is the learner the
            // previous boot was making replica, if any: this store holds
            // every entry the previous boot acknowledged, so it takes the
            // session back (and the half-done replica change is over).
            self.durable.designating.remove(session);
            self.promote(session, record.epoch, now);
            return;
        }
        let Some(journal) = self.durable.journals.get(session).cloned() else {
            return;
        };
        // Mid replica change: once the old replica confirmed its release,
        // the learner is the one to complete; never both.
        let (to, designate) = match self.durable.designating.get(session) {
            Some(learner) if self.released.contains(session) => (learner.clone(), true),
            _ => (record.replica.clone(), false),
        };
        if let Some(to) = self.membership.by_name(&to).cloned() {
            if !designate && self.durable.designating.contains_key(session) {
                // Finish the release the previous boot began; the answer
                // says whether the old replica let go.
                self.send(
                    to,
                    Message::Release {
                        session: session.to_owned(),
                        epoch: record.epoch,
                    },
                );
                return;
            }
            self.send(
                to,
                Message::Restore {
                    session: session.to_owned(),
                    epoch: record.epoch,
                    entries: journal,
                    designate,
                },
            );
        }
    }

    /// A learner's copy of a session whose owner is down offers itself to
    /// the replica, in case the owner never called it (the replica was
    /// named in a promotion while cut off, say, and the owner drained away
    /// or crashed for good): a replica holding nothing could never take
    /// over. The copy held the owner's whole journal at some moment of the
    /// epoch, so it holds everything acknowledged before the epoch; and the
    /// replica takes it only if it is the epoch's first and acknowledged
    /// nothing (not complete), so that nothing was acknowledged since.
    fn offer_learned_copy(&mut self, session: &str, now: u64) {
        let Some(record) = self.record_as_begun(session) else {
            self.copies_offered.remove(session);
            return;
        };
        let no_other_part = match self.roles.get(session) {
            None => true,
            Some(Role::Learner { epoch, .. }) => *epoch == record.epoch,
            Some(_) => false,
        };
        let offer = no_other_part
            && self.durable.learned.get(session) == Some(&record.epoch)
            && record.owner.name != self.id.name
            && record.replica != self.id.name
            && !self.membership.is_up(&record.owner);
        let epoch = record.epoch;
        let to = self
            .membership
            .by_name(&record.replica)
            .filter(|id| self.membership.is_up(id))
            .cloned();
        let (Some(to), true) = (to, offer) else {
            self.copies_offered.remove(session);
            return;
        };
        if self
            .copies_offered
            .get(session)
            .is_some_and(|t| now < t + self.config.lease_ms)
        {
            return;
        }
        let Some(entries) = self.durable.journals.get(session).cloned() else {
            return;
        };
        self.copies_offered.insert(session.to_owned(), now);
        self.send(
            to,
            Message::Restore {
                session: session.to_owned(),
                epoch,
                entries,
                designate: false,
            },
        );
    }

    /// Starts a handoff (draining) or a replica change (the replica drains).
    fn plan_move(&mut self, session: &str, now: u64) {
        let Some(Role::Owner(o)) = self.roles.get(session) else {
            return;
        };
        if o.moving.is_some() {
            return;
        }
        if self.moves_started >= self.config.max_moves {
            return;
        }
        let handoff = self.draining.is_some();
        if !handoff && !self.replica_leaving(&o.replica) {
            return;
        }
        self.moves_started += 1;
        let replica = o.replica.clone();
        let to = if handoff {
            // Spread over the newest nodes; the replica itself only if it
            // is the one candidate (it holds the session already).
            let all = self.owner_candidates();
            let others: Vec<(&NodeId, u32)> = all
                .iter()
                .filter(|(id, _)| id.name != replica)
                .map(|(id, l)| (id, *l))
                .collect();
            let all: Vec<(&NodeId, u32)> = all.iter().map(|(id, l)| (id, *l)).collect();
            placement::drain_target(session, if others.is_empty() { &all } else { &others })
                .cloned()
        } else {
            let candidates: Vec<NodeId> = self
                .replica_candidates()
                .into_iter()
                .filter(|id| id.name != replica)
                .collect();
            placement::rank(session, &candidates)
                .first()
                .map(|id| (*id).clone())
        };
        let Some(to) = to else {
            return;
        };
        let warm = !(handoff && self.config.await_warm && to.name != replica);
        if handoff {
            self.events.push(Event::HandingOff {
                session: session.to_owned(),
                to: to.clone(),
            });
        }
        if let Some(Role::Owner(o)) = self.roles.get_mut(session) {
            o.moving = Some(Move {
                to,
                handoff,
                learner_len: 0,
                learner_sent: 0,
                handed_over: false,
                stage: Stage::Syncing,
                warm_since: warm.then_some(now),
            });
        }
        self.replicate(session, now, false);
    }

    fn advance_move(&mut self, session: &str, now: u64) {
        let journal_len = self.journal_len(session);
        let eager = match self.roles.get(session) {
            Some(Role::Owner(o)) => self.transfer_with_handover(o),
            _ => false,
        };
        let Some(Role::Owner(o)) = self.roles.get_mut(session) else {
            return;
        };
        let Some(m) = o.moving.as_mut() else {
            return;
        };
        let was_fenced = o.fenced;
        // A target that went down or started draining before the transfer:
        // start over with another, and let a draining one drop its copy.
        // After the transfer went out it may own the session already, so
        // this node stays fenced; the session fails over if need be.
        let target_ready = self.membership.is_ready(&m.to);
        if !target_ready && m.stage == Stage::Syncing {
            let to = m.to.clone();
            let epoch = o.epoch;
            let handoff = m.handoff;
            o.moving = None;
            o.fenced = false;
            if handoff {
                self.events.push(Event::HandoffCalledOff {
                    session: session.to_owned(),
                    epoch,
                });
            }
            if self.membership.is_up(&to) {
                self.send(
                    to,
                    Message::Release {
                        session: session.to_owned(),
                        epoch,
                    },
                );
            }
            return;
        }
        match (m.handoff, m.stage) {
            (true, Stage::Syncing) if m.to.name == o.replica => {
                // The replica takes over: it holds the session; no learner
                // copy, and no handover (it is the next epoch's owner).
                o.fenced = true;
                if o.replica_len >= journal_len {
                    m.stage = Stage::Transferring;
                }
            }
            (true, Stage::Syncing) => {
                // Quiet: the replica holds every entry (no client waits for
                // one) and the learner was sent every entry. The transfer
                // follows those entries on the same stream, so it can go at
                // once; a target that lacks them ignores it, and it goes
                // again. The fence waits for such a moment for a heartbeat
                // at most, then fences once the learner holds every entry.
                let sent_all = o.replica_len >= journal_len && m.learner_sent >= journal_len;
                let learner_holds_all = m.learner_len >= journal_len;
                let fence = m.warm_since.is_some_and(|at| {
                    sent_all || learner_holds_all && now >= at + self.config.heartbeat_ms
                });
                if o.fenced || fence {
                    o.fenced = true;
                    // A lease held means the replica acknowledged this epoch
                    // lately: its store knows the epoch and holds every entry
                    // of it, so it may serve the next owner (or promote, if
                    // that one never calls).
                    if sent_all && o.lease_until > now {
                        m.stage = if eager {
                            Stage::Transferring
                        } else {
                            Stage::Handover
                        };
                    }
                }
            }
            (false, Stage::Syncing) => {
                // As for a handoff: fence once caught up, so that the
                // learner holds every entry when it is made replica.
                if m.learner_len >= journal_len {
                    if o.fenced {
                        m.stage = Stage::Releasing;
                        self.durable
                            .designating
                            .insert(session.to_owned(), m.to.name.clone());
                    }
                    o.fenced = true;
                }
            }
            (_, Stage::Releasing | Stage::Handover | Stage::Transferring) => {}
        }
        let (to, stage, handoff, epoch) = (m.to.clone(), m.stage, m.handoff, o.epoch);
        let handed_over = m.handed_over;
        let replica = o.replica.clone();
        if handoff && o.fenced && !was_fenced {
            self.events.push(Event::Fenced {
                session: session.to_owned(),
                epoch,
                len: journal_len,
                to: to.clone(),
            });
        }
        // Told alongside the transfer until it acknowledges (see `WIRE`).
        let hand_over = match (handoff, stage) {
            (true, Stage::Handover) => true,
            (true, Stage::Transferring) => !handed_over && replica != to.name,
            _ => false,
        };
        if hand_over && let Some(replica) = self.membership.by_name(&replica).cloned() {
            self.send(
                replica,
                Message::Handover {
                    session: session.to_owned(),
                    epoch: epoch + 1,
                    owner: to.clone(),
                },
            );
        }
        match (handoff, stage) {
            (true, Stage::Transferring) => {
                let record = self.record(session).cloned();
                if let Some(record) = record {
                    // Keep the replica unless it is leaving too (then the new
                    // owner's own replica change moves it) or is the new
                    // owner (then it picks one; empty means "choose").
                    let replica = if replica == to.name {
                        String::new()
                    } else {
                        replica
                    };
                    self.send(
                        to,
                        Message::Transfer {
                            session: session.to_owned(),
                            epoch: epoch + 1,
                            len: journal_len,
                            replica,
                            record,
                        },
                    );
                }
            }
            (true, Stage::Handover) => {}
            (false, Stage::Releasing) if replica.is_empty() || self.is_evicted(&replica) => {
                self.designate(session, now);
            }
            (false, Stage::Releasing) => {
                if let Some(old) = self.membership.by_name(&replica).cloned() {
                    self.send(
                        old,
                        Message::Release {
                            session: session.to_owned(),
                            epoch,
                        },
                    );
                }
            }
            _ => self.replicate(session, now, false),
        }
    }
}
