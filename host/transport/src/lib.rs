//! The cluster's wire: QUIC between nodes, with mutual TLS.
//!
//! - [`certs`]: a cluster certificate authority and node certificates, for
//!   development and tests (`baton certs`); production brings its own PEM
//!   files, issued by the operator's CA.
//! - [`tls`]: a node's [`Identity`] (its name, certificate chain, key and
//!   the cluster CA) and the rustls configurations built from it: TLS 1.3
//!   only, one crypto provider (ring), client certificates required and
//!   checked against the cluster CA, no 0-RTT, wire versions by ALPN.
//! - [`endpoint`]: [`Transport`], one quinn endpoint per node that dials and
//!   accepts; a peer is known by the name its verified certificate carries.
//!   Identities reload without a restart.
//! - [`mesh`]: [`Mesh`], the tokio driver of the cluster core
//!   ([`baton_cluster::ClusterNode`]): discovery from seeds, one stream per
//!   lane (control, records, journal) with bounded queues; journal writes
//!   before acknowledgements; tunnels for forwarding to a session's owner.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod certs;
pub mod endpoint;
pub mod mesh;
pub mod tls;

pub use endpoint::{Peer, Transport};
pub use mesh::{
    AppendError, Appended, DurableStore, Mesh, MeshConfig, Replication, Stamped, Tunnel,
    Unconfirmed, Unpersisted, WriteDone,
};
pub use tls::{Identity, WIRE_VERSIONS, wire_version_number};

/// Everything that can go wrong on the wire, said so that an operator knows
/// what to fix.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// A certificate or key that cannot be used.
    #[error("certificate problem: {0}")]
    Certificate(String),
    /// The TLS configuration was refused.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// Dialing failed before any packet went out.
    #[error("could not dial: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The handshake or the connection failed (refused certificate, no
    /// common wire version, peer gone).
    #[error("connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The socket.
    #[error("socket: {0}")]
    Io(#[from] std::io::Error),
}
