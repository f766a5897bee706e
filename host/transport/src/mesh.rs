//! The cluster's driver: a thin tokio layer around one [`ClusterNode`].
//!
//! One task owns the node and feeds it the time (a 10 ms tick), the
//! messages peers send and the host's commands; what the node wants sent
//! goes out on the peer's connection, on one QUIC stream per *lane*:
//! control (heartbeats), records (CRDT deltas) and journal (replication,
//! handoff). Each lane has its own bounded queue, so a burst of journal
//! traffic never delays a heartbeat; a full queue drops the message, which
//! the protocol resends (it is built for a lossy network).
//!
//! Disk: every change the core makes to what it keeps (journal entries,
//! epochs, roles that survive restarts, records) is written through the
//! host's [`DurableStore`], one write per step, in order. A message waits
//! only for the writes it depends on ([`Outbox`]): a replica's
//! acknowledgement for its copy, a decision about a session for that
//! session's rows, so that no peer ever learns of a decision this node
//! could forget in a crash, and a drain writing the rows of a thousand
//! sessions delays no other session's lease. An owner's [`Mesh::append`]
//! is durable once written here (`local`) or also acknowledged by the
//! replica (`replicated`).
//!
//! Tunnels: the host opens bidirectional streams to a named node
//! ([`Mesh::open`]) and receives those opened to it ([`Mesh::tunnels`]):
//! how a node forwards a player or a creation to a session's owner.
//!
//! Discovery: the node dials its seeds, `host:port` names that DNS may
//! resolve to many addresses (a Kubernetes headless service, Swarm's
//! `tasks.<service>`), resolved again every few seconds; every connection
//! starts with a hello per lane carrying the node's identity (name + boot),
//! listen address and the addresses it knows, so that a cluster forms from
//! one seed. A hello whose name differs from the certificate's closes the
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_cluster::node::{
    Changes, Durable, Event, JournalEntry, Message, NewSession, SessionRecord,
};
use baton_cluster::outbox::Outbox;
use baton_cluster::{ClusterNode, Config, NodeId, Refusal};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

use crate::{Identity, Peer, Transport, TransportError};

/// When an owner's journal entry counts as durable.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Replication {
    /// Written on the owner's disk; the replica gets it in the background.
    Local,
    /// Also on the replica's disk: one round trip more, nothing lost when
    /// the owner's machine is.
    #[default]
    Replicated,
}

/// How long a node given seeds waits to meet one before it counts as
/// synced alone (see [`Mesh::synced`]).
pub const MEET_WAIT: Duration = Duration::from_secs(5);

/// How a mesh node runs.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Seeds to dial: `host:port`, where a DNS name may stand for many
    /// addresses (resolved again every few seconds).
    pub seeds: Vec<String>,
    /// When an appended entry is durable.
    pub replication: Replication,
    /// How long an append waits to be durable before it is reported as
    /// not acknowledged (the entry stays in the journal).
    pub ack_timeout: Duration,
    /// The protocol's timings.
    pub node: Config,
    /// This host's version (new sessions go to the newest).
    pub host_version: u32,
    /// Sessions it can take.
    pub capacity: u32,
    /// Messages waiting per peer and lane before new ones are dropped.
    pub queue: usize,
}

impl MeshConfig {
    /// Defaults around a listen address and seeds.
    pub fn new(listen: SocketAddr, seeds: impl IntoIterator<Item = impl ToString>) -> Self {
        MeshConfig {
            listen,
            seeds: seeds.into_iter().map(|s| s.to_string()).collect(),
            replication: Replication::default(),
            ack_timeout: Duration::from_secs(2),
            node: Config::default(),
            host_version: 1,
            capacity: 10_000,
            queue: 1024,
        }
    }
}

/// What goes on a lane stream: a hello first, then messages.
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    Hello {
        node: NodeId,
        listen: SocketAddr,
        known: Vec<SocketAddr>,
    },
    Message(Message),
    /// The addresses the sender knows, again and again: how a node that
    /// joined early learns of those that joined after it.
    Known(Vec<SocketAddr>),
}

/// The lanes, one stream each per connection and direction.
const LANES: usize = 3;

fn lane(frame: &Frame) -> usize {
    match frame {
        Frame::Message(Message::Delta { .. } | Message::DeltaAck { .. }) => 1,
        Frame::Message(Message::Heartbeat(_)) | Frame::Hello { .. } | Frame::Known(_) => 0,
        Frame::Message(_) => 2,
    }
}

const MAX_FRAME: usize = 64 << 20;

/// Most bytes of frames gathered into one write.
const MAX_BATCH: usize = 256 << 10;

/// Appends `frame`, length first, to `out`.
fn encode_frame(frame: &Frame, out: &mut Vec<u8>) -> Result<(), ()> {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    *out = postcard::to_extend(frame, std::mem::take(out)).map_err(|_| ())?;
    let len = u32::try_from(out.len() - at - 4).map_err(|_| ())?;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
    Ok(())
}

/// Writes a lane: `first`, then every frame queued, those queued together
/// in one write (a drain queues thousands: one write each would wake the
/// connection and lock its state thousands of times).
async fn write_lane(
    mut stream: quinn::SendStream,
    first: Frame,
    mut frames: mpsc::Receiver<Frame>,
) -> Result<(), ()> {
    let mut batch = Vec::new();
    encode_frame(&first, &mut batch)?;
    loop {
        while batch.len() < MAX_BATCH {
            match frames.try_recv() {
                Ok(frame) => encode_frame(&frame, &mut batch)?,
                Err(_) => break,
            }
        }
        stream.write_all(&batch).await.map_err(|_| ())?;
        batch.clear();
        // A rare large frame leaves no large buffer behind it.
        if batch.capacity() > 4 * MAX_BATCH {
            batch.shrink_to(MAX_BATCH);
        }
        let Some(frame) = frames.recv().await else {
            return Ok(());
        };
        encode_frame(&frame, &mut batch)?;
    }
}

