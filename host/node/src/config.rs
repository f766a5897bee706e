//! A node's configuration: plain data with defaults that work on a laptop.

use std::net::SocketAddr;
use std::path::PathBuf;

use baton_runtime::Limits;
pub use baton_transport::Replication;
use serde::{Deserialize, Serialize};

/// Everything a node is told. Every field has a default, so a node runs
/// with no configuration at all; `baton serve` fills it from a TOML file,
/// `BATON_*` environment variables and flags, in that order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    /// Where players connect (HTTP + WebSocket).
    pub listen: SocketAddr,
    /// Where management calls go (publish modules, create and list
    /// sessions, metrics); the player address if absent.
    pub admin_listen: Option<SocketAddr>,
    /// The node's data directory: its store and compiled-module cache.
    pub data_dir: PathBuf,
    /// The bearer token management calls need. If absent, a random one is
    /// made at startup and written to `<data_dir>/operator-token`.
    pub operator_token: Option<String>,
    /// Publish the example games (minotaur, connect-four) at startup.
    pub example_games: bool,
    /// Sessions this node holds at most, live or hibernated.
    pub max_sessions: usize,
    /// Live instances at most (pool slots); idle sessions hibernate and
    /// free theirs. When all are taken, calls needing one get a 503.
    pub max_live_instances: u32,
    /// Largest module upload, in bytes.
    pub max_module_bytes: usize,
    /// Largest WebSocket message or HTTP body from a client, in bytes.
    pub max_message_bytes: usize,
    /// Actions per second one connection may send (a burst of as many is allowed).
    pub actions_per_second: u32,
    /// Messages queued for one slow client before it is disconnected.
    pub client_queue: usize,
    /// A session idle this long is hibernated to its snapshot (ms).
    pub hibernate_after_ms: u64,
    /// Journal entries between background snapshots of a session.
    pub snapshot_every: u64,
    /// Event batches kept per session for clients that reconnect.
    pub resume_window: usize,
    /// Limits for new sessions (fuel, memory, output, backstop).
    pub session_limits: Limits,
    /// Versions new sessions start on when they name only a game, as
    /// `name@version` (e.g. `["minotaur@1.0.0"]`); a game not listed
    /// starts on its newest published version.
    pub default_versions: Vec<String>,
    /// Calls an upgraded session runs on trial: if the new version fails
    /// one of them, the session goes back to its old version.
    pub upgrade_trial_calls: u64,
    /// Run as one node of a cluster; alone if absent.
    pub cluster: Option<ClusterConfig>,
}

/// How a node joins its cluster (see the operator guide in the README).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// UDP address for the other nodes (QUIC with mutual TLS).
    pub listen: SocketAddr,
    /// Nodes to dial, as `host:port`; a DNS name may resolve to many
    /// addresses (a Kubernetes headless service, Swarm's `tasks.<service>`).
    pub seeds: Vec<String>,
    /// This node's certificate chain (PEM); its DNS name is the node's name.
    pub cert: PathBuf,
    /// Its private key (PEM).
    pub key: PathBuf,
    /// The cluster CA's certificate (PEM): peers must hold one it issued.
    pub ca: PathBuf,
    /// The node's name: must be the DNS name in `cert`.
    pub name: String,
    /// `replicated`: an action is acknowledged once on the replica's disk
    /// too; `local`: once on the owner's disk.
    pub replication: Replication,
    /// A node silent this long is down (ms).
    pub detect_ms: u64,
    /// How long one replica acknowledgement keeps an owner's lease (ms).
    pub lease_ms: u64,
    /// Bound on clock drift between two nodes over one lease (ms).
    pub drift_ms: u64,
    /// Heartbeat and record gossip period (ms).
    pub heartbeat_ms: u64,
    /// On SIGTERM, how long the node keeps handing sessions off before it
    /// exits anyway (ms); the sessions left then fail over to their
    /// replicas. Keep the orchestrator's grace period longer than this.
    pub drain_deadline_ms: u64,
    /// Sessions a node hands off (or re-replicates) at once; the rest keep
    /// serving until one is done. Too many at once and the node, busy
    /// moving, lets leases lapse (those sessions then fail over instead).
    pub max_moves: usize,
    /// This host's version: new sessions go to the newest.
    pub host_version: u32,
    /// The wire versions (ALPN) to offer, newest first; empty for all this
    /// host speaks. Only to stand in for an older host in tests.
    #[doc(hidden)]
    pub wire_versions: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        let core = baton_cluster::Config::default();
        ClusterConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7500)),
            seeds: Vec::new(),
            cert: PathBuf::from("certs/node.pem"),
            key: PathBuf::from("certs/node.key"),
            ca: PathBuf::from("certs/ca.pem"),
            name: String::new(),
            replication: Replication::Replicated,
            detect_ms: core.detect_ms,
            lease_ms: core.lease_ms,
            drift_ms: core.drift_ms,
            heartbeat_ms: core.heartbeat_ms,
            drain_deadline_ms: 20_000,
            max_moves: core.max_moves,
            host_version: 1,
            wire_versions: Vec::new(),
        }
    }
}

impl ClusterConfig {
    /// The protocol core's timings.
    pub fn core(&self) -> baton_cluster::Config {
        baton_cluster::Config {
            heartbeat_ms: self.heartbeat_ms,
            detect_ms: self.detect_ms,
            lease_ms: self.lease_ms,
            drift_ms: self.drift_ms,
            drain_deadline_ms: self.drain_deadline_ms,
            await_warm: true,
            max_moves: self.max_moves.max(1),
            ..baton_cluster::Config::default()
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            admin_listen: None,
            data_dir: PathBuf::from("baton-data"),
            operator_token: None,
            example_games: true,
            max_sessions: 20_000,
            max_live_instances: 2000,
            max_module_bytes: 16 << 20,
            max_message_bytes: 64 << 10,
            actions_per_second: 20,
            client_queue: 256,
            hibernate_after_ms: 60_000,
            snapshot_every: 64,
            resume_window: 512,
            session_limits: Limits::default(),
            default_versions: Vec::new(),
            upgrade_trial_calls: 100,
            cluster: None,
        }
    }
}
