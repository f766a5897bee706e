//! The cluster's brain, without I/O: everything that decides who owns what.
//!
//! Every part is a state machine that takes the time, messages and inputs
//! and returns messages and events (after quinn-proto and raft-rs): no
//! sockets, no tasks, no clock of its own. The transport drives it for real;
//! [`sim`] drives many of them in one deterministic simulation that injects
//! loss, duplication, reordering, partitions, pauses, crashes, drains and
//! clock drift, and checks the guarantees after every step.
//!
//! - [`crdt`]: the delta-state map of replicated records (sessions, modules).
//! - [`membership`]: node up / down from heartbeats; identity = name + boot.
//! - [`placement`]: rendezvous hashing for new sessions and drain targets.
//! - [`node`]: leases, replication, promotion, handoff: [`ClusterNode`].
//! - [`sim`]: the simulation, its fault schedule and its checker.
#![warn(missing_docs)]

pub mod crdt;
pub mod membership;
pub mod node;
pub mod placement;
pub mod sim;

pub use membership::NodeId;
pub use node::{ClusterNode, Config, Event, Message};
