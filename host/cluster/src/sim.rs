//! A deterministic simulation of a whole cluster: many [`ClusterNode`]s, one
//! seeded random source, a network that loses, duplicates, delays and
//! reorders messages, partitions, pauses, crashes and restarts, drains with
//! replacement nodes, and clocks that drift within the bound. After every
//! step a [`Checker`] asserts the guarantees; a failing seed reproduces from
//! its number alone.
//!
//! Faults come from a seeded schedule ([`Sim::random`]) or from a scenario
//! written as text ([`Sim::scenario`]):
//!
//! ```text
//! nodes a b c
//! sessions 6
//! at 1000 crash a
//! at 3000 restart a
//! run 6000
//! expect owned
//! ```

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::crdt::Delta;
use crate::durable::Changes;
use crate::membership::NodeId;
use crate::node::{ClusterNode, Config, Durable, Event, Key, Message, Record, SessionState};
use crate::outbox::Outbox;

/// SplitMix64: small, fast, and the same on every platform.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..hi` (`lo` if empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            lo
        } else {
            lo + self.next_u64() % (hi - lo)
        }
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 1.0 < p
    }
}

/// The network and fault settings of a run.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// The protocol's settings, for every node.
    pub node: Config,
    /// One simulation step.
    pub step_ms: u64,
    /// Probability that a message is lost.
    pub loss: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Messages take 1 to this many ms (so they reorder).
    pub max_delay_ms: u64,
    /// Clock rates differ from real time by up to this many parts per million.
    pub max_drift_ppm: u64,
    /// Client actions offered per step, across all sessions.
    pub actions_per_step: f64,
    /// A node's writes take 0 to this many ms each, in order; a crash
    /// loses those not done, and what waits for them.
    pub max_write_ms: u64,
    /// Nodes of a host version below this one speak the previous wire
    /// version (2): a cluster of mixed versions, as in a rolling deploy.
    pub older_wire_below: u32,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            // Drains give up sooner than in production, so that a run sees
            // what follows a deadline.
            node: Config {
                drain_deadline_ms: 2_000,
                await_warm: true,
                ..Config::default()
            },
            step_ms: 5,
            loss: 0.05,
            duplicate: 0.02,
            max_delay_ms: 20,
            // Within the bound: 2 × 20,000 ppm × 500 ms = 20 ms < drift_ms.
            max_drift_ppm: 20_000,
            actions_per_step: 1.0,
            max_write_ms: 8,
            older_wire_below: 0,
        }
    }
}

#[derive(Debug)]
struct Slot {
    name: String,
    version: u32,
    node: Option<ClusterNode>,
    disk: Disk,
    /// Writes on their way to the disk: (done at, number, changes).
    writing: VecDeque<(u64, u64, Changes)>,
    /// The node's messages waiting for those writes.
    outbox: Outbox,
    /// Clock = offset + real × (1 + ppm / 10⁶).
    ppm: i64,
    offset: u64,
    paused_until: u64,
    restart_at: Option<u64>,
    gone: bool,
    /// What its last drain left behind (sessions not handed off).
    left: Option<usize>,
}

impl Slot {
    fn clock(&self, real: u64) -> u64 {
        let skew = (real as i128 * self.ppm as i128 / 1_000_000) as i64;
        (self.offset as i64 + real as i64 + skew) as u64
    }

    fn running(&self, real: u64) -> bool {
        self.node.is_some() && real >= self.paused_until
    }

    /// Drained away, or crashed with no restart to come.
    fn gone_for_good(&self) -> bool {
        self.gone || (self.node.is_none() && self.restart_at.is_none())
    }
}

/// A node's store as a host keeps it: journal entries by position, one
/// row per session, one per record; written only through the changes the
/// node hands out, so a restart from it checks that they miss nothing.
#[derive(Debug, Default)]
pub struct Disk {
    journals: BTreeMap<String, Vec<Vec<u8>>>,
    sessions: BTreeMap<String, SessionState>,
    records: Delta<Key, Record>,
}

impl Disk {
    /// Writes what a node handed out ([`ClusterNode::take_changes`]).
    pub fn write(&mut self, changes: Changes) {
        for change in changes.journals {
            let journal = self.journals.entry(change.session).or_default();
            journal.truncate(change.from as usize);
            journal.extend(change.entries.into_iter().map(|e| e.action));
            assert_eq!(
                journal.len() as u64,
                change.len,
                "a journal change with a gap"
            );
        }
        for (session, row) in changes.state.sessions {
            if row.is_empty() {
                self.sessions.remove(&session);
            } else {
                self.sessions.insert(session, row);
            }
        }
        self.records.extend(changes.state.records);
    }

