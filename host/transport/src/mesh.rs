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
//! Discovery: the node dials its seed addresses (and whatever addresses a
//! DNS name resolves to, given as seeds) until connected; every connection
//! starts with a hello per lane carrying the node's identity (name + boot),
//! listen address and the addresses it knows, so that a cluster forms from
//! one seed. A hello whose name differs from the certificate's closes the
//! connection.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baton_cluster::node::{Durable, Event, Message, SessionRecord};
use baton_cluster::{ClusterNode, Config, NodeId};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::{Identity, Peer, Transport, TransportError};

/// How a mesh node runs.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Addresses to dial at start (seeds, DNS answers).
    pub seeds: Vec<SocketAddr>,
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
    pub fn new(listen: SocketAddr, seeds: Vec<SocketAddr>) -> Self {
        MeshConfig {
            listen,
            seeds,
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

async fn write_frame(stream: &mut quinn::SendStream, frame: &Frame) -> Result<(), ()> {
    let bytes = postcard::to_stdvec(frame).map_err(|_| ())?;
    stream
        .write_all(&(bytes.len() as u32).to_be_bytes())
        .await
        .map_err(|_| ())?;
    stream.write_all(&bytes).await.map_err(|_| ())
}

async fn read_frame(stream: &mut quinn::RecvStream) -> Option<Frame> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).await.ok()?;
    let len = u32::from_be_bytes(len) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).await.ok()?;
    postcard::from_bytes(&bytes).ok()
}

enum Input {
    Connected(Peer),
    DialFailed(SocketAddr),
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

enum Command {
    Create {
        session: String,
        module: String,
        reply: oneshot::Sender<Result<SessionRecord, String>>,
    },
    Act {
        session: String,
        action: u64,
    },
    Record {
        session: String,
        reply: oneshot::Sender<Option<SessionRecord>>,
    },
    Owned {
        reply: oneshot::Sender<Vec<(String, u64)>>,
    },
    Describe {
        session: String,
        reply: oneshot::Sender<String>,
    },
    Drain,
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A running mesh node.
#[derive(Debug)]
pub struct Mesh {
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<Event>,
    addr: SocketAddr,
    name: String,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Mesh {
    /// Binds, starts the driver and dials the seeds. `durable` is what the
    /// node's store kept from its previous boot.
    pub async fn start(
        identity: Identity,
        config: MeshConfig,
        durable: Durable,
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
            links: BTreeMap::new(),
            known: config.seeds.iter().copied().collect(),
            dialing: BTreeSet::new(),
            queue: config.queue.max(1),
            inputs: inputs.clone(),
            events: events.clone(),
        };
        tokio::spawn(driver.run(rx));
        Ok(Mesh {
            inputs,
            events,
            addr,
            name,
        })
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
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.inputs.send(Input::Command(make(tx))).await.ok()?;
        rx.await.ok()
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

    /// Sends a client's action to the session's owner, wherever it is.
    pub async fn act(&self, session: &str, action: u64) {
        let session = session.to_owned();
        let _ = self
            .inputs
            .send(Input::Command(Command::Act { session, action }))
            .await;
    }

    /// The session's record as this node knows it.
    pub async fn record(&self, session: &str) -> Option<SessionRecord> {
        let session = session.to_owned();
        self.ask(|reply| Command::Record { session, reply })
            .await
            .flatten()
    }

    /// Sessions this node owns.
    pub async fn owned(&self) -> Vec<(String, u64)> {
        self.ask(|reply| Command::Owned { reply })
            .await
            .unwrap_or_default()
    }

    /// This node's part in a session, for diagnostics.
    pub async fn describe(&self, session: &str) -> String {
        let session = session.to_owned();
        self.ask(|reply| Command::Describe { session, reply })
            .await
            .unwrap_or_default()
    }

    /// Starts draining.
    pub async fn drain(&self) {
        let _ = self.inputs.send(Input::Command(Command::Drain)).await;
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
}

struct Driver {
    node: ClusterNode,
    id: NodeId,
    transport: Arc<Transport>,
    listen: SocketAddr,
    links: BTreeMap<String, Link>,
    known: BTreeSet<SocketAddr>,
    dialing: BTreeSet<SocketAddr>,
    queue: usize,
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<Event>,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => self.node.tick(now_ms()),
                _ = redial.tick() => {
                    self.dial_known();
                    for link in self.links.values() {
                        let known = Frame::Known(self.known.iter().copied().collect());
                        let _ = link.lanes[0].try_send(known);
                    }
                }
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

    /// Handles one input; false to stop.
    fn input(&mut self, input: Input) -> bool {
        match input {
            Input::Connected(peer) => self.link(peer),
            Input::DialFailed(addr) => {
                self.dialing.remove(&addr);
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
            Command::Create {
                session,
                module,
                reply,
            } => {
                let _ = reply.send(self.node.create(&session, &module, now));
            }
            Command::Act { session, action } => {
                match self.node.record(&session).map(|r| r.owner.clone()) {
                    Some(owner) if owner != self.id => {
                        self.send(owner, Message::Act { session, action })
                    }
                    _ => self.node.act(&session, action, now),
                }
            }
            Command::Record { session, reply } => {
                let _ = reply.send(self.node.record(&session).cloned());
            }
            Command::Owned { reply } => {
                let _ = reply.send(self.node.owned());
            }
            Command::Describe { session, reply } => {
                let _ = reply.send(self.node.describe(&session));
            }
            Command::Drain => self.node.drain(now),
            Command::Shutdown { reply } => {
                self.transport.close();
                let _ = reply.send(());
                return false;
            }
        }
        true
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
            let (tx, mut rx) = mpsc::channel::<Frame>(self.queue);
            let connection = peer.connection.clone();
            let first = hello();
            tokio::spawn(async move {
                let Ok(mut stream) = connection.open_uni().await else {
                    return;
                };
                if write_frame(&mut stream, &first).await.is_err() {
                    return;
                }
                while let Some(frame) = rx.recv().await {
                    if write_frame(&mut stream, &frame).await.is_err() {
                        return;
                    }
                }
            });
            lanes.push(tx);
        }
        // Readers: every incoming lane stream starts with the peer's hello.
        {
            let connection = peer.connection.clone();
            let inputs = self.inputs.clone();
            let name = peer.name.clone();
            tokio::spawn(async move {
                while let Ok(mut stream) = connection.accept_uni().await {
                    let inputs = inputs.clone();
                    let name = name.clone();
                    let connection = connection.clone();
                    tokio::spawn(async move {
                        let Some(Frame::Hello {
                            node,
                            listen,
                            known,
                        }) = read_frame(&mut stream).await
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
                        while let Some(frame) = read_frame(&mut stream).await {
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
            },
        );
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

    /// Sends what the node wants sent and publishes its events.
    fn flush(&mut self) {
        for (to, message) in self.node.poll_transmit() {
            self.send(to, message);
        }
        for event in self.node.poll_events() {
            let _ = self.events.send(event);
        }
        self.links
            .retain(|_, link| link.connection.close_reason().is_none());
    }
}