/// Reads a lane's frames, a chunk of the stream at a time (a batch of
/// frames arrives together; reading each one apart would lock the
/// connection's state twice per frame).
struct LaneReader {
    stream: quinn::RecvStream,
    buf: Vec<u8>,
    /// Where the next frame starts in `buf`.
    at: usize,
}

impl LaneReader {
    fn new(stream: quinn::RecvStream) -> Self {
        LaneReader {
            stream,
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The next frame; `None` at the stream's end or on a malformed frame.
    async fn next(&mut self) -> Option<Frame> {
        loop {
            match split_frame(&self.buf[self.at..]) {
                Some(Ok((frame, taken))) => {
                    self.at += taken;
                    return Some(frame);
                }
                Some(Err(())) => return None,
                None => {}
            }
            self.buf.drain(..self.at);
            if self.buf.len() < MAX_BATCH && self.buf.capacity() > 4 * MAX_BATCH {
                self.buf.shrink_to(MAX_BATCH);
            }
            self.at = 0;
            let chunk = self.stream.read_chunk(MAX_BATCH, true).await.ok()??;
            self.buf.extend_from_slice(&chunk.bytes);
        }
    }
}

/// The first frame in `bytes` and how many bytes it took, once it is whole
/// (`None` before); an error if it is malformed or too long.
fn split_frame(bytes: &[u8]) -> Option<Result<(Frame, usize), ()>> {
    let head = bytes.first_chunk::<4>()?;
    let len = u32::from_be_bytes(*head) as usize;
    if len > MAX_FRAME {
        return Some(Err(()));
    }
    let frame = bytes.get(4..4 + len)?;
    Some(
        postcard::from_bytes(frame)
            .map(|frame| (frame, 4 + len))
            .map_err(|_| ()),
    )
}

/// Called once a write is durable, or failed.
pub type WriteDone = Box<dyn FnOnce(Result<(), String>) + Send>;

/// Where the mesh writes the core's durable state: the host's store.
/// Writes must become durable in the order they are given, each as a
/// whole (a crash keeps a prefix of them).
pub trait DurableStore: Send + Sync + 'static {
    /// Writes `changes` durably, then calls `done`: each journal change's
    /// entries from its `from` replace what stood there (the journal is
    /// its `len` long), and the rows of `changes.state`.
    fn write(&self, changes: Changes, done: WriteDone);
}

/// A [`DurableStore`] that writes nothing and says done at once: for tests
/// of the mesh itself, never for a node whose acknowledgements mean durable.
#[derive(Debug)]
pub struct Unpersisted;

impl DurableStore for Unpersisted {
    fn write(&self, _: Changes, done: WriteDone) {
        done(Ok(()));
    }
}

/// A bidirectional stream another node opened to this one.
#[derive(Debug)]
pub struct Tunnel {
    /// The peer's name, from its certificate.
    pub from: String,
    /// Towards the peer.
    pub send: quinn::SendStream,
    /// From the peer.
    pub recv: quinn::RecvStream,
}

/// Why [`Mesh::append`] appended nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The protocol refused: not the owner, no lease, moving.
    #[error("{0}")]
    Refused(#[from] Refusal),
    /// The journal store failed earlier: nothing more is acknowledged.
    #[error("the journal store failed: {0}")]
    StoreFailed(String),
    /// No entries were given.
    #[error("nothing to append")]
    Empty,
    /// The mesh has stopped.
    #[error("the mesh stopped")]
    Stopped,
}

/// Why appended entries were not confirmed durable. They may still be:
/// the caller does not know, and a retry with the same action id is safe.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unconfirmed {
    /// The session moved to another node before they were confirmed: its
    /// new owner holds them if they made it into the move.
    #[error("the session moved to another node")]
    Moved,
    /// Not confirmed in time, or the mesh stopped.
    #[error("{0}")]
    Late(String),
}

/// Entries an owner appended: durable once [`Appended::durable`] says so.
#[derive(Debug)]
pub struct Appended {
    /// The owner's epoch.
    pub epoch: u64,
    /// The last entry's journal position (1-based).
    pub seq: u64,
    durable: oneshot::Receiver<Result<(), Unconfirmed>>,
}

impl Appended {
    /// Waits until the entries are durable as the replication mode asks.
    pub async fn durable(self) -> Result<(), Unconfirmed> {
        self.durable
            .await
            .unwrap_or_else(|_| Err(Unconfirmed::Late("the mesh stopped".into())))
    }
}

enum Input {
    Connected(Peer),
    DialFailed(SocketAddr),
    Resolved(Vec<SocketAddr>),
    Hello {
        name: String,
        node: NodeId,
        listen: SocketAddr,
        known: Vec<SocketAddr>,
        connection: quinn::Connection,
    },
    Received {
        from: NodeId,
        message: Message,
    },
    Known(Vec<SocketAddr>),
    Command(Command),
}

/// An append waiting for its session's lease.
type Leasing = (
    String,
    Vec<Vec<u8>>,
    u64,
    oneshot::Sender<Result<Appended, AppendError>>,
);