    /// What a node restarting from this disk starts with.
    pub fn load(&self) -> Durable {
        let rows = self.sessions.iter().map(|(s, r)| (s.clone(), r.clone()));
        Durable::from_rows(rows, self.records.clone(), |session| {
            Ok::<_, ()>(self.journals.get(session).cloned().unwrap_or_default())
        })
        .expect("the simulated disk reads back")
    }
}

#[derive(Debug)]
struct InFlight {
    at: u64,
    order: u64,
    from: NodeId,
    to: NodeId,
    message: Message,
}

/// What the checker found, and what happened.
#[derive(Debug, Default)]
pub struct Report {
    /// Broken guarantees, with the step's time.
    pub violations: Vec<String>,
    /// Actions applied and acknowledged to clients.
    pub applied: u64,
    /// Actions acknowledged to clients.
    pub acked: u64,
    /// Promotions and transfers (ownership changes after creation).
    pub moves: u64,
    /// Journal messages (`Replicate`) sent: with copies that lag, a
    /// protocol that resent what is in flight on every ack would multiply
    /// them.
    pub replicates: u64,
    /// Sessions left with no owner because both holders, owner and
    /// replica, are gone for good (evicted, drained away or crashed with
    /// no restart): the one-replica limit, not a
    /// broken guarantee (see the crate's known limits).
    pub stranded: Vec<String>,
    /// What happened, for reading a failing seed.
    pub log: Vec<String>,
}

/// Asserts the guarantees after every step.
#[derive(Debug, Default)]
pub struct Checker {
    applied_by: BTreeMap<(String, u64), String>,
    max_epoch: BTreeMap<String, u64>,
    acked: BTreeMap<String, BTreeMap<u64, u64>>,
}

impl Checker {
    fn applied(
        &mut self,
        node: &str,
        session: &str,
        epoch: u64,
        seq: u64,
        journal: &[crate::node::JournalEntry],
    ) -> Vec<String> {
        let mut problems = Vec::new();
        let owner = self
            .applied_by
            .entry((session.to_owned(), epoch))
            .or_insert_with(|| node.to_owned());
        if owner != node {
            problems.push(format!(
                "two owners: {owner} and {node} both applied to {session} in epoch {epoch}"
            ));
        }
        let max = self.max_epoch.entry(session.to_owned()).or_insert(0);
        if epoch < *max {
            problems.push(format!(
                "{node} applied to {session} in epoch {epoch} after epoch {max} had applied"
            ));
        }
        *max = (*max).max(epoch);
        for (&acked_seq, &action) in self.acked.get(session).into_iter().flatten() {
            if acked_seq >= seq {
                problems.push(format!(
                    "{node} applied at {session}#{seq} over acknowledged entry #{acked_seq}: lost"
                ));
            } else if journal
                .get(acked_seq as usize - 1)
                .map(|e| action_id(&e.action))
                != Some(action)
            {
                problems.push(format!(
                    "{node}'s journal of {session} lacks acknowledged entry #{acked_seq}: lost"
                ));
            }
        }
        problems
    }

    fn acked(&mut self, session: &str, seq: u64, action: u64) -> Option<String> {
        let previous = self
            .acked
            .entry(session.to_owned())
            .or_default()
            .insert(seq, action);
        match previous {
            Some(other) if other != action => Some(format!(
                "{session}#{seq} acknowledged as action {other} and as {action}"
            )),
            _ => None,
        }
    }
}

/// The simulation's actions are numbers, carried as 8 bytes.
fn action_id(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_le_bytes)
}

/// One simulated cluster.
#[derive(Debug)]
pub struct Sim {
    config: SimConfig,
    rng: Rng,
    now: u64,
    slots: Vec<Slot>,
    network: Vec<InFlight>,
    order: u64,
    /// Nodes on one side of a partition (messages across are dropped).
    partition: Option<BTreeSet<String>>,
    sessions: Vec<String>,
    /// Sessions whose creation completed (owner leased by its replica).
    started: BTreeSet<String>,
    to_create: usize,
    next_action: u64,
    checker: Checker,
    report: Report,
    /// Log every message about this session (`BATON_SIM_TRACE`).
    trace: Option<String>,
}

fn client() -> NodeId {
    NodeId {
        name: "client".into(),
        boot: 0,
    }
}

impl Sim {
    /// An empty cluster.
    pub fn new(seed: u64, config: SimConfig) -> Self {
        Sim {
            config,
            rng: Rng::new(seed),
            now: 0,
            slots: Vec::new(),
            network: Vec::new(),
            order: 0,
            partition: None,
            sessions: Vec::new(),
            started: BTreeSet::new(),
            to_create: 0,
            next_action: 1,
            checker: Checker::default(),
            report: Report::default(),
            trace: std::env::var("BATON_SIM_TRACE").ok(),
        }
    }

    fn log(&mut self, line: String) {
        self.report.log.push(format!("{:>6} ms  {line}", self.now));
    }

