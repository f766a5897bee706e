//! Who is up: heartbeats in, node up / node down out, with a bounded
//! detection time. A node is `name` + `boot`: a restarted process is a new
//! node, so nothing promised by its previous life is mistaken for its own.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A node's identity: its stable name and a nonce drawn at every start.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// Stable across restarts (host name, pod name).
    pub name: String,
    /// Random per process start.
    pub boot: u64,
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{:x}", self.name, self.boot & 0xffff)
    }
}

/// What a node advertises in each heartbeat.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The host's version: new sessions go to the newest.
    pub host_version: u32,
    /// Sessions it could still take.
    pub capacity: u32,
    /// Sessions it owns now (for spreading load).
    pub load: u32,
    /// False while starting or draining: it takes no new sessions.
    pub ready: bool,
}

/// What the membership view tells its node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A node was heard from for the first time, or again after being down.
    Up(NodeId),
    /// A node went silent for longer than the detection time, or was
    /// replaced by a newer boot of the same name.
    Down(NodeId),
}

#[derive(Clone, Debug)]
struct Peer {
    info: NodeInfo,
    heard: u64,
    up: bool,
}

/// One node's view of the others.
#[derive(Clone, Debug)]
pub struct Membership {
    detect_ms: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl Membership {
    /// A view in which a node that is silent for `detect_ms` is down.
    pub fn new(detect_ms: u64) -> Self {
        Membership {
            detect_ms,
            peers: BTreeMap::new(),
        }
    }

    /// A heartbeat from `from` at `now`.
    pub fn heard(&mut self, from: &NodeId, info: NodeInfo, now: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        // A newer boot of the same name replaces the old one at once.
        for (id, peer) in &mut self.peers {
            if id.name == from.name && id.boot != from.boot && peer.up {
                peer.up = false;
                changes.push(Change::Down(id.clone()));
            }
        }
        let peer = self.peers.entry(from.clone()).or_insert(Peer {
            info: info.clone(),
            heard: now,
            up: false,
        });
        peer.info = info;
        peer.heard = now;
        if !peer.up {
            peer.up = true;
            changes.push(Change::Up(from.clone()));
        }
        changes
    }

    /// Marks the silent as down.
    pub fn tick(&mut self, now: u64) -> Vec<Change> {
        let mut changes = Vec::new();
        for (id, peer) in &mut self.peers {
            if peer.up && now.saturating_sub(peer.heard) > self.detect_ms {
                peer.up = false;
                changes.push(Change::Down(id.clone()));
            }
        }
        changes
    }

    /// Whether `id` is up in this view.
    pub fn is_up(&self, id: &NodeId) -> bool {
        self.peers.get(id).is_some_and(|p| p.up)
    }

    /// Whether `id` is up and takes sessions.
    pub fn is_ready(&self, id: &NodeId) -> bool {
        self.peers.get(id).is_some_and(|p| p.up && p.info.ready)
    }

    /// The nodes up, with what they advertised.
    pub fn up(&self) -> impl Iterator<Item = (&NodeId, &NodeInfo)> {
        self.peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(id, p)| (id, &p.info))
    }

    /// The current boot of the node named `name`, if up.
    pub fn by_name(&self, name: &str) -> Option<&NodeId> {
        self.up().map(|(id, _)| id).find(|id| id.name == name)
    }
}