/// A write finished: its number, and how.
type Written = (u64, Result<(), String>);

enum Command {
    Place {
        session: String,
        reply: oneshot::Sender<Result<(NodeId, NodeId), String>>,
    },
    Create {
        session: String,
        module: String,
        reply: oneshot::Sender<Result<SessionRecord, String>>,
    },
    CreateHere {
        session: String,
        new: NewSession,
        reply: oneshot::Sender<Result<SessionRecord, String>>,
    },
    Append {
        session: String,
        entries: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Appended, AppendError>>,
    },
    Act {
        session: String,
        action: Vec<u8>,
    },
    Journal {
        session: String,
        from: u64,
        reply: oneshot::Sender<Vec<JournalEntry>>,
    },
    Record {
        session: String,
        reply: oneshot::Sender<Option<SessionRecord>>,
    },
    Sessions {
        reply: oneshot::Sender<Vec<(String, SessionRecord)>>,
    },
    HandingOff {
        session: String,
        reply: oneshot::Sender<bool>,
    },
    Owned {
        reply: oneshot::Sender<Vec<(String, u64)>>,
    },
    PublishModule {
        id: String,
        hash: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Modules {
        reply: oneshot::Sender<Vec<(String, String)>>,
    },
    Peers {
        reply: oneshot::Sender<Vec<NodeId>>,
    },
    Describe {
        session: String,
        reply: oneshot::Sender<String>,
    },
    Drain {
        reply: oneshot::Sender<usize>,
    },
    Warmed {
        session: String,
        to: NodeId,
    },
    Evict {
        name: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A running mesh node.
#[derive(Debug)]
pub struct Mesh {
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<Stamped>,
    records: watch::Receiver<u64>,
    tunnels: Mutex<Option<mpsc::Receiver<Tunnel>>>,
    addr: SocketAddr,
    name: String,
    synced: Arc<std::sync::atomic::AtomicBool>,
    connections: Connections,
}

/// The connection to each peer and the wire version spoken on it, shared
/// by the driver (which keeps it current) with the host: opening a stream
/// or asking a peer's version is on the path of every handoff and relayed
/// player, and should not wait for a busy driver's turn.
type Connections = Arc<std::sync::RwLock<BTreeMap<String, (quinn::Connection, u32)>>>;

/// An event of the node, stamped with when the core reported it.
#[derive(Clone, Debug)]
pub struct Stamped {
    /// What happened.
    pub event: Event,
    /// Microseconds since the Unix epoch when the driver took the event
    /// from the core, before it sent the messages that went with it: a
    /// handoff's fence is timed from here, not from when a busy host got
    /// round to reading it (by then the target may own the session).
    pub at_us: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl Mesh {
    /// Binds, starts the driver and dials the seeds. `durable` is what the
    /// node's store kept from its previous boot; changes to it are written
    /// to `store`.
    pub async fn start(
        identity: Identity,
        config: MeshConfig,
        durable: Durable,
        store: Arc<dyn DurableStore>,
    ) -> Result<Mesh, TransportError> {
        let name = identity.name().to_owned();
        let transport = Arc::new(Transport::bind(config.listen, identity)?);
        let addr = transport.local_addr()?;
        // Distinct per process start (time, pid, port); no secrecy needed.
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let boot = nanos ^ u64::from(std::process::id()).rotate_left(32) ^ u64::from(addr.port());
        let id = NodeId {
            name: name.clone(),
            boot,
        };
        let node = ClusterNode::new(
            id.clone(),
            config.node.clone(),
            config.host_version,
            config.capacity,
            durable,
            now_ms(),
        );
        let (inputs, rx) = mpsc::channel(16_384);
        let (events, _) = broadcast::channel(16_384);
        let (records_tx, records) = watch::channel(0);
        let (tunnels_tx, tunnels) = mpsc::channel(1024);
        let (written_tx, written_rx) = mpsc::unbounded_channel();
        let synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Connections::default();
        // Accept loop.
        {
            let transport = transport.clone();
            let inputs = inputs.clone();
            tokio::spawn(async move {
                while let Some(peer) = transport.accept().await {
                    if inputs.send(Input::Connected(peer)).await.is_err() {
                        break;
                    }
                }
            });
        }
        let driver = Driver {
            node,
            id,
            transport,
            listen: addr,
            seeds: config.seeds.clone(),
            replication: config.replication,
            ack_timeout: config.ack_timeout,
            links: BTreeMap::new(),
            known: BTreeSet::new(),
            dialing: BTreeSet::new(),
            queue: config.queue.max(1),
            inputs: inputs.clone(),
            events: events.clone(),
            records: records_tx,
            records_seen: 0,
            tunnels: tunnels_tx,
            store,
            written_tx,
            journals: BTreeMap::new(),
            outbox: Outbox::default(),
            starting: BTreeMap::new(),
            failed: None,
            leasing: Vec::new(),
            synced: synced.clone(),
            connections: connections.clone(),
            alone_until: (!config.seeds.is_empty())
                .then(|| tokio::time::Instant::now() + MEET_WAIT),
            draining: Vec::new(),
            drained: None,
        };
        tokio::spawn(driver.run(rx, written_rx));
        Ok(Mesh {
            synced,
            connections,
            inputs,
            events,
            records,
            tunnels: Mutex::new(Some(tunnels)),
            addr,
            name,
        })
    }

    /// Whether this node holds the records of every peer it sees up (a
    /// node that just joined knows of no sessions before). A node given
    /// seeds is not synced before it met a peer, or [`MEET_WAIT`] passed
    /// (the first node of a new cluster, its seeds not started yet).
    pub fn synced(&self) -> bool {
        self.synced.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the node reports: ownership changes, applied and acknowledged
    /// actions, membership.
    pub fn events(&self) -> broadcast::Receiver<Stamped> {
        self.events.subscribe()
    }

    /// Changes whenever the replicated records do (sessions, modules).
    pub fn records_changed(&self) -> watch::Receiver<u64> {
        self.records.clone()
    }

    /// The streams other nodes open to this one; the first caller gets them.
    pub fn tunnels(&self) -> Option<mpsc::Receiver<Tunnel>> {
        self.tunnels
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Command(make(tx))).await.ok()?;
        rx.await.ok()
    }

    /// Where a new session goes: `(owner, replica)`.
    pub async fn place(&self, session: &str) -> Result<(NodeId, NodeId), String> {
        let session = session.to_owned();
        self.ask(|reply| Command::Place { session, reply })
            .await
            .unwrap_or_else(|| Err("the mesh stopped".into()))
    }

    /// Creates a session, placed by the cluster.
    pub async fn create(&self, session: &str, module: &str) -> Result<SessionRecord, String> {
        let (session, module) = (session.to_owned(), module.to_owned());
        self.ask(|reply| Command::Create {
            session,
            module,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("the mesh stopped".into()))
    }

    /// Creates a session owned by this node and returns once its replica
    /// answered (the owner holds a lease: appends can go).
    pub async fn create_here(
        &self,
        session: &str,
        new: NewSession,
    ) -> Result<SessionRecord, String> {
        let session = session.to_owned();
        self.ask(|reply| Command::CreateHere {
            session,
            new,
            reply,
        })
        .await
        .unwrap_or_else(|| Err("the mesh stopped".into()))
    }

    /// Appends entries to an owned session's journal under its lease, or
    /// says why not (nothing was appended then).
    pub async fn append(
        &self,
        session: &str,
        entries: Vec<Vec<u8>>,
    ) -> Result<Appended, AppendError> {
        let session = session.to_owned();
        self.ask(|reply| Command::Append {
            session,
            entries,
            reply,
        })
        .await
        .unwrap_or(Err(AppendError::Stopped))
    }

    /// Sends a client's action to the session's owner, wherever it is.
    pub async fn act(&self, session: &str, action: Vec<u8>) {
        let session = session.to_owned();
        let _ = self
            .inputs
            .send(Input::Command(Command::Act { session, action }))
            .await;
    }

    /// The session's journal as this node holds it, from position `from`
    /// (0-based) on, each entry with the epoch it was applied in.
    pub async fn journal(&self, session: &str, from: u64) -> Vec<JournalEntry> {
        let session = session.to_owned();
        self.ask(|reply| Command::Journal {
            session,
            from,
            reply,
        })
        .await
        .unwrap_or_default()
    }

    /// The session's record as this node knows it.
    pub async fn record(&self, session: &str) -> Option<SessionRecord> {
        let session = session.to_owned();
        self.ask(|reply| Command::Record { session, reply })
            .await
            .flatten()
    }

    /// Whether this node owns `session` and fenced it for a handoff: its
    /// appends are refused from then on, before the host hears of the
    /// fence through [`Event::Fenced`].
    pub async fn handing_off(&self, session: &str) -> bool {
        let session = session.to_owned();
        self.ask(|reply| Command::HandingOff { session, reply })
            .await
            .unwrap_or(false)
    }

    /// Every session's record.
    pub async fn sessions(&self) -> Vec<(String, SessionRecord)> {
        self.ask(|reply| Command::Sessions { reply })
            .await
            .unwrap_or_default()
    }

    /// Sessions this node owns.
    pub async fn owned(&self) -> Vec<(String, u64)> {
        self.ask(|reply| Command::Owned { reply })
            .await
            .unwrap_or_default()
    }

    /// Records a module (`name@version` → content hash) for the cluster.
    pub async fn publish_module(&self, id: &str, hash: &str) -> Result<(), String> {
        let (id, hash) = (id.to_owned(), hash.to_owned());
        self.ask(|reply| Command::PublishModule { id, hash, reply })
            .await
            .unwrap_or_else(|| Err("the mesh stopped".into()))
    }

    /// Every module recorded in the cluster: `(name@version, hash)`.
    pub async fn modules(&self) -> Vec<(String, String)> {
        self.ask(|reply| Command::Modules { reply })
            .await
            .unwrap_or_default()
    }

    /// Nodes up now.
    pub async fn peers(&self) -> Vec<NodeId> {
        self.ask(|reply| Command::Peers { reply })
            .await
            .unwrap_or_default()
    }

    /// The wire version spoken with node `name` (2 for `baton/2`), if
    /// connected to it.
    pub fn wire_version(&self, name: &str) -> Option<u32> {
        self.connection(name).map(|(_, version)| version)
    }

    /// The open connection to node `name` and its wire version.
    fn connection(&self, name: &str) -> Option<(quinn::Connection, u32)> {
        self.connections
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(name)
            .filter(|(connection, _)| connection.close_reason().is_none())
            .cloned()
    }

    /// Opens a bidirectional stream to node `name`.
    pub async fn open(&self, name: &str) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
        let (connection, _) = self
            .connection(name)
            .ok_or_else(|| format!("not connected to {name}"))?;
        connection
            .open_bi()
            .await
            .map_err(|e| format!("opening a stream to {name}: {e}"))
    }

    /// This node's part in a session, for diagnostics.
    pub async fn describe(&self, session: &str) -> String {
        let session = session.to_owned();
        self.ask(|reply| Command::Describe { session, reply })
            .await
            .unwrap_or_default()
    }

    /// Drains: this node turns not-ready, hands every session it owns to
    /// another node and lets go of those it replicates. Returns when that is
    /// done (0) or the drain deadline passed, with the sessions still here.
    pub async fn drain(&self) -> usize {
        self.ask(|reply| Command::Drain { reply })
            .await
            .unwrap_or_default()
    }

    /// Tells the protocol that `to`, the target of `session`'s handoff, is
    /// warm (see `Config::await_warm`): the handoff may fence.
    pub async fn warmed(&self, session: &str, to: NodeId) {
        let command = Command::Warmed {
            session: session.to_owned(),
            to,
        };
        let _ = self.inputs.send(Input::Command(command)).await;
    }

    /// Declares node `name` gone for good: the sessions it replicated get
    /// a new replica without its release. Refused while it is up; the
    /// caller must know it can no longer run (a node only cut off could
    /// still take over a session it replicates).
    pub async fn evict(&self, name: &str) -> Result<(), String> {
        self.ask(|reply| Command::Evict {
            name: name.to_owned(),
            reply,
        })
        .await
        .unwrap_or_else(|| Err("the mesh stopped".into()))
    }

    /// Stops: closes every connection (peers see this node go down).
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}

struct Link {
    node: Option<NodeId>,
    lanes: Vec<mpsc::Sender<Frame>>,
    connection: quinn::Connection,
    /// The wire version negotiated with the peer (see `WIRE_VERSIONS`).
    version: u32,
}

/// An owned session's appends waiting to be durable.
#[derive(Default)]
struct Writes {
    /// The replica's acknowledgements so far.
    acked: u64,
    /// Appends waiting for their write (and the replica's acknowledgement
    /// in `replicated` mode).
    waiting: Vec<Waiter>,
}

/// An append waiting to be durable.
struct Waiter {
    seq: u64,
    generation: u64,
    deadline: u64,
    reply: oneshot::Sender<Result<(), Unconfirmed>>,
}

struct Driver {
    node: ClusterNode,
    id: NodeId,
    transport: Arc<Transport>,
    listen: SocketAddr,
    seeds: Vec<String>,
    replication: Replication,
    ack_timeout: Duration,
    links: BTreeMap<String, Link>,
    known: BTreeSet<SocketAddr>,
    dialing: BTreeSet<SocketAddr>,
    queue: usize,
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<Stamped>,
    records: watch::Sender<u64>,
    records_seen: u64,
    tunnels: mpsc::Sender<Tunnel>,
    store: Arc<dyn DurableStore>,
    written_tx: mpsc::UnboundedSender<Written>,
    journals: BTreeMap<String, Writes>,
    /// Messages waiting for the writes they depend on.
    outbox: Outbox,
    starting: BTreeMap<String, (u64, oneshot::Sender<Result<SessionRecord, String>>)>,
    /// The store failed: nothing more is acknowledged (fail-stop).
    failed: Option<String>,
    /// Appends waiting for a lease or a move's end: (session, entries,
    /// deadline, reply).
    leasing: Vec<Leasing>,
    /// Callers of `Mesh::drain` waiting for it to end.
    draining: Vec<oneshot::Sender<usize>>,
    /// Shared with `Mesh::synced`.
    synced: Arc<std::sync::atomic::AtomicBool>,
    /// Shared with the `Mesh`: `links`' connections, kept current.
    connections: Connections,
    /// Until when a node given seeds waits to meet a peer before it calls
    /// itself synced: before, "every peer it sees" is vacuously none.
    /// `None` once it met one (or has no seeds).
    alone_until: Option<tokio::time::Instant>,
    /// How the drain ended: the sessions left.
    drained: Option<usize>,
}

impl Driver {
    async fn run(
        mut self,
        mut rx: mpsc::Receiver<Input>,
        mut written: mpsc::UnboundedReceiver<Written>,
    ) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_millis(500));
        let mut resolve = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let now = now_ms();
                    self.node.tick(now);
                    self.expire(now);
                }
                _ = redial.tick() => {
                    self.dial_known();
                    for link in self.links.values() {
                        let known = Frame::Known(self.known.iter().copied().collect());
                        let _ = link.lanes[0].try_send(known);
                    }
                }
                _ = resolve.tick() => self.resolve_seeds(),
                Some((generation, result)) = written.recv() => self.written(generation, result),
                input = rx.recv() => {
                    let Some(input) = input else { return };
                    if !self.input(input) {
                        return;
                    }
                }
            }
            self.flush();
        }
    }

    /// Resolves the seed names in the background (DNS may be slow).
    fn resolve_seeds(&self) {
        for seed in self.seeds.clone() {
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                match tokio::net::lookup_host(seed.as_str()).await {
                    Ok(addrs) => {
                        let _ = inputs.send(Input::Resolved(addrs.collect())).await;
                    }
                    Err(e) => tracing::debug!(%seed, error = %e, "seed did not resolve"),
                }
            });
        }
    }

    /// Handles one input; false to stop.
    fn input(&mut self, input: Input) -> bool {
        match input {
            Input::Connected(peer) => self.link(peer),
            Input::DialFailed(addr) => {
                self.dialing.remove(&addr);
            }
            Input::Resolved(addrs) => {
                let new = addrs.iter().any(|a| !self.known.contains(a));
                self.known.extend(addrs);
                if new {
                    self.dial_known();
                }
            }
            Input::Hello {
                name,
                node,
                listen,
                known,
                connection,
            } => {
                if let Some(link) = self.links.get_mut(&name)
                    && link.connection.stable_id() == connection.stable_id()
                {
                    link.node = Some(node.clone());
                }
                self.known.insert(listen);
                self.known.extend(known);
                if let Some(link) = self.links.get(&name) {
                    self.node.peer_wire(&name, link.version);
                }
                self.node.add_peer(node);
            }
            Input::Received { from, message } => self.node.handle(from, message, now_ms()),
            Input::Known(addrs) => self.known.extend(addrs),
            Input::Command(command) => return self.command(command),
        }
        true
    }

    fn command(&mut self, command: Command) -> bool {
        let now = now_ms();
        match command {
            Command::Place { session, reply } => {
                let _ = reply.send(self.node.place(&session));
            }
            Command::Create {
                session,
                module,
                reply,
            } => {
                let _ = reply.send(self.node.create(&session, &module, now));
            }
            Command::CreateHere {
                session,
                new,
                reply,
            } => match self.node.create_here(&session, new, now) {
                // Answered once the replica's first acknowledgement starts it.
                Ok(_) => {
                    let deadline = now + self.ack_timeout.as_millis() as u64;
                    self.starting.insert(session, (deadline, reply));
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
            Command::Append {
                session,
                entries,
                reply,
            } => {
                if self.must_wait(&session, now) {
                    let deadline = now + self.ack_timeout.as_millis() as u64;
                    self.leasing.push((session, entries, deadline, reply));
                } else {
                    let _ = reply.send(self.append(session, entries, now));
                }
            }
            Command::Act { session, action } => {
                match self.node.record(&session).map(|r| r.owner.clone()) {
                    Some(owner) if owner != self.id => {
                        self.send(owner, Message::Act { session, action })
                    }
                    _ => self.node.act(&session, action, now),
                }
            }
            Command::Journal {
                session,
                from,
                reply,
            } => {
                let journal = self
                    .node
                    .journal(&session)
                    .and_then(|j| j.get(usize::try_from(from).ok()?..))
                    .map(<[JournalEntry]>::to_vec)
                    .unwrap_or_default();
                let _ = reply.send(journal);
            }
            Command::Record { session, reply } => {
                let _ = reply.send(self.node.record(&session).cloned());
            }
            Command::Sessions { reply } => {
                let _ = reply.send(self.node.sessions());
            }
            Command::HandingOff { session, reply } => {
                let _ = reply.send(self.node.handing_off(&session));
            }
            Command::Owned { reply } => {
                let _ = reply.send(self.node.owned());
            }
            Command::PublishModule { id, hash, reply } => {
                let _ = reply.send(self.node.publish_module(&id, &hash, 1, now));
            }
            Command::Modules { reply } => {
                let _ = reply.send(self.node.modules());
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.node.peers_up());
            }
            Command::Describe { session, reply } => {
                let _ = reply.send(self.node.describe(&session));
            }
            Command::Drain { reply } => match self.drained {
                Some(left) => {
                    let _ = reply.send(left);
                }
                None => {
                    self.draining.push(reply);
                    self.node.drain(now);
                }
            },
            Command::Warmed { session, to } => self.node.warmed(&session, &to, now),
            Command::Evict { name, reply } => {
                let up = self.node.peers_up().iter().any(|p| p.name == name);
                let _ = reply.send(if name == self.id.name {
                    Err("a node cannot evict itself".into())
                } else if up {
                    Err(format!(
                        "{name} is up: stop it first (only a node that can no longer run may be evicted)"
                    ))
                } else {
                    self.node.evict(&name, now);
                    Ok(())
                });
            }
            Command::Shutdown { reply } => {
                self.transport.close();
                let _ = reply.send(());
                return false;
            }
        }
        true
    }

    /// Whether an append to `session` is to wait: this node owns it but
    /// cannot append right now, the lease not there yet (just taken over)
    /// or a replica change's fence up. It waits for the lease or the
    /// move's end rather than be refused. A handoff's fence is refused at
    /// once: the session is leaving, and the caller follows it to its
    /// target instead of waiting here for the transfer's acknowledgement.
    fn must_wait(&self, session: &str, now: u64) -> bool {
        self.node.serving(session, now).is_none()
            && !self.node.handing_off(session)
            && self
                .node
                .record(session)
                .is_some_and(|r| r.owner == self.id)
    }

    /// Appends under the lease; the reply waits for the write (and the
    /// replica's acknowledgement in `replicated` mode).
    fn append(
        &mut self,
        session: String,
        entries: Vec<Vec<u8>>,
        now: u64,
    ) -> Result<Appended, AppendError> {
        if let Some(failed) = &self.failed {
            return Err(AppendError::StoreFailed(failed.clone()));
        }
        let mut last = None;
        for entry in entries {
            // All under one `now`: if the first is allowed, so is the rest.
            last = Some(self.node.append(&session, entry, now)?);
        }
        let (epoch, seq) = last.ok_or(AppendError::Empty)?;
        self.write_changes();
        let deadline = now + self.ack_timeout.as_millis() as u64;
        // The write just issued holds the entries.
        let generation = self.outbox.issued();
        let writes = self.journals.entry(session).or_default();
        let (tx, rx) = oneshot::channel();
        writes.waiting.push(Waiter {
            seq,
            generation,
            deadline,
            reply: tx,
        });
        Ok(Appended {
            epoch,
            seq,
            durable: rx,
        })
    }

    /// Hands the core's changes to the store, as the next write.
    fn write_changes(&mut self) {
        let changes = self.node.take_changes();
        if changes.is_empty() {
            return;
        }
        let generation = self.outbox.issue(&changes);
        let tx = self.written_tx.clone();
        self.store.write(
            changes,
            Box::new(move |result| {
                let _ = tx.send((generation, result));
            }),
        );
    }

    /// Write `generation` is done: what waited for it goes.
    fn written(&mut self, generation: u64, result: Result<(), String>) {
        if let Err(e) = result {
            tracing::error!(error = %e, "a write of the cluster's state failed: acknowledging nothing more");
            self.failed.get_or_insert(e);
            return;
        }
        for (to, message) in self.outbox.written(generation) {
            self.send(to, message);
        }
        let waiting: Vec<String> = self
            .journals
            .iter()
            .filter(|(_, w)| !w.waiting.is_empty())
            .map(|(s, _)| s.clone())
            .collect();
        for session in waiting {
            self.settle(&session);
        }
    }

    /// Answers the appends of `session` that are now durable.
    fn settle(&mut self, session: &str) {
        let replicated = self.replication == Replication::Replicated;
        let Some(writes) = self.journals.get_mut(session) else {
            return;
        };
        let outbox = &self.outbox;
        let acked = writes.acked;
        let (done, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut writes.waiting)
            .into_iter()
            .partition(|w| outbox.is_written(w.generation) && (!replicated || w.seq <= acked));
        writes.waiting = rest;
        for waiter in done {
            let _ = waiter.reply.send(Ok(()));
        }
    }

    /// Fails what waited too long, or for a session this node lost.
    fn expire(&mut self, now: u64) {
        let timeout = self.ack_timeout.as_millis();
        for writes in self.journals.values_mut() {
            if writes.waiting.first().is_none_or(|w| w.deadline > now) {
                continue; // in order of their deadlines: none is late
            }
            let (late, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut writes.waiting)
                .into_iter()
                .partition(|w| w.deadline <= now);
            writes.waiting = rest;
            for waiter in late {
                let _ = waiter.reply.send(Err(Unconfirmed::Late(format!(
                    "not acknowledged within {timeout} ms; retry"
                ))));
            }
        }
        let late: Vec<String> = self
            .starting
            .iter()
            .filter(|(_, (deadline, _))| *deadline <= now)
            .map(|(s, _)| s.clone())
            .collect();
        for session in late {
            if let Some((_, reply)) = self.starting.remove(&session) {
                let _ = reply.send(Err("the session's replica did not answer in time".into()));
            }
        }
    }

    fn dial_known(&mut self) {
        let connected: BTreeSet<SocketAddr> = self
            .links
            .values()
            .filter(|l| l.connection.close_reason().is_none())
            .map(|l| l.connection.remote_address())
            .collect();
        for addr in self.known.clone() {
            if addr == self.listen || connected.contains(&addr) || !self.dialing.insert(addr) {
                continue;
            }
            let transport = self.transport.clone();
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                let input = match tokio::time::timeout(Duration::from_secs(3), transport.dial(addr))
                    .await
                {
                    Ok(Ok(peer)) => Input::Connected(peer),
                    _ => Input::DialFailed(addr),
                };
                let _ = inputs.send(input).await;
            });
        }
    }

    /// Adopts a new connection: lane writers out, readers in.
    fn link(&mut self, peer: Peer) {
        self.dialing.remove(&peer.connection.remote_address());
        if peer.name == self.id.name {
            return; // Dialed ourselves through a seed list.
        }
        let hello = || Frame::Hello {
            node: self.id.clone(),
            listen: self.listen,
            known: self.known.iter().copied().collect(),
        };
        let mut lanes = Vec::with_capacity(LANES);
        for _ in 0..LANES {
            let (tx, rx) = mpsc::channel::<Frame>(self.queue);
            let connection = peer.connection.clone();
            let first = hello();
            tokio::spawn(async move {
                if let Ok(stream) = connection.open_uni().await {
                    let _ = write_lane(stream, first, rx).await;
                }
            });
            lanes.push(tx);
        }
        // Tunnels the peer opens go to the host.
        {
            let connection = peer.connection.clone();
            let tunnels = self.tunnels.clone();
            let from = peer.name.clone();
            tokio::spawn(async move {
                while let Ok((send, recv)) = connection.accept_bi().await {
                    let tunnel = Tunnel {
                        from: from.clone(),
                        send,
                        recv,
                    };
                    if tunnels.send(tunnel).await.is_err() {
                        return;
                    }
                }
            });
        }
        // Readers: every incoming lane stream starts with the peer's hello.
        {
            let connection = peer.connection.clone();
            let inputs = self.inputs.clone();
            let name = peer.name.clone();
            tokio::spawn(async move {
                while let Ok(stream) = connection.accept_uni().await {
                    let inputs = inputs.clone();
                    let name = name.clone();
                    let connection = connection.clone();
                    tokio::spawn(async move {
                        let mut frames = LaneReader::new(stream);
                        let Some(Frame::Hello {
                            node,
                            listen,
                            known,
                        }) = frames.next().await
                        else {
                            return;
                        };
                        if node.name != name {
                            // Its certificate says otherwise: not who it claims.
                            connection
                                .close(2u32.into(), b"the hello's name is not the certificate's");
                            return;
                        }
                        let hello = Input::Hello {
                            name,
                            node: node.clone(),
                            listen,
                            known,
                            connection,
                        };
                        if inputs.send(hello).await.is_err() {
                            return;
                        }
                        while let Some(frame) = frames.next().await {
                            // Bounded: when the driver lags, drop; the protocol resends.
                            let input = match frame {
                                Frame::Message(message) => Input::Received {
                                    from: node.clone(),
                                    message,
                                },
                                Frame::Known(addrs) => Input::Known(addrs),
                                Frame::Hello { .. } => continue,
                            };
                            let _ = inputs.try_send(input);
                        }
                    });
                }
            });
        }
        self.links.insert(
            peer.name.clone(),
            Link {
                node: None,
                lanes,
                connection: peer.connection,
                version: crate::wire_version_number(&peer.version),
            },
        );
        self.share_connections();
    }

    /// Publishes `links`' connections to the `Mesh`.
    fn share_connections(&self) {
        let connections = self
            .links
            .iter()
            .map(|(name, link)| (name.clone(), (link.connection.clone(), link.version)))
            .collect();
        *self
            .connections
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = connections;
    }

    fn send(&mut self, to: NodeId, message: Message) {
        let Some(link) = self.links.get(&to.name) else {
            return;
        };
        if link.connection.close_reason().is_some() || link.node.as_ref().is_some_and(|n| *n != to)
        {
            return; // Gone, or an older boot of that name.
        }
        let frame = Frame::Message(message);
        let _ = link.lanes[lane(&frame)].try_send(frame);
    }

    /// Writes journal changes, sends what the node wants sent (holding
    /// acknowledgements back until their write is done) and publishes its
    /// events.
    fn flush(&mut self) {
        let at_us = now_us();
        if !self.leasing.is_empty() {
            let now = now_ms();
            for (session, entries, deadline, reply) in std::mem::take(&mut self.leasing) {
                if deadline > now && self.must_wait(&session, now) {
                    self.leasing.push((session, entries, deadline, reply));
                } else {
                    // Appended, or refused with the reason as it stands.
                    let _ = reply.send(self.append(session, entries, now));
                }
            }
        }
        let transmit = self.node.poll_transmit();
        for (to, message) in transmit.at_once {
            self.send(to, message);
        }
        self.write_changes();
        for (to, message) in transmit.ordered {
            if let Some((to, message)) = self.outbox.send(to, message) {
                self.send(to, message);
            }
        }
        for event in self.node.poll_events() {
            match &event {
                Event::Acked { session, seq, .. } => {
                    let writes = self.journals.entry(session.clone()).or_default();
                    writes.acked = writes.acked.max(*seq);
                    let session = session.clone();
                    self.settle(&session);
                }
                Event::Started { session } => {
                    if let Some((_, reply)) = self.starting.remove(session) {
                        let record = self.node.record(session).cloned();
                        let _ = reply.send(record.ok_or_else(|| "the record vanished".into()));
                    }
                }
                Event::Drained { left } => {
                    self.drained = Some(*left);
                    for reply in self.draining.drain(..) {
                        let _ = reply.send(*left);
                    }
                }
                Event::SteppedDown { session, .. } => {
                    if let Some(w) = self.journals.get_mut(session) {
                        w.acked = 0;
                        for waiter in std::mem::take(&mut w.waiting) {
                            let _ = waiter.reply.send(Err(Unconfirmed::Moved));
                        }
                    }
                }
                _ => {}
            }
            let _ = self.events.send(Stamped { event, at_us });
        }
        if self.alone_until.is_some() && !self.node.peers_up().is_empty() {
            self.alone_until = None;
        }
        let alone = self
            .alone_until
            .is_some_and(|until| tokio::time::Instant::now() < until);
        self.synced.store(
            self.node.synced() && !alone,
            std::sync::atomic::Ordering::Relaxed,
        );
        let records = self.node.records_counter();
        if records != self.records_seen {
            self.records_seen = records;
            self.records.send_modify(|n| *n += 1);
        }
        let links = self.links.len();
        self.links
            .retain(|_, link| link.connection.close_reason().is_none());
        if self.links.len() != links {
            self.share_connections();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_written_together_are_read_back_one_by_one_from_any_prefix() {
        let frames = [
            Frame::Known(vec!["127.0.0.1:1".parse().expect("addr")]),
            Frame::Known(Vec::new()),
            Frame::Known(vec!["[::1]:2".parse().expect("addr"); 300]),
        ];
        let mut batch = Vec::new();
        for frame in &frames {
            encode_frame(frame, &mut batch).expect("encode");
        }
        // Whatever part of the batch has arrived, the reader takes the
        // whole frames in it and waits for the rest.
        for arrived in 0..=batch.len() {
            let mut at = 0;
            let mut read = Vec::new();
            while let Some(split) = split_frame(&batch[at..arrived]) {
                let (frame, taken) = split.expect("well formed");
                read.push(format!("{frame:?}"));
                at += taken;
            }
            let expected: Vec<String> = frames.iter().map(|f| format!("{f:?}")).collect();
            assert_eq!(read[..], expected[..read.len()], "after {arrived} bytes");
            if arrived == batch.len() {
                assert_eq!(read.len(), frames.len());
            }
        }
    }

    #[test]
    fn an_oversized_or_malformed_frame_is_an_error() {
        let too_long = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(split_frame(&too_long), Some(Err(()))));
        let mut garbage = 3u32.to_be_bytes().to_vec();
        garbage.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(split_frame(&garbage), Some(Err(()))));
    }
}