    fn slot(&self, name: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.name == name)
    }

    /// Starts node `name` (again, if it ran before: same store, new boot).
    pub fn start(&mut self, name: &str, version: u32) {
        let boot = self.rng.next_u64();
        let ppm = self.rng.range(0, 2 * self.config.max_drift_ppm + 1) as i64
            - self.config.max_drift_ppm as i64;
        let offset = self.rng.range(0, 1_000_000);
        let index = match self.slot(name) {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    name: name.to_owned(),
                    version,
                    node: None,
                    disk: Disk::default(),
                    writing: VecDeque::new(),
                    outbox: Outbox::default(),
                    ppm,
                    offset,
                    paused_until: 0,
                    restart_at: None,
                    gone: false,
                    left: None,
                });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.version = version.max(slot.version);
        slot.restart_at = None;
        slot.gone = false;
        slot.writing.clear();
        slot.outbox = Outbox::default();
        let id = NodeId {
            name: name.to_owned(),
            boot,
        };
        let clock = slot.clock(self.now);
        let mut config = self.config.node.clone();
        if slot.version < self.config.older_wire_below {
            config.wire = config.wire.min(2);
        }
        let wire = config.wire;
        let mut node = ClusterNode::new(
            id.clone(),
            config,
            slot.version,
            1000,
            slot.disk.load(),
            clock,
        );
        // Discovery: every running node learns the new address, and it learns theirs.
        for other in self.slots.iter_mut().filter(|s| s.name != name) {
            if let Some(peer) = other.node.as_mut() {
                peer.add_peer(id.clone());
                node.add_peer(peer.id().clone());
                // As the transport negotiates it: the older of the two.
                let agreed = wire.min(peer.wire());
                peer.peer_wire(name, agreed);
                node.peer_wire(&other.name, agreed);
            }
        }
        self.slots[index].node = Some(node);
        self.log(format!("start {id} (version {version})"));
    }

    /// Kills `name` at once; its store survives. `restart_in` brings it back.
    pub fn crash(&mut self, name: &str, restart_in: Option<u64>) {
        let now = self.now;
        if let Some(i) = self.slot(name)
            && let Some(node) = self.slots[i].node.take()
        {
            // What reached its disk is what it restarts with: writes still
            // on their way are lost, with the messages waiting for them.
            drop(node);
            self.slots[i].writing.clear();
            self.slots[i].outbox = Outbox::default();
            self.slots[i].restart_at = restart_in.map(|d| now + d);
            self.slots[i].paused_until = 0;
            self.log(format!("crash {name}"));
        }
    }

    /// Freezes `name` for `ms` (a GC pause, a stopped VM): its clock runs on.
    pub fn pause(&mut self, name: &str, ms: u64) {
        if let Some(i) = self.slot(name) {
            self.slots[i].paused_until = self.now + ms;
            self.log(format!("pause {name} for {ms} ms"));
        }
    }

    /// Cuts the cluster in two: `side` and everyone else.
    pub fn partition(&mut self, side: BTreeSet<String>) {
        self.log(format!("partition {side:?} | rest"));
        self.partition = Some(side);
    }

    /// The operator evicts every node that drained away or crashed for good:
    /// their sessions' replicas are replaced without their release.
    pub fn evict_gone(&mut self) {
        let gone: Vec<String> = self
            .slots
            .iter()
            .filter(|s| s.gone_for_good())
            .map(|s| s.name.clone())
            .collect();
        // Through any one running node; the records carry it to the rest.
        let Some(i) = self.slots.iter().position(|s| s.node.is_some()) else {
            return;
        };
        for name in &gone {
            self.log(format!(
                "operator evicts {name} (through {})",
                self.slots[i].name
            ));
            let clock = self.slots[i].clock(self.now);
            if let Some(node) = self.slots[i].node.as_mut() {
                node.evict(name, clock);
            }
            self.collect(i);
        }
    }

    /// Ends any partition.
    pub fn heal(&mut self) {
        self.partition = None;
        self.log("heal".into());
    }

    /// Drains `name`: it hands its sessions off and exits when done.
    pub fn drain(&mut self, name: &str) {
        let clock = self.slot(name).map(|i| self.slots[i].clock(self.now));
        if let (Some(i), Some(clock)) = (self.slot(name), clock)
            && let Some(node) = self.slots[i].node.as_mut()
        {
            node.drain(clock);
            self.log(format!("drain {name}"));
        }
    }

    /// Creates `n` sessions as soon as the cluster can place them.
    pub fn create_sessions(&mut self, n: usize) {
        self.to_create += n;
    }

    /// Nodes a draining node is handing sessions to now.
    pub fn handoff_targets(&self, name: &str) -> Vec<String> {
        self.slot(name)
            .and_then(|i| self.slots[i].node.as_ref())
            .map(|n| n.handoff_targets().into_iter().map(|id| id.name).collect())
            .unwrap_or_default()
    }

    /// Whether `name` runs.
    pub fn running(&self, name: &str) -> bool {
        self.slot(name)
            .is_some_and(|i| self.slots[i].node.is_some())
    }

    /// Whether `name` drained and exited.
    pub fn gone(&self, name: &str) -> bool {
        self.slot(name).is_some_and(|i| self.slots[i].gone)
    }

    /// The simulated time.
    pub fn now(&self) -> u64 {
        self.now
    }

    fn live_names(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.node.is_some())
            .map(|s| s.name.clone())
            .collect()
    }

    fn cut(&self, a: &str, b: &str) -> bool {
        self.partition
            .as_ref()
            .is_some_and(|side| side.contains(a) != side.contains(b))
    }

    fn post(&mut self, from: NodeId, to: NodeId, message: Message) {
        if matches!(message, Message::Replicate { .. }) {
            self.report.replicates += 1;
        }
        let lost = self.rng.chance(self.config.loss);
        if let Some(session) = &self.trace {
            let text = format!("{message:?}");
            if text.contains(&format!("\"{session}\"")) && !matches!(message, Message::Delta { .. })
            {
                let text: String = text.chars().take(300).collect();
                self.log(format!(
                    "{} -> {}{}: {text}",
                    from.name,
                    to.name,
                    if lost { " (lost)" } else { "" }
                ));
            }
        }
        if lost {
            return;
        }
        let copies = if self.rng.chance(self.config.duplicate) {
            2
        } else {
            1
        };
        for _ in 0..copies {
            let at = self.now + self.rng.range(1, self.config.max_delay_ms + 1);
            self.order += 1;
            self.network.push(InFlight {
                at,
                order: self.order,
                from: from.clone(),
                to: to.clone(),
                message: message.clone(),
            });
        }
    }

    /// Advances one step: restarts, deliveries, client actions, ticks, checks.
    pub fn step(&mut self) {
        self.now += self.config.step_ms;
        let now = self.now;
        // Restarts that are due.
        let due: Vec<(String, u32)> = self
            .slots
            .iter()
            .filter(|s| s.restart_at.is_some_and(|t| t <= now))
            .map(|s| (s.name.clone(), s.version))
            .collect();
        for (name, version) in due {
            self.start(&name, version);
        }
        self.create_due();
        self.complete_writes();
        // Deliveries, in time order; a paused node's wait in its buffers.
        self.network.sort_by_key(|m| (m.at, m.order));
        let mut keep = Vec::new();
        let mut deliver = Vec::new();
        for m in std::mem::take(&mut self.network) {
            if m.at > now {
                keep.push(m);
                continue;
            }
            match self.slot(&m.to.name) {
                Some(i) if self.slots[i].node.as_ref().is_some_and(|n| *n.id() == m.to) => {
                    if !self.slots[i].running(now) {
                        keep.push(m);
                    } else if !self.cut(&m.from.name, &m.to.name) {
                        deliver.push((i, m));
                    }
                }
                _ => {}
            }
        }
        self.network = keep;
        for (i, m) in deliver {
            let clock = self.slots[i].clock(now);
            if let Some(node) = self.slots[i].node.as_mut() {
                node.handle(m.from, m.message, clock);
            }
            self.collect(i);
        }
        self.client_actions();
        for i in 0..self.slots.len() {
            if self.slots[i].running(now) {
                let clock = self.slots[i].clock(now);
                if let Some(node) = self.slots[i].node.as_mut() {
                    node.tick(clock);
                }
                self.collect(i);
            }
        }
    }

    /// Writes that are done reach the disk, in order, and release what
    /// waited for them.
    fn complete_writes(&mut self) {
        for i in 0..self.slots.len() {
            let Some(from) = self.slots[i].node.as_ref().map(|n| n.id().clone()) else {
                continue;
            };
            while let Some((at, ..)) = self.slots[i].writing.front()
                && *at <= self.now
            {
                let Some((_, generation, changes)) = self.slots[i].writing.pop_front() else {
                    break;
                };
                self.slots[i].disk.write(changes);
                for (to, message) in self.slots[i].outbox.written(generation) {
                    self.post(from.clone(), to, message);
                }
            }
        }
    }

    fn create_due(&mut self) {
        while self.to_create > 0 {
            let names = self.live_names();
            if names.is_empty() {
                return;
            }
            let pick = self.rng.range(0, names.len() as u64) as usize;
            let i = self.slot(&names[pick]);
            let Some(i) = i.filter(|i| self.slots[*i].running(self.now)) else {
                return;
            };
            let session = format!("s{}", self.sessions.len() + 1);
            let clock = self.slots[i].clock(self.now);
            let Some(node) = self.slots[i].node.as_mut() else {
                return;
            };
            match node.create(&session, "minotaur@1.0.0", clock) {
                Ok(record) => {
                    self.log(format!(
                        "create {session}: owner {}, replica {}",
                        record.owner, record.replica
                    ));
                    self.sessions.push(session);
                    self.to_create -= 1;
                    self.collect(i);
                }
                Err(_) => return, // not formed yet: next step
            }
        }
    }

    /// Clients send actions to the owner as some node's records name it.
    fn client_actions(&mut self) {
        if self.sessions.is_empty() {
            return;
        }
        let mut budget = self.config.actions_per_step;
        while budget > 0.0 {
            if budget < 1.0 && !self.rng.chance(budget) {
                break;
            }
            budget -= 1.0;
            let session =
                self.sessions[self.rng.range(0, self.sessions.len() as u64) as usize].clone();
            let names = self.live_names();
            if names.is_empty() {
                return; // every node is down: nobody to ask
            }
            let asked = &names[self.rng.range(0, names.len() as u64) as usize];
            let owner = self
                .slot(asked)
                .and_then(|i| self.slots[i].node.as_ref())
                .and_then(|n| n.record(&session))
                .map(|r| r.owner.clone());
            if let Some(owner) = owner {
                let action = self.next_action;
                self.next_action += 1;
                self.post(
                    client(),
                    owner,
                    Message::Act {
                        session,
                        action: action.to_le_bytes().to_vec(),
                    },
                );
            }
        }
    }

    /// Sends what node `i` wants sent and checks what it reports.
    fn collect(&mut self, i: usize) {
        let Some(node) = self.slots[i].node.as_mut() else {
            return;
        };
        // Handed to the disk before anything is sent, as a real host does;
        // what depends on it waits in the outbox.
        let changes = node.take_changes();
        let out = node.poll_transmit();
        let events = node.poll_events();
        let from = node.id().clone();
        if !changes.is_empty() {
            let generation = self.slots[i].outbox.issue(&changes);
            let after = self.slots[i].writing.back().map_or(0, |(at, ..)| *at);
            let at = after.max(self.now + self.rng.range(0, self.config.max_write_ms + 1));
            self.slots[i].writing.push_back((at, generation, changes));
        }
        for (to, message) in out.at_once {
            self.post(from.clone(), to, message);
        }
        for (to, message) in out.ordered {
            if let Some((to, message)) = self.slots[i].outbox.send(to, message) {
                self.post(from.clone(), to, message);
            }
        }
        let name = self.slots[i].name.clone();
        let mut warmed = Vec::new();
        for event in events {
            match event {
                Event::Applied {
                    session,
                    epoch,
                    seq,
                    ..
                } => {
                    self.report.applied += 1;
                    let journal = self.slots[i]
                        .node
                        .as_ref()
                        .and_then(|n| n.journal(&session))
                        .unwrap_or_default();
                    let problems = self.checker.applied(&name, &session, epoch, seq, journal);
                    for p in problems {
                        self.violation(p);
                    }
                }
                Event::Acked {
                    session,
                    seq,
                    action,
                    ..
                } => {
                    self.report.acked += 1;
                    if let Some(p) = self.checker.acked(&session, seq, action_id(&action)) {
                        self.violation(p);
                    }
                }
                Event::Owner { session, epoch } => {
                    if epoch > 1 {
                        self.report.moves += 1;
                    }
                    self.log(format!("{name} owns {session} in epoch {epoch}"));
                }
                Event::SteppedDown { session, epoch, .. } => {
                    self.log(format!("{name} stands down from {session} (epoch {epoch})"));
                }
                Event::Drained { left } => {
                    self.log(format!("{name} drained ({left} left); exits"));
                    self.slots[i].left = Some(left);
                    // Its disk stays, for a restart under its name.
                    self.slots[i].node = None;
                    self.slots[i].gone = true;
                    return;
                }
                Event::Membership(change) => self.log(format!("{name} sees {change:?}")),
                Event::Started { session } => {
                    self.started.insert(session);
                }
                Event::ReplicaChanged {
                    session,
                    replica,
                    len,
                } => {
                    self.log(format!(
                        "{name}: {session}'s replica is now {replica} ({len} entries)"
                    ));
                }
                Event::Refused { .. } => {}
                // The host's snapshot to the target, taken as done at once;
                // its effect is only on when the handoff may fence.
                Event::HandingOff { session, to } => warmed.push((session, to)),
                Event::Fenced {
                    session, len, to, ..
                } => {
                    self.log(format!("{name} fences {session} at {len} for {to}"));
                }
                Event::HandoffCalledOff { session, .. } => {
                    self.log(format!("{name} calls off the handoff of {session}"));
                }
            }
        }
        if !warmed.is_empty()
            && let Some(node) = self.slots[i].node.as_mut()
        {
            for (session, to) in warmed {
                node.warmed(&session, &to, self.now);
            }
            self.collect(i);
        }
    }

    fn violation(&mut self, problem: String) {
        self.log(format!("VIOLATION {problem}"));
        self.report
            .violations
            .push(format!("at {} ms: {problem}", self.now));
    }

    /// Runs steps until `until` (simulated ms).
    pub fn run_until(&mut self, until: u64) {
        while self.now < until {
            self.step();
        }
    }

    /// Checks that every session has exactly one serving owner holding every
    /// acknowledged entry, and that every running node has the same records.
    pub fn check_settled(&mut self) {
        let now = self.now;
        let records: Vec<_> = self
            .slots
            .iter()
            .filter_map(|s| s.node.as_ref())
            .map(|n| n.records())
            .collect();
        if records.windows(2).any(|w| w[0] != w[1]) {
            self.violation("running nodes disagree on the records after healing".into());
        }
        // A creation that never completed was never acknowledged to anyone.
        for session in self.started.clone() {
            let serving: Vec<(usize, u64)> = self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| Some((i, s.node.as_ref()?.serving(&session, s.clock(now))?)))
                .collect();
            match serving.as_slice() {
                [(i, _)] => {
                    let journal = self.slots[*i]
                        .node
                        .as_ref()
                        .and_then(|n| n.journal(&session).map(<[_]>::to_vec))
                        .unwrap_or_default();
                    let acked = self
                        .checker
                        .acked
                        .get(&session)
                        .cloned()
                        .unwrap_or_default();
                    for (seq, action) in acked {
                        if journal.get(seq as usize - 1).map(|e| action_id(&e.action))
                            != Some(action)
                        {
                            self.violation(format!("{session}'s owner lacks acknowledged #{seq}"));
                        }
                    }
                }
                [] => {
                    let states: Vec<String> = self
                        .slots
                        .iter()
                        .filter_map(|s| {
                            Some(format!(
                                "{}: {}",
                                s.name,
                                s.node.as_ref()?.describe(&session)
                            ))
                        })
                        .collect();
                    let record = self
                        .slots
                        .iter()
                        .find_map(|s| s.node.as_ref()?.record(&session).cloned());
                    self.log(format!("{session}: record {record:?}"));
                    for state in states {
                        self.log(format!("  {state}"));
                    }
                    // Evicted, or drained away or crashed with no restart.
                    let gone = |name: &str| {
                        let evicted = self
                            .slots
                            .iter()
                            .any(|s| s.node.as_ref().is_some_and(|n| n.is_evicted(name)));
                        evicted
                            || self
                                .slots
                                .iter()
                                .any(|s| s.name == name && s.gone_for_good())
                    };
                    let both_gone = record
                        .as_ref()
                        .is_some_and(|r| gone(&r.owner.name) && gone(&r.replica));
                    if both_gone {
                        self.log(format!("{session} lost both holders"));
                        self.report.stranded.push(session.clone());
                    } else {
                        self.violation(format!("{session} has no owner after healing"));
                    }
                }
                many => self.violation(format!("{session} has {} serving owners", many.len())),
            }
        }
    }

    /// The report so far.
    pub fn report(&self) -> &Report {
        &self.report
    }

    /// Consumes the simulation for its report.
    pub fn finish(self) -> Report {
        self.report
    }

    /// Runs a scenario written as text, one statement per line (`#` starts
    /// a comment), with the network faults of `config` drawn from `seed`:
    ///
    /// - `config drain_deadline_ms=300` (any of `lease_ms`, `detect_ms`,
    ///   `drift_ms`, `drain_deadline_ms`, `max_moves`, `loss`,
    ///   `max_write_ms`, `actions_per_step`)
    /// - `nodes a b c [version N]`: start nodes at time 0
    /// - `sessions N`: create N sessions once the cluster can place them
    /// - `at MS start X [version N]`, `at MS crash X [restart-after MS]`,
    ///   `at MS pause X MS`, `at MS drain X`, `at MS partition A,B` (A and B
    ///   cut off from the rest), `at MS heal`, `at MS crash-handoff-target X`
    ///   (crash the node X is handing a session to, if any), `at MS evict-gone`
    /// - `run MS`: run until then, checking after every step
    /// - `expect owned` (every session has exactly one serving owner with
    ///   every acknowledged entry, and the records agree), `expect gone X…`,
    ///   `expect handed-off X…` (X's drain left nothing behind),
    ///   `expect owns-nothing X…`, `expect owned-by X…` (every owner is one
    ///   of these), `expect moves >= N`
    ///
    /// Statements run in order; `at` lines are scheduled relative to the
    /// start. A failed expectation is a violation in the report.
    pub fn scenario(seed: u64, mut config: SimConfig, text: &str) -> Result<Report, String> {
        let mut lines = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if !line.is_empty() {
                lines.push((
                    n + 1,
                    line.split_whitespace()
                        .map(str::to_owned)
                        .collect::<Vec<_>>(),
                ));
            }
        }
        let bad = |n: usize, why: &str| format!("scenario line {n}: {why}");
        let number = |n: usize, word: Option<&String>| -> Result<u64, String> {
            word.and_then(|w| w.parse().ok())
                .ok_or_else(|| bad(n, "expected a number"))
        };
        for (n, words) in &lines {
            if words[0] == "config" {
                for setting in &words[1..] {
                    let (key, value) = setting
                        .split_once('=')
                        .ok_or_else(|| bad(*n, "settings are key=value"))?;
                    let ms = || value.parse::<u64>().map_err(|_| bad(*n, "not a number"));
                    match key {
                        "lease_ms" => config.node.lease_ms = ms()?,
                        "detect_ms" => config.node.detect_ms = ms()?,
                        "drift_ms" => config.node.drift_ms = ms()?,
                        "drain_deadline_ms" => config.node.drain_deadline_ms = ms()?,
                        "max_moves" => config.node.max_moves = ms()? as usize,
                        "max_write_ms" => config.max_write_ms = ms()?,
                        "actions_per_step" => {
                            config.actions_per_step =
                                value.parse().map_err(|_| bad(*n, "not a number"))?
                        }
                        "loss" => {
                            config.loss = value.parse().map_err(|_| bad(*n, "not a number"))?
                        }
                        _ => return Err(bad(*n, &format!("unknown setting {key}"))),
                    }
                }
            }
        }
        let mut sim = Sim::new(seed, config);
        let mut scheduled: Vec<(u64, usize, Vec<String>)> = Vec::new();
        for (n, words) in lines {
            match words[0].as_str() {
                "config" => {}
                "nodes" => {
                    let (names, version) = match words.iter().position(|w| w == "version") {
                        Some(i) => (&words[1..i], number(n, words.get(i + 1))? as u32),
                        None => (&words[1..], 1),
                    };
                    for name in names {
                        sim.start(name, version);
                    }
                }
                "sessions" => sim.create_sessions(number(n, words.get(1))? as usize),
                "at" => {
                    let at = number(n, words.get(1))?;
                    if words.len() < 3 {
                        return Err(bad(n, "`at MS` needs a command"));
                    }
                    scheduled.push((at, n, words[2..].to_vec()));
                }
                "run" => {
                    let until = number(n, words.get(1))?;
                    scheduled.sort_by_key(|(at, n, _)| (*at, *n));
                    while sim.now < until {
                        sim.step();
                        while let Some((at, _, _)) = scheduled.first()
                            && *at <= sim.now
                        {
                            let (_, n, command) = scheduled.remove(0);
                            sim.command(n, &command)?;
                        }
                    }
                }
                "expect" => sim.expect(n, &words[1..])?,
                other => return Err(bad(n, &format!("unknown statement `{other}`"))),
            }
        }
        Ok(sim.finish())
    }

    fn command(&mut self, n: usize, words: &[String]) -> Result<(), String> {
        let bad = |why: &str| format!("scenario line {n}: {why}");
        let name = || words.get(1).cloned().ok_or_else(|| bad("which node?"));
        let number = |i: usize| words.get(i).and_then(|w| w.parse::<u64>().ok());
        match words[0].as_str() {
            "start" => {
                let version = match words.get(2).map(String::as_str) {
                    Some("version") => number(3).ok_or_else(|| bad("version N"))? as u32,
                    _ => 1,
                };
                self.start(&name()?, version);
            }
            "crash" => {
                let restart = match words.get(2).map(String::as_str) {
                    Some("restart-after") => {
                        Some(number(3).ok_or_else(|| bad("restart-after MS"))?)
                    }
                    _ => None,
                };
                self.crash(&name()?, restart);
            }
            "restart" => {
                let name = name()?;
                let version = self.slot(&name).map_or(1, |i| self.slots[i].version);
                self.start(&name, version);
            }
            "pause" => {
                let ms = number(2).ok_or_else(|| bad("pause X MS"))?;
                self.pause(&name()?, ms);
            }
            "drain" => self.drain(&name()?),
            "partition" => {
                let side = words.get(1).ok_or_else(|| bad("partition A,B"))?;
                self.partition(side.split(',').map(str::to_owned).collect());
            }
            "heal" => self.heal(),
            "crash-handoff-target" => {
                let targets = self.handoff_targets(&name()?);
                let Some(target) = targets.first().cloned() else {
                    return Err(bad("that node is handing nothing off right now"));
                };
                self.log(format!("crash the handoff target {target}"));
                self.crash(&target, Some(500));
            }
            "evict-gone" => self.evict_gone(),
            other => return Err(bad(&format!("unknown command `{other}`"))),
        }
        Ok(())
    }

    fn expect(&mut self, n: usize, words: &[String]) -> Result<(), String> {
        let fail = |what: String| format!("line {n}: expected {what}");
        match words.first().map(String::as_str) {
            Some("owned") => self.check_settled(),
            Some("gone") => {
                for name in &words[1..] {
                    if !self.gone(name) {
                        self.violation(fail(format!("{name} to have drained and exited")));
                    }
                }
            }
            Some("handed-off") => {
                for name in &words[1..] {
                    let left = self.slot(name).and_then(|i| self.slots[i].left);
                    if left != Some(0) {
                        self.violation(fail(format!(
                            "{name}'s drain to hand every session off, not to leave {left:?}"
                        )));
                    }
                }
            }
            Some("owns-nothing") => {
                for name in &words[1..] {
                    let owned = self
                        .slot(name)
                        .and_then(|i| self.slots[i].node.as_ref())
                        .map(|node| node.owned())
                        .unwrap_or_default();
                    if !owned.is_empty() {
                        self.violation(fail(format!("{name} to own nothing, not {owned:?}")));
                    }
                }
            }
            Some("owned-by") => {
                let allowed: BTreeSet<&String> = words[1..].iter().collect();
                for slot in &self.slots {
                    let owned = slot
                        .node
                        .as_ref()
                        .map(|node| node.owned())
                        .unwrap_or_default();
                    if !owned.is_empty() && !allowed.contains(&slot.name) {
                        let problem = fail(format!(
                            "only {allowed:?} to own sessions, but {} owns {owned:?}",
                            slot.name
                        ));
                        self.report.violations.push(problem);
                    }
                }
            }
            Some("moves") => {
                let at_least = words
                    .get(2)
                    .and_then(|w| w.parse::<u64>().ok())
                    .ok_or_else(|| format!("scenario line {n}: expect moves >= N"))?;
                if self.report.moves < at_least {
                    let problem = fail(format!(
                        "at least {at_least} ownership moves, saw {}",
                        self.report.moves
                    ));
                    self.violation(problem);
                }
            }
            _ => return Err(format!("scenario line {n}: unknown expectation")),
        }
        Ok(())
    }

    /// A seeded run: `nodes` nodes, `sessions` sessions, `faults_ms` of
    /// random faults (crashes with restarts, pauses past the lease,
    /// partitions, drains with a newer replacement node), then the network
    /// heals for `heal_ms` and the settled state is checked.
    pub fn random(
        seed: u64,
        config: SimConfig,
        nodes: usize,
        sessions: usize,
        faults_ms: u64,
        heal_ms: u64,
    ) -> Report {
        let mut sim = Sim::new(seed, config);
        for n in 0..nodes {
            sim.start(&format!("n{n}"), 1);
        }
        sim.create_sessions(sessions);
        let mut next_name = nodes;
        let lease = sim.config.node.lease_ms;
        while sim.now < faults_ms {
            sim.step();
            let roll = sim.rng.range(0, 1000);
            let live = sim.live_names();
            if live.len() < 3 {
                continue;
            }
            let victim = live[sim.rng.range(0, live.len() as u64) as usize].clone();
            match roll {
                0..2 => {
                    let back = sim.rng.range(100, 2 * lease);
                    sim.crash(&victim, Some(back));
                }
                2..4 => {
                    let ms = sim.rng.range(lease, 4 * lease);
                    sim.pause(&victim, ms);
                }
                4..6 if sim.partition.is_none() => {
                    let side: BTreeSet<String> = live
                        .iter()
                        .filter(|_| sim.rng.chance(0.4))
                        .cloned()
                        .collect();
                    sim.partition(side);
                }
                6..16 if sim.partition.is_some() => sim.heal(),
                16..17 => {
                    let draining = sim
                        .slots
                        .iter()
                        .filter(|s| s.node.as_ref().is_some_and(|n| n.draining()))
                        .count();
                    if draining == 0 {
                        let version = sim.slots.iter().map(|s| s.version).max().unwrap_or(1) + 1;
                        sim.start(&format!("n{next_name}"), version);
                        next_name += 1;
                        sim.drain(&victim);
                    }
                }
                _ => {}
            }
        }
        sim.heal();
        for i in 0..sim.slots.len() {
            sim.slots[i].paused_until = 0;
            if sim.slots[i].restart_at.is_some() {
                sim.slots[i].restart_at = Some(sim.now);
            }
        }
        sim.config.loss = 0.0;
        sim.config.duplicate = 0.0;
        // The operator evicts what is gone a second later, once the records
        // of the healed cluster have spread.
        sim.run_until(faults_ms + 1_000);
        sim.evict_gone();
        sim.run_until(faults_ms + heal_ms);
        sim.check_settled();
        sim.finish()
    }
}
