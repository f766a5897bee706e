//! One Baton node: rule modules and live sessions, served to players over
//! HTTP and WebSocket, every acknowledged action durable in the node's store.
//!
//! [`serve`] takes the listeners and a shutdown future (so tests bind port 0
//! and stop it cleanly); `baton serve` wires it to config, signals and logs.
//!
//! # Layout
//!
//! - `config`: [`NodeConfig`], every field with a working default.
//! - `node`: [`Node`], the core: modules, sessions, the durable call path
//!   (apply under the session's lock, group-commit the journal entry, then
//!   acknowledge and publish), recovery from snapshot + journal, ticks at the
//!   time the rules asked, hibernation of idle sessions.
//! - `api`: the HTTP routes and the player WebSocket; parses client input
//!   once, at the edge.
//! - `relay`: a player's WebSocket to a session owned elsewhere, relayed
//!   and following the session when it moves.
//! - `cluster`: the node as a cluster member: joining the mesh, writing
//!   the journals it replicates, taking over sessions it comes to own, and
//!   forwarding to other nodes over tunnels.
//! - `handoff`: the host's side of a handoff on drain: warming the target
//!   with a snapshot before the fence, the memory hash at the fence, and
//!   how the session arrived on its new owner (exact? cutover time?).
//! - `snapshots`: sealing a snapshot with the node's bookkeeping, and
//!   shipping each session's checkpoints to its replica (deltas, or whole
//!   to a new replica), one QUIC stream per transfer.
//! - `error`: [`NodeError`] and its HTTP mapping.
//! - `metrics`: Prometheus counters and histograms per module version.
//! - `tokens`: random tokens, stored hashed, compared in constant time.
//! - `web`: the lobby, the play page and the JavaScript client (`web/`),
//!   compiled in and served on the players' address.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod api;
mod cluster;
mod config;
mod error;
mod handoff;
mod metrics;
mod node;
mod relay;
mod snapshots;
mod tokens;
mod upgrade;
mod web;

use std::future::Future;
use std::sync::Arc;

pub use api::{Position, Routes, router};
pub use config::{ClusterConfig, NodeConfig, Replication};
pub use error::NodeError;

pub use handoff::Arrival;
pub use node::{
    ActOutcome, ClusterStatus, CreateSession, Created, Export, ExportedEntry, ExportedSnapshot,
    ModuleSummary, Node, ReplicaState, SessionSummary,
};

/// How a node stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// Every session it held is on another node (or it held none).
    Clean,
    /// The drain deadline passed with this many sessions still here: they
    /// fail over to their replicas once this node is gone.
    DrainExpired(usize),
}

/// Serves `node` on `players` (and management on `admin`, if given) until
/// `shutdown` completes; then, in a cluster, drains (not ready, every
/// session handed to another node while players keep playing); then closes
/// WebSockets with "going away", finishes calls in flight and returns.
pub async fn serve(
    node: Arc<Node>,
    players: tokio::net::TcpListener,
    admin: Option<tokio::net::TcpListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<Stopped> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    node.start_background();
    if let Some(tunnels) = node.mesh.get().and_then(|mesh| mesh.tunnels()) {
        tokio::spawn(api::serve_tunnels(node.clone(), stop_rx.clone(), tunnels));
    }
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel();
    let stopping = {
        let node = node.clone();
        async move {
            shutdown.await;
            let left = node.drain().await.unwrap_or(0);
            tracing::info!("shutting down: finishing calls in flight");
            node.shutdown().await;
            let _ = stopped_tx.send(if left == 0 {
                Stopped::Clean
            } else {
                Stopped::DrainExpired(left)
            });
            let _ = stop_tx.send(true);
        }
    };
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let routes = if admin.is_some() {
        Routes::Players
    } else {
        Routes::All
    };
    let player_server = axum::serve(
        no_delay(players),
        router(node.clone(), routes, stop_rx.clone()),
    )
    .with_graceful_shutdown(stopped(stop_rx.clone()));
    tokio::spawn(stopping);
    match admin {
        Some(admin) => {
            let admin_server = axum::serve(
                no_delay(admin),
                router(node.clone(), Routes::Admin, stop_rx.clone()),
            )
            .with_graceful_shutdown(stopped(stop_rx));
            let (a, b) = tokio::join!(player_server, admin_server);
            a.and(b)?;
        }
        None => player_server.await?,
    }
    // The servers do not wait for upgraded connections: give each player
    // its close frame ("going away") before the process exits.
    let mut players = node.players.subscribe();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(3),
        players.wait_for(|open| *open == 0),
    )
    .await;
    Ok(stopped_rx.await.unwrap_or(Stopped::Clean))
}

/// The listener with Nagle's algorithm off on every connection: a reply
/// is written as two small frames (the events, then the acknowledgement),
/// and with Nagle on the second waits for the client's delayed ACK, up to
/// 40 ms.
fn no_delay(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt;
    listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not turn Nagle's algorithm off");
        }
    })
}
