//! The node's core: modules, sessions, the durable call path, recovery,
//! ticks and hibernation. No HTTP here (see `api`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use baton_cluster::Refusal;
use baton_runtime::{
    Call, CallError, JournalEntry, Reply, RuleModule, Runtime, RuntimeConfig, Session,
};
use baton_sdk::wire::{self, Player, SetupArgs, Viewer};
use baton_store::{GroupCommit, Published, RedbStore, SnapshotWrite, Store, StoreError, Write};
use baton_transport::{AppendError, Mesh, Unconfirmed};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Notify, broadcast, oneshot, watch};

use crate::config::NodeConfig;
use crate::error::NodeError;
use crate::snapshots::{self, Capture, Shipper, SnapshotMeta};
use crate::tokens;

/// The events one journaled call produced: pushed to clients under the
/// call's journal position, which is also how they resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventBatch {
    /// The journal position of the call.
    pub seq: u64,
    /// Its events, each with its audience.
    pub events: Vec<wire::Event>,
}

/// A session as stored: everything needed to resume it besides its
/// snapshot and journal. In a cluster it travels in the session's
/// replicated record, so that any node can resume it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionRecord {
    /// The session's id.
    pub id: String,
    /// `name@version` of its rules.
    pub module: String,
    /// The exact module, as a hex SHA-256.
    pub module_hash: String,
    /// Its players, with the hash of each one's token.
    pub players: Vec<PlayerRecord>,
    /// Options as given at creation (JSON).
    pub options: String,
    /// The session's seed.
    pub seed: u64,
    /// Its limits: every host enforces the same ones.
    pub limits: baton_runtime::Limits,
    /// When it was created (ms since the Unix epoch).
    pub created_ms: u64,
}

impl SessionRecord {
    /// The node's record of session `id`, as carried in its cluster record.
    pub(crate) fn from_cluster(
        id: &str,
        record: &baton_cluster::node::SessionRecord,
    ) -> Result<Self, NodeError> {
        serde_json::from_slice(&record.meta)
            .map_err(|e| NodeError::Internal(format!("the record of {id} is unreadable: {e}")))
    }
}

/// A player of a stored session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PlayerRecord {
    /// Id.
    pub id: String,
    /// Display name.
    pub name: String,
    /// SHA-256 of the player's token, hex.
    pub token_sha256: String,
}

/// A module as the node lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ModuleSummary {
    /// `name@version`.
    pub id: String,
    /// Game name.
    pub name: String,
    /// Rules version.
    pub version: String,
    /// State schema.
    pub state_schema: u32,
    /// SHA-256 of the component, hex.
    pub hash: String,
    /// Component size in bytes.
    pub size: usize,
}

/// What creating a session asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSession {
    /// `name@version`, or a game name for its newest version.
    pub module: String,
    /// The players.
    pub players: Vec<Player>,
    /// Game options (any JSON); the game's defaults if absent.
    #[serde(default)]
    pub options: Option<serde_json::Value>,
    /// The seed; random if absent.
    #[serde(default)]
    pub seed: Option<u64>,
}

/// A created session: its id and one secret token per player.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Created {
    /// The session id.
    pub id: String,
    /// `name@version` it runs.
    pub module: String,
    /// Player id → token. Shown once; only hashes are kept.
    pub tokens: BTreeMap<String, String>,
}

/// A session as the node lists it.
#[derive(Clone, Debug, Serialize)]
pub struct SessionSummary {
    /// Id.
    pub id: String,
    /// `name@version`.
    pub module: String,
    /// Player ids.
    pub players: Vec<String>,
    /// Journal entries applied.
    pub position: u64,
    /// `running` or `finished`.
    pub status: &'static str,
    /// The result, once finished.
    pub result: Option<serde_json::Value>,
    /// Whether an instance is live (else hibernated to its snapshot).
    pub live: bool,
    /// Ownership epoch (1 on a single node).
    pub epoch: u64,
    /// Its last upgrade, if it had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<crate::upgrade::UpgradeState>,
    /// How it came to this node, if it was handed over or failed over here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival: Option<crate::handoff::Arrival>,
}

/// How an action ended, as told to the player who sent it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum ActOutcome {
    /// Applied, at journal position `seq`.
    Accepted {
        /// Position.
        seq: u64,
    },
    /// Refused by the rules, at journal position `seq`.
    Rejected {
        /// Position.
        seq: u64,
        /// Why, for the player.
        reason: String,
    },
}

impl ActOutcome {
    /// The journal position of the action.
    pub(crate) fn seq(&self) -> u64 {
        match self {
            ActOutcome::Accepted { seq } | ActOutcome::Rejected { seq, .. } => *seq,
        }
    }
}

/// One session on this node.
pub(crate) struct SessionCell {
    pub(crate) record: SessionRecord,
    /// The module the session started on: what its journal's first entry
    /// runs (an upgrade changes [`SessionState::module`]).
    origin: Arc<RuleModule>,
    pub(crate) state: Arc<Mutex<SessionState>>,
    pub(crate) events: broadcast::Sender<Arc<EventBatch>>,
    ticker: Notify,
    /// Changes when the session moved to another node: its players'
    /// connections here follow it, its ticker stops.
    pub(crate) moved: watch::Sender<Location>,
    /// Ships its checkpoints to its replica (in a cluster).
    shipper: Arc<Shipper>,
    /// Taken over here and no action applied yet: the next one ends the
    /// cutover (see `handoff`).
    arriving: AtomicBool,
    /// Being handed off: the target gets a warm snapshot, and background
    /// snapshots here would only load the disk its players wait on.
    pub(crate) leaving: AtomicBool,
    /// The target is (nearly) warm: the core may fence at any moment, so
    /// each call first hashes the state (see [`SessionState::digest_before`]).
    /// Not while the warm snapshot is on its way: for a large session
    /// that would read all its memory on every call for no gain.
    pub(crate) fence_near: AtomicBool,
    /// Bumped when the session went back to an earlier state (an upgrade
    /// rolled back): its players' connections resync.
    pub(crate) resets: watch::Sender<u64>,
}

/// Where a session is, for the connections of its players on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Location {
    /// Served here.
    Here,
    /// Moved away: to this node, when this one handed it over.
    Moved(Option<String>),
}

pub(crate) struct SessionState {
    /// `None` when hibernated: the store holds it.
    pub(crate) live: Option<Session>,
    /// The module the session runs now.
    pub(crate) module: Arc<RuleModule>,
    /// An upgrade on trial: what the session goes back to if the new
    /// version fails.
    pub(crate) trial: Option<crate::upgrade::Trial>,
    /// How the session's last upgrade went, for the operator.
    pub(crate) upgrade: Option<crate::upgrade::UpgradeState>,
    position: u64,
    /// Recent event batches, for clients that reconnect.
    ring: VecDeque<Arc<EventBatch>>,
    /// Every batch at or after this position is in `ring`.
    ring_from: u64,
    /// Recent client action ids and what came of them.
    acts: ActMemory,
    pub(crate) next_tick: Option<u64>,
    pub(crate) status: wire::Status,
    since_snapshot: u64,
    last_used: Instant,
    /// While a handoff is under way, the memory hash before the latest
    /// call, with its position: the core fences before the host hears of
    /// it, so the call in that window is refused and its instance dropped,
    /// and the hash at the fence is then this one, not a rebuild.
    digest_before: Option<(u64, [u8; 32])>,
}

/// How long a request for a session this node is taking over waits for
/// the takeover to finish.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// How long a drained node waits for its last fence notes to leave.
const NOTES_WAIT: Duration = Duration::from_secs(2);

/// How long a node that does not know a session waits for its record
/// before it says there is no such session: one created through another
/// node reaches every node within a few heartbeats.
const RECORD_WAIT: Duration = Duration::from_secs(1);

/// Client action ids remembered per session.
pub(crate) const ACT_MEMORY: usize = 4096;

/// Sealed snapshots up to this size ride in the journal's group commits
/// (a few 4 KiB pages more in a commit cost less than a second fsync);
/// larger ones commit apart (see [`Node::put_snapshot`]).
const INLINE_SNAPSHOT_BYTES: usize = 64 * 1024;

/// Recent client action ids and what came of them, oldest first.
#[derive(Default)]
struct ActMemory {
    outcomes: HashMap<(String, String), ActOutcome>,
    order: VecDeque<(String, String)>,
}

impl ActMemory {
    fn get(&self, player: &str, client_id: &str) -> Option<&ActOutcome> {
        self.outcomes
            .get(&(player.to_owned(), client_id.to_owned()))
    }

    fn remember(&mut self, player: String, client_id: String, outcome: ActOutcome) {
        let key = (player, client_id);
        self.outcomes.insert(key.clone(), outcome);
        self.order.push_back(key);
        while self.order.len() > ACT_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
    }

    /// Every remembered id as `(player, id, outcome)`, oldest first.
    fn entries(&self) -> Vec<(String, String, ActOutcome)> {
        self.order
            .iter()
            .filter_map(|k| {
                let outcome = self.outcomes.get(k)?.clone();
                Some((k.0.clone(), k.1.clone(), outcome))
            })
            .collect()
    }
}

/// The node: one runtime, one store, many sessions.
pub struct Node {
    pub(crate) config: NodeConfig,
    runtime: Runtime,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) journal: Arc<GroupCommit>,
    /// Large snapshots commit apart, so the journal's commits stay small.
    large_snapshots: GroupCommit<SnapshotWrite>,
    /// The cluster, once joined (see `cluster.rs`).
    pub(crate) mesh: OnceLock<Arc<Mesh>>,
    /// Counts the cluster's journal changes written to the store here.
    pub(crate) journals_written: Arc<watch::Sender<u64>>,
    modules: RwLock<BTreeMap<String, Arc<RuleModule>>>,
    sessions: RwLock<HashMap<String, Arc<SessionCell>>>,
    operator_token_sha256: String,
    shutting_down: AtomicBool,
    /// Draining: not ready, sessions being handed off.
    draining: AtomicBool,
    /// Player WebSockets open on this node.
    pub(crate) players: watch::Sender<usize>,
    /// Fence notes on their way to handoff targets: a drain ends only
    /// once they left, so that each target can check its arrival.
    pub(crate) fence_notes: watch::Sender<usize>,
    /// Counts sessions taken over here, for those waiting on one.
    adopted: watch::Sender<u64>,
    /// How sessions taken over here arrived (see `handoff`).
    arrivals: std::sync::Mutex<HashMap<String, crate::handoff::Arrival>>,
    /// Sessions restored ahead of a handoff's transfer (see `handoff`).
    pub(crate) standbys: std::sync::Mutex<HashMap<String, crate::handoff::Standby>>,
    /// Until when (ms since the epoch) the node reports not-ready after the
    /// instance pool or the store failed.
    degraded_until: std::sync::atomic::AtomicU64,
    /// Set when a module the cluster records has not been fetched for a
    /// while (no node sends it): readiness stops waiting for it.
    pub(crate) modules_unreachable: AtomicBool,
    /// Wakes background tasks at shutdown.
    pub(crate) stop: Notify,
    pub(crate) metrics: crate::metrics::Metrics,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Milliseconds since the Unix epoch: the session clock's source.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn module_id(module: &RuleModule) -> String {
    module.name_version()
}

fn summary(module: &RuleModule) -> ModuleSummary {
    let info = module.info();
    ModuleSummary {
        id: module_id(module),
        name: info.name.clone(),
        version: info.version.clone(),
        state_schema: info.state_schema,
        hash: module.hash().to_hex(),
        size: module.report().size,
    }
}

/// Orders `1.10.0` after `1.9.0`, and a pre-release (`2.0.0-rc1`) before
/// its release, so that "the newest version" is never a pre-release
/// while its release is there.
fn version_key(version: &str) -> (Vec<u64>, bool) {
    let (release, pre) = match version.split('+').next().unwrap_or("").split_once('-') {
        Some((release, _)) => (release, true),
        None => (version.split('+').next().unwrap_or(""), false),
    };
    let numbers = release.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    (numbers, !pre)
}

impl Node {
    /// Opens the node's store in `config.data_dir`, loads its modules and
    /// recovers every session in it.
    pub fn open(config: NodeConfig) -> Result<Arc<Self>, NodeError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            NodeError::Internal(format!("creating {}: {e}", config.data_dir.display()))
        })?;
        let runtime = Runtime::new(RuntimeConfig {
            cache_dir: Some(config.data_dir.join("module-cache")),
            // Loading a module also takes a slot, for a moment.
            max_live_instances: config.max_live_instances,
            ..RuntimeConfig::default()
        })
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        let store: Arc<dyn Store> = Arc::new(RedbStore::open(&config.data_dir.join("node.redb"))?);
        let journal = Arc::new(GroupCommit::start(store.clone())?);
        let large_snapshots = GroupCommit::start_snapshots(store.clone())?;
        let token = match &config.operator_token {
            Some(token) => token.clone(),
            None => tokens::operator_token(&config.data_dir)?,
        };
        let node = Node {
            operator_token_sha256: tokens::sha256_hex(&token),
            config,
            runtime,
            store,
            journal,
            large_snapshots,
            mesh: OnceLock::new(),
            journals_written: Arc::new(watch::channel(0).0),
            modules: RwLock::new(BTreeMap::new()),
            sessions: RwLock::new(HashMap::new()),
            shutting_down: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            adopted: watch::channel(0).0,
            standbys: std::sync::Mutex::default(),
            players: watch::channel(0).0,
            fence_notes: watch::channel(0).0,
            arrivals: std::sync::Mutex::default(),
            degraded_until: std::sync::atomic::AtomicU64::new(0),
            modules_unreachable: AtomicBool::new(false),
            stop: Notify::new(),
            metrics: crate::metrics::Metrics::default(),
        };
        node.load_modules()?;
        node.recover_sessions()?;
        Ok(Arc::new(node))
    }

    fn load_modules(&self) -> Result<(), NodeError> {
        for (name, hash) in self.store.modules()? {
            let Some(bytes) = self.store.module_bytes(&hash)? else {
                tracing::warn!(module = %name, "module bytes missing from the store; skipped");
                continue;
            };
            match self.runtime.load(&bytes) {
                Ok(module) => {
                    self.modules_write().insert(name, module);
                }
                Err(e) => {
                    tracing::error!(module = %name, error = %e, "stored module no longer loads")
                }
            }
        }
        Ok(())
    }

    fn recover_sessions(&self) -> Result<(), NodeError> {
        if self.config.cluster.is_some() {
            // A cluster node's sessions come back through the cluster: it
            // owns nothing at start, and its replicas took over meanwhile.
            return Ok(());
        }
        let mut recovered = 0usize;
        for (id, bytes) in self.store.sessions()? {
            let record: SessionRecord = match serde_json::from_slice(&bytes) {
                Ok(record) => record,
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "unreadable session record; skipped");
                    continue;
                }
            };
            let Some(module) = self.module_by_hash(&record.module_hash) else {
                tracing::error!(session = %id, module = %record.module, "its module is not in the store; skipped");
                continue;
            };
            let cell = self.cell(record, module);
            // Wake it once to learn its clock and results, then let it sleep.
            let mut state = cell.state.blocking_lock();
            match self.wake(&cell, &mut state) {
                Ok(()) if state.position == 0 => {
                    // Created but never acknowledged: it does not exist.
                    continue;
                }
                Ok(()) => {}
                Err(e) => {
                    tracing::error!(session = %id, error = %e, "could not recover; skipped");
                    continue;
                }
            }
            state.live = None;
            drop(state);
            self.sessions_write().insert(id, cell);
            recovered += 1;
        }
        tracing::info!(sessions = recovered, "recovered sessions from the store");
        Ok(())
    }

    fn cell(&self, record: SessionRecord, origin: Arc<RuleModule>) -> Arc<SessionCell> {
        let (events, _) = broadcast::channel(self.config.resume_window.max(16));
        Arc::new(SessionCell {
            record,
            state: Arc::new(Mutex::new(SessionState {
                live: None,
                module: origin.clone(),
                trial: None,
                upgrade: None,
                position: 0,
                ring: VecDeque::new(),
                ring_from: 0,
                acts: ActMemory::default(),
                next_tick: None,
                status: wire::Status::Running,
                since_snapshot: 0,
                last_used: Instant::now(),
                digest_before: None,
            })),
            events,
            ticker: Notify::new(),
            moved: watch::channel(Location::Here).0,
            shipper: Arc::default(),
            arriving: AtomicBool::new(false),
            leaving: AtomicBool::new(false),
            fence_near: AtomicBool::new(false),
            resets: watch::channel(0).0,
            origin,
        })
    }

    fn modules_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<RuleModule>>> {
        self.modules
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn modules_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<RuleModule>>> {
        self.modules
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sessions_write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Arc<SessionCell>>> {
        self.sessions
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn sessions_read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Arc<SessionCell>>> {
        self.sessions
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn module_by_hash(&self, hex: &str) -> Option<Arc<RuleModule>> {
        self.modules_read()
            .values()
            .find(|m| m.hash().to_hex() == hex)
            .cloned()
    }

    /// Starts the background tasks: one ticker per session, the hibernation
    /// sweeper. Call once, inside a tokio runtime.
    pub fn start_background(self: &Arc<Self>) {
        let cells: Vec<_> = self.sessions_read().values().cloned().collect();
        for cell in cells {
            self.spawn_ticker(cell);
        }
        let node = self.clone();
        tokio::spawn(async move { node.sweep_idle().await });
    }

    /// Whether the operator token matches.
    pub fn is_operator(&self, token: &str) -> bool {
        tokens::constant_time_eq(&tokens::sha256_hex(token), &self.operator_token_sha256)
    }

    /// Ready for traffic, or why not: not shutting down or draining, in a
    /// cluster holding every peer's records and every module they record
    /// (a session placed here must be able to start), and neither the
    /// instance pool nor the store failed in the last few seconds.
    pub async fn readiness(&self) -> Result<(), String> {
        self.takes_sessions()?;
        if let Some(mesh) = self.mesh.get() {
            let missing = mesh
                .modules()
                .await
                .into_iter()
                .filter(|(_, hash)| !self.has_module_hash(hash))
                .count();
            if missing > 0 && !self.modules_unreachable.load(Ordering::Relaxed) {
                return Err(format!(
                    "joining: fetching {missing} of the cluster's modules"
                ));
            }
        }
        Ok(())
    }

    /// Whether this node takes new sessions, or why not: what
    /// [`readiness`](Self::readiness) asks but the modules. A create
    /// fetches the one module it needs, so a session of a module just
    /// published elsewhere may start here before the others arrived.
    fn takes_sessions(&self) -> Result<(), String> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if self.draining.load(Ordering::Relaxed) {
            return Err("draining: handing its sessions off".into());
        }
        if self.mesh.get().is_some_and(|mesh| !mesh.synced()) {
            return Err("joining: the cluster's records are not all here yet".into());
        }
        if now_ms() < self.degraded_until.load(Ordering::Relaxed) {
            return Err("degraded: the instance pool or the store failed a moment ago".into());
        }
        Ok(())
    }

    /// Notes a failure of this node's instance pool or store: `/readyz`
    /// fails for a while, so a load balancer sends new players elsewhere.
    /// Only [`NodeError::Failing`]: a refusal (full, not ready, moving)
    /// is no failure, and counting "not ready" as one would keep a node
    /// not ready for as long as clients retry.
    pub(crate) fn degraded(&self, error: &NodeError) {
        if matches!(error, NodeError::Failing(_)) {
            self.degraded_until
                .store(now_ms() + 5_000, Ordering::Relaxed);
        }
    }

    // --- modules ---------------------------------------------------------

    /// Publishes a rule component: checked, compiled, stored. The same bytes
    /// again is fine; other bytes under a published `name@version` are not.
    pub async fn publish(
        self: &Arc<Self>,
        bytes: Vec<u8>,
    ) -> Result<(ModuleSummary, bool), NodeError> {
        if bytes.len() > self.config.max_module_bytes {
            return Err(NodeError::TooLarge(format!(
                "the module is {} bytes; this node takes at most {}",
                bytes.len(),
                self.config.max_module_bytes
            )));
        }
        let node = self.clone();
        let published = tokio::task::spawn_blocking(move || {
            let module = node
                .runtime
                .load(&bytes)
                .map_err(|e| NodeError::BadModule(e.to_string()))?;
            let id = module_id(&module);
            let published = node.store.publish_module(&id, &module.hash(), &bytes)?;
            let module = node.modules_write().entry(id).or_insert(module).clone();
            Ok::<_, NodeError>((summary(&module), published == Published::New))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        if let Some(mesh) = self.mesh.get() {
            // Content-addressed cluster-wide: other bytes under a published
            // `name@version` anywhere are refused.
            mesh.publish_module(&published.0.id, &published.0.hash)
                .await
                .map_err(NodeError::Conflict)?;
        }
        Ok(published)
    }

    /// Every published module.
    pub fn modules(&self) -> Vec<ModuleSummary> {
        self.modules_read().values().map(|m| summary(m)).collect()
    }

    /// One module, by `name@version`.
    pub fn module(&self, id: &str) -> Result<ModuleSummary, NodeError> {
        self.modules_read()
            .get(id)
            .map(|m| summary(m))
            .ok_or_else(|| NodeError::NotFound(format!("no module {id} is published here")))
    }

    /// A module's component bytes, by content hash (hex), if stored here.
    pub(crate) fn module_bytes_by_hash(&self, hex: &str) -> Option<Vec<u8>> {
        let hash = self.module_by_hash(hex)?.hash();
        self.store.module_bytes(&hash).ok().flatten()
    }

    /// A module's component bytes, by `name@version`.
    /// A module's component, by `name@version` or by its hex SHA-256.
    pub fn module_component(&self, id: &str) -> Result<Vec<u8>, NodeError> {
        if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return self
                .module_bytes_by_hash(id)
                .ok_or_else(|| NodeError::NotFound(format!("no module {id} is stored here")));
        }
        let hash = self
            .modules_read()
            .get(id)
            .map(|m| m.hash())
            .ok_or_else(|| NodeError::NotFound(format!("no module {id} is published here")))?;
        self.store
            .module_bytes(&hash)?
            .ok_or_else(|| NodeError::Internal(format!("module {id} is missing from the store")))
    }

    /// `name@version`, or for a bare `name` the version the operator pinned
    /// (`default_versions`), else its newest.
    fn resolve(&self, wanted: &str) -> Result<Arc<RuleModule>, NodeError> {
        let pinned = self
            .config
            .default_versions
            .iter()
            .find(|id| id.split('@').next() == Some(wanted));
        let wanted = pinned.map_or(wanted, String::as_str);
        let modules = self.modules_read();
        if let Some(module) = modules.get(wanted) {
            return Ok(module.clone());
        }
        if pinned.is_some() {
            return Err(NodeError::NotFound(format!(
                "{wanted} is the pinned default version (default_versions), but it is not published"
            )));
        }
        modules
            .values()
            .filter(|m| m.info().name == wanted)
            .max_by_key(|m| version_key(&m.info().version))
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("no module {wanted} is published here")))
    }

    /// [`Node::resolve`], fetching the module from the cluster first if it
    /// was published elsewhere a moment ago (before `sync_modules` got it).
    pub(crate) async fn resolve_or_fetch(
        self: &Arc<Self>,
        wanted: &str,
    ) -> Result<Arc<RuleModule>, NodeError> {
        let missing = match self.resolve(wanted) {
            Err(NodeError::NotFound(m)) => m,
            found => return found,
        };
        let Some(mesh) = self.mesh.get() else {
            return Err(NodeError::NotFound(missing));
        };
        let named = |id: &str| id == wanted || id.split('@').next() == Some(wanted);
        let mut records = mesh.records_changed();
        let give_up = tokio::time::Instant::now() + RECORD_WAIT;
        loop {
            let known: Vec<String> = mesh
                .modules()
                .await
                .into_iter()
                .filter(|(id, _)| named(id))
                .map(|(_, hash)| hash)
                .collect();
            if !known.is_empty() {
                self.fetch_missing(&known).await?;
                return self.resolve(wanted);
            }
            // Its record may be on its way from the node it was published on.
            tokio::select! {
                _ = records.changed() => {}
                () = tokio::time::sleep_until(give_up) => return Err(NodeError::NotFound(missing)),
            }
        }
    }

    /// Fetches from the cluster and loads every module of `hashes` that
    /// is not here.
    pub(crate) async fn fetch_missing(
        self: &Arc<Self>,
        hashes: impl IntoIterator<Item = &String>,
    ) -> Result<(), NodeError> {
        let Some(mesh) = self.mesh.get() else {
            return Ok(());
        };
        for hash in hashes {
            if !self.has_module_hash(hash) {
                let bytes = crate::cluster::fetch_module(mesh, hash).await?;
                self.publish(bytes).await?;
            }
        }
        Ok(())
    }

    // --- sessions --------------------------------------------------------

    /// Creates and starts a session; returns its id and the players' tokens.
    /// In a cluster it goes where placement puts it (maybe another node).
    pub async fn create_session(
        self: &Arc<Self>,
        request: CreateSession,
    ) -> Result<Created, NodeError> {
        let id = tokens::random_hex(8)?;
        if let Some(mesh) = self.mesh.get() {
            let (owner, _) = mesh.place(&id).await.map_err(NodeError::Unavailable)?;
            if owner.name != mesh.name() {
                return crate::cluster::forward_create(mesh, &owner.name, &id, request).await;
            }
        }
        self.create_here(id, request).await
    }

    /// Creates and starts session `id` on this node.
    pub(crate) async fn create_here(
        self: &Arc<Self>,
        id: String,
        request: CreateSession,
    ) -> Result<Created, NodeError> {
        if let Err(why) = self.takes_sessions() {
            return Err(NodeError::Unavailable(format!(
                "this node is not ready: {why}"
            )));
        }
        if self.sessions_read().len() >= self.config.max_sessions {
            return Err(NodeError::Unavailable(format!(
                "this node holds its maximum of {} sessions",
                self.config.max_sessions
            )));
        }
        let module = self.resolve_or_fetch(&request.module).await?;
        if request.players.is_empty() || request.players.len() > 64 {
            return Err(NodeError::BadRequest(
                "a session needs 1 to 64 players".into(),
            ));
        }
        let mut issued = BTreeMap::new();
        let mut players = Vec::new();
        for p in &request.players {
            let token = tokens::random_hex(24)?;
            players.push(PlayerRecord {
                id: p.id.clone(),
                name: p.name.clone(),
                token_sha256: tokens::sha256_hex(&token),
            });
            issued.insert(p.id.clone(), token);
        }
        let record = SessionRecord {
            id: id.clone(),
            module: module_id(&module),
            module_hash: module.hash().to_hex(),
            players,
            options: request.options.map(|o| o.to_string()).unwrap_or_default(),
            seed: match request.seed {
                Some(seed) => seed,
                None => u64::from_str_radix(&tokens::random_hex(8)?, 16).unwrap_or(0),
            },
            limits: self.config.session_limits.clone(),
            created_ms: now_ms(),
        };
        let setup = SetupArgs {
            session_id: id.clone(),
            players: request.players,
            options: record.options.clone(),
            seed: record.seed,
            now: now_ms(),
        };
        let cell = self.cell(record.clone(), module);
        let state = cell.state.clone().lock_owned().await;
        // Run the start before anything is stored: a refused start leaves no trace.
        let node = self.clone();
        let cell_for_start = cell.clone();
        let (mut state, applied) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let result = (|| {
                let session = Session::new(
                    cell_for_start.origin.clone(),
                    cell_for_start.record.limits.clone(),
                )
                .map_err(NodeError::from_call)?;
                state.live = Some(session);
                let applied = node.apply(&mut state, Call::Start(setup.clone()), setup.now)?;
                if let Reply::Outcome(Err(refusal)) = &applied.reply {
                    return Err(NodeError::Refused(refusal.reason.clone()));
                }
                let bytes = serde_json::to_vec(&cell_for_start.record)
                    .map_err(|e| NodeError::Internal(e.to_string()))?;
                node.store.put_session(&cell_for_start.record.id, &bytes)?;
                Ok(applied)
            })();
            (state, result)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        let applied = applied?;
        if let Some(mesh) = self.mesh.get() {
            // The record (with ours inside) goes to every node; the replica's
            // answer gives this node the lease that the start's entry needs.
            let new = baton_cluster::node::NewSession {
                module: record.module.clone(),
                module_hash: record.module_hash.clone(),
                meta: serde_json::to_vec(&record)
                    .map_err(|e| NodeError::Internal(e.to_string()))?,
            };
            mesh.create_here(&id, new)
                .await
                .map_err(NodeError::Unavailable)?;
        }
        self.make_durable(&cell, &mut state, applied).await?;
        drop(state);
        self.sessions_write().insert(id.clone(), cell.clone());
        self.spawn_ticker(cell);
        Ok(Created {
            id,
            module: record.module,
            tokens: issued,
        })
    }

    /// Every session on this node.
    pub(crate) fn cells(&self) -> Vec<Arc<SessionCell>> {
        self.sessions_read().values().cloned().collect()
    }

    /// This node's name in its cluster (`local` alone).
    pub(crate) fn name(&self) -> String {
        self.mesh
            .get()
            .map_or_else(|| "local".to_owned(), |mesh| mesh.name().to_owned())
    }

    pub(crate) fn cell_by_id(&self, id: &str) -> Result<Arc<SessionCell>, NodeError> {
        self.sessions_read()
            .get(id)
            .cloned()
            .ok_or_else(|| NodeError::NotFound(format!("no session {id} on this node")))
    }

    /// Every session.
    pub async fn sessions(&self) -> Vec<SessionSummary> {
        let cells: Vec<_> = self.sessions_read().values().cloned().collect();
        let mut out = Vec::with_capacity(cells.len());
        for cell in cells {
            out.push(self.session_summary(&cell).await);
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    /// One session.
    pub async fn session(&self, id: &str) -> Result<SessionSummary, NodeError> {
        let cell = self.cell_by_id(id)?;
        Ok(self.session_summary(&cell).await)
    }

    async fn session_summary(&self, cell: &SessionCell) -> SessionSummary {
        let state = cell.state.lock().await;
        let (status, result) = match &state.status {
            wire::Status::Running => ("running", None),
            wire::Status::Finished(json) => ("finished", serde_json::from_str(json).ok()),
        };
        SessionSummary {
            id: cell.record.id.clone(),
            module: module_id(&state.module),
            upgrade: state.upgrade.clone(),
            players: cell.record.players.iter().map(|p| p.id.clone()).collect(),
            position: state.position,
            status,
            result,
            live: state.live.is_some(),
            epoch: 1,
            arrival: self.arrival(&cell.record.id),
        }
    }

    /// The player a token belongs to in session `id`.
    pub fn authenticate(&self, id: &str, token: &str) -> Result<String, NodeError> {
        let cell = self.cell_by_id(id)?;
        let hash = tokens::sha256_hex(token);
        cell.record
            .players
            .iter()
            .find(|p| tokens::constant_time_eq(&p.token_sha256, &hash))
            .map(|p| p.id.clone())
            .ok_or(NodeError::Unauthorized(
                "this token is not a player's of this session".into(),
            ))
    }

    /// Applies `player`'s action; a retried `client_id` gets the first
    /// answer again and is applied once.
    pub async fn act(
        self: &Arc<Self>,
        id: &str,
        player: &str,
        client_id: Option<String>,
        action: String,
    ) -> Result<ActOutcome, NodeError> {
        let started = Instant::now();
        let cell = self.cell_by_id(id)?;
        let mut state = cell.state.clone().lock_owned().await;
        if let Some(client_id) = &client_id
            && let Some(done) = state.acts.get(player, client_id)
        {
            return Ok(done.clone());
        }
        let call = Call::Act {
            player: player.to_owned(),
            action,
            client_action_id: client_id,
        };
        let (state_back, applied) = self.apply_blocking(&cell, state, call).await?;
        let applied_us = crate::handoff::now_us();
        state = state_back;
        let module = module_id(&state.module);
        let applied = applied.inspect_err(|e| {
            if matches!(e, NodeError::RulesFailed(_)) {
                self.metrics.rules_failed(&module);
            }
        })?;
        let outcome = act_outcome(&applied);
        self.make_durable(&cell, &mut state, applied).await?;
        if cell.arriving.swap(false, Ordering::Relaxed) {
            self.note_applied(id, applied_us);
        }
        let result = match &outcome {
            Some(ActOutcome::Accepted { .. }) => "accepted",
            _ => "rejected",
        };
        self.metrics.action(&module, result, started.elapsed());
        Ok(outcome.unwrap_or(ActOutcome::Rejected {
            seq: state.position.saturating_sub(1),
            reason: "the rules gave no answer".into(),
        }))
    }

    /// What `viewer` sees now, with the last journal position it reflects.
    pub async fn view(
        self: &Arc<Self>,
        id: &str,
        viewer: Viewer,
    ) -> Result<(u64, serde_json::Value, wire::Status), NodeError> {
        let cell = self.cell_by_id(id)?;
        let state = cell.state.clone().lock_owned().await;
        let (state, view) = self.render_view(&cell, state, viewer).await?;
        Ok((state.position.saturating_sub(1), view, state.status.clone()))
    }

    /// Runs a (journaled) `view` call with the session's lock held, and
    /// hands the lock back with the view.
    async fn render_view(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        state: tokio::sync::OwnedMutexGuard<SessionState>,
        viewer: Viewer,
    ) -> Result<
        (
            tokio::sync::OwnedMutexGuard<SessionState>,
            serde_json::Value,
        ),
        NodeError,
    > {
        let (mut state, applied) = self.apply_blocking(cell, state, Call::View(viewer)).await?;
        let applied = applied?;
        let view = match &applied.reply {
            Reply::View(Ok(json)) => serde_json::from_str(json).unwrap_or(serde_json::Value::Null),
            Reply::View(Err(reason)) => return Err(NodeError::BadRequest(reason.clone())),
            other => return Err(NodeError::Internal(format!("unexpected reply {other:?}"))),
        };
        self.make_durable(cell, &mut state, applied).await?;
        Ok((state, view))
    }

    /// Joins a session as `viewer`: under one lock, subscribes to its
    /// events, collects the batches after `after` that the client missed
    /// (`None` if some are no longer held: the client must resync from the
    /// view), and renders the view. Every live event then has a position at
    /// or after the one returned: no gap, no duplicate. A client that holds
    /// the view (`view: false`, resuming) and missed nothing that is gone
    /// gets none: the view is a journaled guest call, and skipping it keeps
    /// a moved connection's resume off the replicated path.
    pub(crate) async fn join(
        self: &Arc<Self>,
        id: &str,
        viewer: Viewer,
        after: Option<u64>,
        want_view: bool,
    ) -> Result<Joined, NodeError> {
        let cell = self.cell_by_id(id)?;
        let state = cell.state.clone().lock_owned().await;
        let receiver = cell.events.subscribe();
        let missed = after.map(|after| {
            (after.saturating_add(1) >= state.ring_from).then(|| {
                state
                    .ring
                    .iter()
                    .filter(|b| b.seq > after)
                    .cloned()
                    .collect::<Vec<_>>()
            })
        });
        let resync = matches!(missed, Some(None));
        let (state, view) = if want_view || after.is_none() || resync {
            let (state, view) = self.render_view(&cell, state, viewer).await?;
            (state, Some(view))
        } else {
            (state, None)
        };
        Ok(Joined {
            module: module_id(&state.module),
            receiver,
            missed: missed.flatten(),
            resync,
            // The last position the view reflects (the view call itself, or
            // the last entry): every later event has a greater one.
            position: state.position.saturating_sub(1),
            view,
            status: state.status.clone(),
            moved: cell.moved.subscribe(),
            resets: cell.resets.subscribe(),
        })
    }

    /// Runs one call on a blocking thread with the session lock held. A
    /// call an upgraded session's new version fails takes the session back
    /// to its old version first (see `upgrade`).
    pub(crate) async fn apply_blocking(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        state: tokio::sync::OwnedMutexGuard<SessionState>,
        call: Call,
    ) -> Result<
        (
            tokio::sync::OwnedMutexGuard<SessionState>,
            Result<Applied, NodeError>,
        ),
        NodeError,
    > {
        if let Location::Moved(to) = &*cell.moved.borrow() {
            // Fenced for a handoff (or let go): nothing more runs here.
            return Err(NodeError::Moved(format!(
                "the session is moving to {}; retry there",
                to.as_deref().unwrap_or("another node")
            )));
        }
        let node = self.clone();
        let on = cell.clone();
        let (mut state, result, back) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let fence_near = on.fence_near.load(Ordering::Acquire);
            let result = node.wake(&on, &mut state).and_then(|()| {
                if fence_near {
                    Self::note_digest_before(&mut state);
                }
                node.apply(&mut state, call, now_ms())
            });
            let back = node.judge_trial(&on, &mut state, &result);
            (state, result, back)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        if let Some(back) = back {
            // The session went back to the state before the upgrade: what
            // its players saw since is void, so they resync.
            match self.make_durable(cell, &mut state, back).await {
                Ok(()) => {
                    state.ring.clear();
                    state.ring_from = state.position;
                    cell.resets.send_modify(|n| *n += 1);
                    self.snapshot_in_background(cell, &mut state);
                }
                Err(e) => {
                    tracing::warn!(session = %cell.record.id, error = %e, "the way back from an upgrade was not journaled; the session resumes from its journal");
                }
            }
        }
        Ok((state, result))
    }

    /// Makes sure the session is live: restores it from the store if not.
    pub(crate) fn wake(
        &self,
        cell: &SessionCell,
        state: &mut SessionState,
    ) -> Result<(), NodeError> {
        state.last_used = Instant::now();
        if state.live.is_some() {
            return Ok(());
        }
        let id = &cell.record.id;
        let (mut session, from) = self.restore_stored(cell, state, None, |_, _| true)?;
        // Entries at or past a known position were never durable (a cluster
        // replica may keep an older epoch's until they are overwritten).
        let known = state.position;
        let journal = self
            .store
            .journal(id, from)?
            .into_iter()
            .take_while(|(position, _)| known == 0 || *position < known);
        self.replay(id, &mut session, state, journal)?;
        state.position = session.position();
        state.live = Some(session);
        Ok(())
    }

    /// The session as `standby` or else this node's stored snapshot has
    /// it, if there is one and `fits(position, meta)` accepts it, else a
    /// fresh instance; with the journal position to replay from.
    fn restore_stored(
        &self,
        cell: &SessionCell,
        state: &mut SessionState,
        standby: Option<crate::handoff::Standby>,
        fits: impl Fn(u64, &SnapshotMeta) -> bool,
    ) -> Result<(Session, u64), NodeError> {
        let limits = cell.record.limits.clone();
        let restored = match standby {
            // Restored already, when a handoff warmed this node.
            Some(standby) if fits(standby.position, &standby.meta) => {
                Some((standby.position, standby.meta, standby.session))
            }
            _ => match self.store.snapshot(&cell.record.id)? {
                Some((position, stored)) => {
                    let (meta, bytes) = snapshots::open(&stored)?;
                    if fits(position, &meta) {
                        let image = baton_runtime::Image::decode(bytes)
                            .map_err(|e| NodeError::Internal(e.to_string()))?;
                        let session = self.restore_image(&cell.record.id, limits.clone(), image)?;
                        Some((position, meta, session))
                    } else {
                        None
                    }
                }
                None => None,
            },
        };
        let Some((position, meta, session)) = restored else {
            let session =
                Session::new(cell.origin.clone(), limits).map_err(NodeError::from_call)?;
            return Ok((session, 0));
        };
        if state.position < position {
            // This process never saw what came before the snapshot (it just
            // started, or took the session over): take the bookkeeping
            // stored with it; the events before it are gone.
            state.ring.clear();
            state.ring_from = position;
            state.next_tick = meta.next_tick;
            if let Some(status) = meta.status {
                state.status = status;
            }
            for (player, client_id, outcome) in meta.acts {
                state.acts.remember(player, client_id, outcome);
            }
        }
        Ok((session, position))
    }

    /// A session restored from `image`, of the module it names (an
    /// upgraded session's snapshot is of the module it runs now).
    pub(crate) fn restore_image(
        &self,
        id: &str,
        limits: baton_runtime::Limits,
        image: baton_runtime::Image,
    ) -> Result<Session, NodeError> {
        let module = self.module_by_hash(&image.module.to_hex()).ok_or_else(|| {
            NodeError::Internal(format!(
                "the snapshot of {id} is of module {}, which is not here",
                image.module
            ))
        })?;
        Session::restore_image(module, limits, Arc::new(image))
            .map_err(|e| NodeError::Internal(e.to_string()))
    }

    /// Rebuilds a session from this node's copy of its cluster journal,
    /// `(start, entries)`, the entries from position `start` on: from
    /// `standby` (restored ahead of a handoff) or else the replica snapshot
    /// stored here, if the journal agrees with it (else from the start),
    /// then the entries after it. Returns the session and the snapshot
    /// position it started from.
    fn rebuild(
        &self,
        cell: &SessionCell,
        state: &mut SessionState,
        (start, journal): (u64, Vec<baton_cluster::node::JournalEntry>),
        standby: Option<crate::handoff::Standby>,
    ) -> Result<(Session, u64), NodeError> {
        let at = |position: u64| {
            position
                .checked_sub(start)
                .and_then(|i| journal.get(i as usize))
        };
        let (mut session, from) = self.restore_stored(cell, state, standby, |position, meta| {
            snapshots::agrees(meta, position.checked_sub(1).and_then(at))
        })?;
        if from < start {
            return Err(NodeError::Internal(format!(
                "the journal of {} from {start} on does not reach back to {from}",
                cell.record.id
            )));
        }
        let entries = journal
            .into_iter()
            .zip(start..)
            .skip((from - start) as usize)
            .map(|(e, position)| (position, e.action));
        self.replay(&cell.record.id, &mut session, state, entries)?;
        state.position = session.position();
        Ok((session, from))
    }

    /// Replays journal entries `(position, bytes)` into `session`,
    /// rebuilding what they produced (events, action ids, status) where
    /// this process has not seen it.
    fn replay(
        &self,
        id: &str,
        session: &mut Session,
        state: &mut SessionState,
        journal: impl IntoIterator<Item = (u64, Vec<u8>)>,
    ) -> Result<(), NodeError> {
        for (position, bytes) in journal {
            let entry = JournalEntry::decode(&bytes).map_err(|e| {
                NodeError::Internal(format!(
                    "journal entry {position} of {id} is unreadable: {e}"
                ))
            })?;
            let reply = session
                .replay_with(&entry, |hash| self.module_by_hash(&hash.to_hex()))
                .map_err(|e| {
                    NodeError::Internal(format!("replaying entry {position} of {id} failed: {e}"))
                })?;
            state.module = session.module().clone();
            if entry.position >= state.position {
                Self::remember(&self.config, state, &entry, &reply);
            }
        }
        Ok(())
    }

    // --- the cluster ---------------------------------------------------------

    /// Joins the cluster `config.cluster` names (no-op for a lone node).
    pub async fn join_cluster(self: &Arc<Self>) -> Result<(), NodeError> {
        match self.config.cluster.clone() {
            Some(cluster) => crate::cluster::join(self, &cluster).await,
            None => Ok(()),
        }
    }

    /// Declares node `name` gone for good (see [`Mesh::evict`]).
    pub async fn evict(&self, name: &str) -> Result<(), NodeError> {
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| NodeError::NotFound("this node is not in a cluster".into()))?;
        mesh.evict(name).await.map_err(NodeError::Conflict)?;
        tracing::warn!(node = %name, "evicted: the sessions it replicated get new replicas");
        Ok(())
    }

    /// This node's view of its cluster: its name and the nodes up.
    pub async fn cluster_status(&self) -> Result<ClusterStatus, NodeError> {
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| NodeError::NotFound("this node is not in a cluster".into()))?;
        let mut peers: Vec<String> = mesh.peers().await.into_iter().map(|p| p.name).collect();
        peers.sort();
        Ok(ClusterStatus {
            name: mesh.name().to_owned(),
            quic: mesh.addr().to_string(),
            peers,
            owned: self.sessions_read().len(),
        })
    }

    /// Where this node listens for the cluster (QUIC), in a cluster.
    pub fn cluster_addr(&self) -> Option<std::net::SocketAddr> {
        self.mesh.get().map(|m| m.addr())
    }

    pub(crate) fn has_module_hash(&self, hex: &str) -> bool {
        self.module_by_hash(hex).is_some()
    }

    /// The node that owns session `id`, if not this one; an error if the
    /// cluster knows no such session.
    pub(crate) async fn owner_elsewhere(&self, id: &str) -> Result<Option<String>, NodeError> {
        let Some(mesh) = self.mesh.get() else {
            return Ok(None);
        };
        let mut adopted = self.adopted.subscribe();
        let mut records = mesh.records_changed();
        let give_up = tokio::time::Instant::now() + TAKEOVER_WAIT;
        let unknown_until = tokio::time::Instant::now() + RECORD_WAIT;
        let standby_until = tokio::time::Instant::now() + crate::handoff::STANDBY_WAIT;
        loop {
            let here = self.sessions_read().get(id).cloned();
            if let Some(cell) = here {
                let mut moved = cell.moved.subscribe();
                // The core refuses a fenced session's appends before the
                // host hears of the fence: ask it, not only `moved`. Only a
                // draining node fences (the host marks it draining before
                // the core hears of the drain), so the others need not ask:
                // a join on a session just taken over skips that round trip.
                if *moved.borrow_and_update() == Location::Here
                    && (!self.draining.load(Ordering::Relaxed) || !mesh.handing_off(id).await)
                {
                    return Ok(None);
                }
                // Fenced for a handoff: it leaves (or stays) in a moment.
                tokio::select! {
                    _ = moved.changed() => {}
                    () = tokio::time::sleep_until(give_up) => {
                        return Err(NodeError::Unavailable(format!(
                            "session {id} is being handed over; retry shortly"
                        )));
                    }
                }
                continue;
            }
            let record = mesh.record(id).await;
            let known = record.is_some();
            match record {
                Some(record) if record.owner.name != mesh.name() => {
                    // Unless a handoff is bringing it here (players follow
                    // it from the fence on): then wait a moment for the
                    // transfer.
                    if !(self.standing_by(id) && tokio::time::Instant::now() < standby_until) {
                        return Ok(Some(record.owner.name));
                    }
                }
                // Taken over here right now: wait for the takeover.
                Some(_) => {}
                // Created a moment ago elsewhere: its record is on its way.
                None if tokio::time::Instant::now() < unknown_until => {}
                None => {
                    return Err(NodeError::NotFound(format!(
                        "no session {id} in the cluster"
                    )));
                }
            }
            tokio::select! {
                _ = adopted.changed() => {}
                _ = records.changed() => {}
                () = tokio::time::sleep_until(standby_until), if self.standing_by(id) => {}
                () = tokio::time::sleep_until(unknown_until), if !known => {}
                () = tokio::time::sleep_until(give_up) => {
                    return Err(NodeError::Unavailable(format!(
                        "session {id} is being taken over by this node; retry shortly"
                    )));
                }
            }
        }
    }

    /// Takes over a session this node came to own (promotion or
    /// transfer): rebuilt from its replicated record and journal.
    pub(crate) async fn adopt(self: &Arc<Self>, id: &str) -> Result<(), NodeError> {
        let Some(mesh) = self.mesh.get() else {
            return Ok(());
        };
        if self.sessions_read().contains_key(id) {
            return Ok(());
        }
        let record = mesh
            .record(id)
            .await
            .ok_or_else(|| NodeError::Internal(format!("no record of {id}")))?;
        // A handoff's standby needs only the entries after it (and the one
        // before, to check that it agrees with them), not the history.
        let mut standby = self.take_standby(id);
        let mut start = standby.as_ref().map_or(0, |s| s.position.saturating_sub(1));
        let mut journal = mesh.journal(id, start).await;
        if start > 0 && !standby.as_ref().is_some_and(|s| s.fits(journal.first())) {
            (standby, start) = (None, 0);
            journal = mesh.journal(id, 0).await;
        }
        if journal.is_empty() {
            // Created but never started: its creator runs the start.
            return Ok(());
        }
        let meta = SessionRecord::from_cluster(id, &record)?;
        // The module it started on, and every one an upgrade moved it to
        // (since the standby, which runs one of them already).
        let switched =
            journal
                .iter()
                .filter_map(|e| match JournalEntry::decode(&e.action).ok()?.call {
                    Call::Switch(switch) => Some(switch.module_hash().to_hex()),
                    _ => None,
                });
        let needed: std::collections::BTreeSet<String> = std::iter::once(meta.module_hash.clone())
            .chain(switched)
            .collect();
        self.fetch_missing(&needed).await?;
        let module = self
            .module_by_hash(&meta.module_hash)
            .ok_or_else(|| NodeError::Internal(format!("module {} did not load", meta.module)))?;
        let cell = self.cell(meta, module);
        let state = cell.state.clone().lock_owned().await;
        let node = self.clone();
        let rebuilt = cell.clone();
        // Served from the blocking thread that rebuilt it: a player waiting
        // for the takeover goes on from there, not after this task wakes
        // up again (on a busy node, a millisecond later).
        let (fresh, position, snapshot, pending) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let started = Instant::now();
            let (mut session, from) =
                node.rebuild(&rebuilt, &mut state, (start, journal), standby)?;
            let replayed = started.elapsed();
            let digest = session.state_digest().map_err(NodeError::from_call)?;
            tracing::debug!(session = %rebuilt.record.id, ?replayed, hashed = ?started.elapsed() - replayed, "rebuilt");
            state.live = Some(session);
            // Rebuilt from the start (no snapshot here): a snapshot of the
            // exact state, for the next wake and the session's replica,
            // captured now and stored once it serves. From a snapshot
            // stored here (a handoff's warm one, a replica's) the store
            // already has what a wake needs: writing megabytes now would
            // only hold up the first actions' commits, so the snapshot
            // cadence starts over instead.
            let pending = if from == 0 {
                Some(
                    Self::capture_snapshot(&rebuilt, &mut state)
                        .ok_or_else(|| NodeError::Internal("capture failed".into()))?,
                )
            } else {
                state.since_snapshot = 0;
                None
            };
            let position = state.position;
            rebuilt.arriving.store(true, Ordering::Relaxed);
            drop(state);
            let id = &rebuilt.record.id;
            node.note_restored(id, &rebuilt.record.module, position, from, tokens::hex(&digest));
            let fresh = {
                let mut sessions = node.sessions_write();
                if sessions.contains_key(id) {
                    false
                } else {
                    sessions.insert(id.clone(), rebuilt.clone());
                    true
                }
            };
            node.adopted.send_modify(|n| *n += 1);
            Ok::<_, NodeError>((fresh, position, from, pending))
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))??;
        if let Some(pending) = pending {
            let node = self.clone();
            tokio::task::spawn_blocking(move || node.store_snapshot(pending));
        }
        if fresh {
            tracing::info!(session = %id, position, snapshot, "took the session over: snapshot + journal after it");
            self.spawn_ticker(cell);
        }
        Ok(())
    }

    /// Lets go of a session that moved (to `to`, if known): its players'
    /// connections here follow it there, or are told to reconnect.
    pub(crate) async fn release(&self, id: &str, to: Option<String>) {
        let Some(cell) = self.sessions_write().remove(id) else {
            return;
        };
        let _ = cell.moved.send(Location::Moved(to));
        cell.ticker.notify_one();
        // Wait for the call in flight, then drop the instance: off this
        // task, since resetting its pool slot takes ~0.1 ms and the events
        // that follow (a drain's next handoffs) should not wait for it. A
        // draining node never reuses the slot: resetting it would only
        // write zeros over memory (faulting in fresh pages where it was
        // shared with the module's image) that the process gives back at
        // exit anyway, so the instance is let go of as it is.
        if let Some(live) = cell.state.lock().await.live.take() {
            if self.draining.load(Ordering::Relaxed) {
                std::mem::forget(live);
            } else {
                tokio::task::spawn_blocking(move || drop(live));
            }
        }
    }

    /// Brings the sessions held here in line with those the core says this
    /// node owns (after missing some of its events).
    pub(crate) async fn reconcile(self: &Arc<Self>) {
        let Some(mesh) = self.mesh.get() else { return };
        let owned: std::collections::BTreeSet<String> = mesh
            .owned()
            .await
            .into_iter()
            .filter(|(_, epoch)| *epoch > 1)
            .map(|(s, _)| s)
            .collect();
        let all: std::collections::BTreeSet<String> =
            mesh.owned().await.into_iter().map(|(s, _)| s).collect();
        let held: Vec<String> = self.sessions_read().keys().cloned().collect();
        for id in held.iter().filter(|id| !all.contains(*id)) {
            self.release(id, None).await;
        }
        for id in owned.iter().filter(|id| !held.contains(*id)) {
            if let Err(e) = self.adopt(id).await {
                tracing::error!(session = %id, error = %e, "could not take the session over");
            }
        }
    }

    /// Drains this node (see [`Mesh::drain`]): not ready from now on, every
    /// session handed to another node. Returns the sessions left when the
    /// drain deadline passed (0: all handed off); `None` outside a cluster.
    pub async fn drain(&self) -> Option<usize> {
        let mesh = self.mesh.get()?;
        self.draining.store(true, Ordering::Relaxed);
        tracing::info!("draining: handing every session to another node");
        let left = mesh.drain().await;
        let mut notes = self.fence_notes.subscribe();
        let sent = tokio::time::timeout(NOTES_WAIT, notes.wait_for(|n| *n == 0)).await;
        if sent.is_err() {
            tracing::warn!(
                "some fence notes were not sent in time; their targets cannot check their arrival"
            );
        }
        if left == 0 {
            tracing::info!("drained: every session handed off");
        } else {
            tracing::warn!(
                left,
                "the drain deadline passed; the sessions left fail over to their replicas"
            );
        }
        Some(left)
    }

    pub(crate) fn arrivals(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, crate::handoff::Arrival>> {
        self.arrivals
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A sealed snapshot of session `id` as it stands, for a handoff's
    /// target: captured from the live instance (else the stored snapshot of
    /// a hibernated one) and not stored here, as this node is leaving; the
    /// megabytes would only slow the commits its players wait on. Returns
    /// its position and bytes.
    pub(crate) async fn capture_for_handoff(
        self: &Arc<Self>,
        id: &str,
    ) -> Result<Option<(u64, Arc<Vec<u8>>)>, NodeError> {
        let cell = self.cell_by_id(id)?;
        let pending = {
            let mut state = cell.state.lock().await;
            Self::capture_snapshot(&cell, &mut state)
        };
        match pending {
            Some(pending) => {
                let position = pending.image.position;
                let sealed = tokio::task::spawn_blocking(move || pending.seal())
                    .await
                    .map_err(|e| NodeError::Internal(e.to_string()))?;
                Ok(Some((position, Arc::new(sealed))))
            }
            None => Ok(self
                .store
                .snapshot(id)?
                .map(|(position, sealed)| (position, Arc::new(sealed)))),
        }
    }

    /// SHA-256 of the session's memories and globals at journal length
    /// `position`, hex: from the live instance if it stands there (after
    /// the call in flight), else rebuilt from the cluster journal.
    pub(crate) async fn digest_at(
        self: &Arc<Self>,
        cell: Arc<SessionCell>,
        position: u64,
    ) -> Result<String, NodeError> {
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| NodeError::NotFound("this node is not in a cluster".into()))?;
        let id = &cell.record.id;
        let mut state = cell.state.clone().lock_owned().await;
        let live_there = state.live.is_some() && state.position == position;
        let node = self.clone();
        let digest = if live_there {
            tokio::task::spawn_blocking(move || match state.live.as_mut() {
                Some(live) => live.state_digest().map_err(NodeError::from_call),
                None => Err(NodeError::Internal("the session is not live".into())),
            })
            .await
        } else {
            if let Some((before, digest)) = state.digest_before
                && before == position
            {
                return Ok(tokens::hex(&digest));
            }
            tracing::debug!(session = %id, position, live = state.live.is_some(), at = state.position, "rebuilding the session to hash it");
            // Rebuilt on a throwaway copy: the live bookkeeping stays as it
            // is, and a call waiting for the session (to learn that it
            // moved) does not wait for the rebuild.
            drop(state);
            let mut journal = mesh.journal(id, 0).await;
            journal.truncate(position as usize);
            tokio::task::spawn_blocking(move || {
                let copy = node.cell(cell.record.clone(), cell.origin.clone());
                let mut scratch = copy.state.blocking_lock();
                let (mut session, _) = node.rebuild(&copy, &mut scratch, (0, journal), None)?;
                session.state_digest().map_err(NodeError::from_call)
            })
            .await
        };
        Ok(tokens::hex(
            &digest.map_err(|e| NodeError::Internal(e.to_string()))??,
        ))
    }

    /// The state of session `id` as this node's replicated copy of its
    /// journal gives it: rebuilt by replay, for checking a replica.
    pub async fn replica_state(self: &Arc<Self>, id: &str) -> Result<ReplicaState, NodeError> {
        let mesh = self
            .mesh
            .get()
            .ok_or_else(|| NodeError::NotFound("this node is not in a cluster".into()))?;
        let record = mesh
            .record(id)
            .await
            .ok_or_else(|| NodeError::NotFound(format!("no session {id} in the cluster")))?;
        let journal = mesh.journal(id, 0).await;
        let meta = SessionRecord::from_cluster(id, &record)?;
        let module = self
            .module_by_hash(&meta.module_hash)
            .ok_or_else(|| NodeError::NotFound(format!("module {} is not here", meta.module)))?;
        let cell = self.cell(meta, module);
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut state = cell.state.blocking_lock();
            let (mut session, snapshot) = node.rebuild(&cell, &mut state, (0, journal), None)?;
            let digest = session.state_digest().map_err(NodeError::from_call)?;
            Ok(ReplicaState {
                owner: record.owner.name.clone(),
                epoch: record.epoch,
                replica: record.replica.clone(),
                position: session.position(),
                snapshot,
                digest: tokens::hex(&digest),
            })
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?
    }

    /// Hashes the live instance before a call (see
    /// [`SessionState::digest_before`]). Without one, the fence's hash
    /// rebuilds the session: slower, as exact.
    fn note_digest_before(state: &mut SessionState) {
        let position = state.position;
        state.digest_before = state
            .live
            .as_mut()
            .and_then(|session| session.state_digest().ok())
            .map(|digest| (position, digest));
    }

    /// Applies `call` to a live session: the entry is queued for the
    /// journal by [`Node::make_durable`].
    fn apply(
        &self,
        state: &mut SessionState,
        call: Call,
        clock: u64,
    ) -> Result<Applied, NodeError> {
        let Some(session) = state.live.as_mut() else {
            return Err(NodeError::Internal("the session is not live".into()));
        };
        let (reply, entry) = session.call(call, clock).map_err(NodeError::from_call)?;
        let mut encoded = vec![(entry.position, entry.encode())];
        Self::remember(&self.config, state, &entry, &reply);
        // The contract reports the end of a game through `status` only.
        if matches!(
            reply,
            Reply::Outcome(Ok(_)) | Reply::Ticked(_) | Reply::Loaded(Ok(_))
        ) {
            let session = state
                .live
                .as_mut()
                .ok_or_else(|| NodeError::Internal("the session is not live".into()))?;
            let (status, status_entry) = session
                .call(Call::Status, clock)
                .map_err(NodeError::from_call)?;
            encoded.push((status_entry.position, status_entry.encode()));
            Self::remember(&self.config, state, &status_entry, &status);
        }
        Ok(Applied {
            entry,
            reply,
            encoded,
        })
    }

    /// Updates the session's bookkeeping from a journaled call's reply.
    fn remember(
        config: &NodeConfig,
        state: &mut SessionState,
        entry: &JournalEntry,
        reply: &Reply,
    ) {
        state.position = entry.position + 1;
        state.since_snapshot += 1;
        if let Some(next) = reply.next_tick() {
            state.next_tick = next;
        }
        let events = match reply {
            Reply::Outcome(Ok(o)) | Reply::Ticked(o) => o.events.clone(),
            _ => Vec::new(),
        };
        if let Call::Act {
            player,
            client_action_id: Some(client_id),
            ..
        } = &entry.call
        {
            let outcome = match reply {
                Reply::Outcome(Ok(_)) => ActOutcome::Accepted {
                    seq: entry.position,
                },
                Reply::Outcome(Err(r)) => ActOutcome::Rejected {
                    seq: entry.position,
                    reason: r.reason.clone(),
                },
                _ => ActOutcome::Rejected {
                    seq: entry.position,
                    reason: "unexpected reply".into(),
                },
            };
            state
                .acts
                .remember(player.clone(), client_id.clone(), outcome);
        }
        if let Reply::Status(status) = reply {
            state.status = status.clone();
        }
        if !events.is_empty() {
            state.ring.push_back(Arc::new(EventBatch {
                seq: entry.position,
                events,
            }));
            while state.ring.len() > config.resume_window {
                if let Some(evicted) = state.ring.pop_front() {
                    state.ring_from = evicted.seq + 1;
                }
            }
        }
    }

    /// Queues the entry for the journal and waits until it is durable; then
    /// publishes its events and, now and then, snapshots in the background.
    pub(crate) async fn make_durable(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        state: &mut SessionState,
        applied: Applied,
    ) -> Result<(), NodeError> {
        let queued = Instant::now();
        let entries = applied.encoded.len() as u64;
        let bytes: u64 = applied.encoded.iter().map(|(_, b)| b.len() as u64).sum();
        let encoded: Vec<Vec<u8>> = applied.encoded.into_iter().map(|(_, b)| b).collect();
        let mut late = None;
        let durable = match self.mesh.get() {
            Some(mesh) => match mesh.append(&cell.record.id, encoded).await {
                // Appended: the entries are the session's history now, even
                // if not yet confirmed, so the instance keeps them.
                Ok(appended) => {
                    late = appended.durable().await.err();
                    Ok(())
                }
                Err(refused @ AppendError::Refused(Refusal::NotOwner(_) | Refusal::Moving)) => {
                    Err(NodeError::Moved(format!("the session moved: {refused}")))
                }
                Err(refused) => Err(NodeError::Unavailable(format!(
                    "the session cannot take actions right now: {refused}"
                ))),
            },
            None => {
                self.append_local(&cell.record.id, applied.entry.position, encoded)
                    .await
            }
        };
        if durable.is_ok() && late.is_none() {
            self.metrics
                .journaled(&module_id(&state.module), entries, bytes, queued.elapsed());
        }
        if let Err(e) = durable {
            // The instance ran ahead of the journal: drop it, so the next
            // call resumes from what is durable.
            state.live = None;
            state.position = applied.entry.position;
            state.ring.retain(|b| b.seq < applied.entry.position);
            return Err(e);
        }
        if let Some(batch) = state
            .ring
            .back()
            .filter(|b| b.seq == applied.entry.position)
        {
            let _ = cell.events.send(batch.clone());
        }
        if let Reply::Outcome(Ok(_)) | Reply::Ticked(_) = &applied.reply {
            cell.ticker.notify_one();
        }
        if state.since_snapshot >= self.config.snapshot_every
            && !cell.leaving.load(Ordering::Relaxed)
        {
            self.snapshot_in_background(cell, state);
        }
        match late {
            // Its new owner answers a retry from its history, or applies it.
            Some(Unconfirmed::Moved) => Err(NodeError::Moved(
                "applied, and the session moved before the replica acknowledged it; \
                 retry with the same action id"
                    .into(),
            )),
            Some(Unconfirmed::Late(reason)) => Err(NodeError::Unavailable(format!(
                "applied but not yet acknowledged by the replica ({reason}); \
                 retry with the same action id"
            ))),
            None => Ok(()),
        }
    }

    /// Writes entries (from `position` on) to this node's journal and
    /// waits until they are durable. Entries commit in order, so the last
    /// one's ack covers them all.
    async fn append_local(
        &self,
        session: &str,
        position: u64,
        entries: Vec<Vec<u8>>,
    ) -> Result<(), NodeError> {
        let mut last = None;
        for (i, bytes) in entries.into_iter().enumerate() {
            let (tx, rx) = oneshot::channel();
            self.journal
                .append(session, position + i as u64, bytes, move |result| {
                    let _ = tx.send(result);
                });
            last = Some(rx);
        }
        match last {
            Some(rx) => rx.await.unwrap_or(Err(StoreError::Closed)),
            None => Ok(()),
        }
        .map_err(|e| NodeError::Failing(format!("the journal could not be written: {e}")))
    }

    /// Captures a checkpoint now (microseconds, under the lock) and encodes
    /// and stores it on a blocking thread.
    pub(crate) fn snapshot_in_background(
        self: &Arc<Self>,
        cell: &SessionCell,
        state: &mut SessionState,
    ) {
        let Some(pending) = Self::capture_snapshot(cell, state) else {
            return;
        };
        let node = self.clone();
        tokio::task::spawn_blocking(move || {
            let _ = node.store_snapshot(pending);
        });
    }

    /// Makes the live session's current state its rollback checkpoint and
    /// returns it with the node's bookkeeping as of the same position.
    fn capture_snapshot(cell: &SessionCell, state: &mut SessionState) -> Option<PendingSnapshot> {
        let session = state.live.as_mut()?;
        let (image, delta) = match session.checkpoint_with_delta() {
            Ok(captured) => captured,
            Err(e) => {
                tracing::warn!(session = %cell.record.id, error = %e, "snapshot failed");
                return None;
            }
        };
        state.since_snapshot = 0;
        Some(PendingSnapshot {
            id: cell.record.id.clone(),
            module: module_id(&state.module),
            meta: snapshot_meta(state),
            image,
            delta,
            shipper: cell.shipper.clone(),
        })
    }

    /// Encodes and stores a captured snapshot (blocking), then offers it
    /// to the session's replica in a cluster. Returns the sealed snapshot
    /// once durable here.
    fn store_snapshot(self: &Arc<Self>, pending: PendingSnapshot) -> Option<Arc<Vec<u8>>> {
        let started = Instant::now();
        let sealed = Arc::new(pending.seal());
        match self.put_snapshot(&pending.id, pending.image.position, sealed.clone()) {
            Ok(()) => {
                self.metrics
                    .snapshot(&pending.module, sealed.len() as u64, started.elapsed());
                if self.mesh.get().is_some() {
                    let capture = Capture {
                        position: pending.image.position,
                        meta: pending.meta,
                        sealed: sealed.clone(),
                        delta: Some(pending.delta),
                    };
                    if pending.shipper.offer(capture)
                        && let Ok(runtime) = tokio::runtime::Handle::try_current()
                    {
                        runtime.spawn(snapshots::ship(
                            self.clone(),
                            pending.id,
                            pending.module,
                            pending.shipper,
                        ));
                    }
                }
                Some(sealed)
            }
            Err(e) => {
                tracing::warn!(session = %pending.id, error = %e, "storing a snapshot failed");
                None
            }
        }
    }

    /// Stores a sealed snapshot of session `id` at `position` and waits
    /// until it is durable (blocking): a small one in the journal's next
    /// commit, a large one in a commit of its own, so that the journal's
    /// commits, which players wait for, never carry megabytes. A node
    /// without a cluster snapshots only positions whose entries are
    /// durable, and drops the entries a snapshot covers with it or after
    /// it; a cluster node keeps its journals whole (they belong to the
    /// cluster protocol, which counts every entry, and a rebuild uses a
    /// snapshot only where the journal agrees with it).
    pub(crate) fn put_snapshot(
        &self,
        id: &str,
        position: u64,
        sealed: Arc<Vec<u8>>,
    ) -> Result<(), StoreError> {
        let large = sealed.len() > INLINE_SNAPSHOT_BYTES;
        let snapshot = SnapshotWrite {
            session: id.to_owned(),
            position,
            snapshot: sealed,
        };
        let trim = self.config.cluster.is_none().then(|| Write::TrimBefore {
            session: id.to_owned(),
            position,
        });
        if !large {
            let writes = std::iter::once(Write::Snapshot(snapshot)).chain(trim);
            return self.journal.submit_and_wait(writes.collect());
        }
        self.large_snapshots.submit_and_wait(vec![snapshot])?;
        if let Some(trim) = trim {
            // Nothing waits for the trim: until it commits, recovery reads
            // the journal from the snapshot's position on anyway.
            self.journal.submit(vec![trim], |_| {});
        }
        Ok(())
    }

    // --- ticks and hibernation -------------------------------------------

    fn spawn_ticker(self: &Arc<Self>, cell: Arc<SessionCell>) {
        let node = self.clone();
        tokio::spawn(async move { node.run_ticker(cell).await });
    }

    /// Calls `tick` when the rules asked for it; waits for a change or the
    /// deadline, never polls.
    async fn run_ticker(self: Arc<Self>, cell: Arc<SessionCell>) {
        let mut moved = cell.moved.subscribe();
        loop {
            if self.shutting_down.load(Ordering::Relaxed) {
                return;
            }
            if *moved.borrow_and_update() != Location::Here {
                // Let go (no longer held here): done. Fenced for a handoff:
                // wait for it to complete or be called off.
                if !self.sessions_read().contains_key(&cell.record.id) {
                    return;
                }
                tokio::select! {
                    changed = moved.changed() => if changed.is_err() { return },
                    () = self.stop.notified() => return,
                }
                continue;
            }
            let due = cell.state.lock().await.next_tick;
            let changed = cell.ticker.notified();
            match due {
                None => {
                    tokio::select! {
                        () = changed => continue,
                        Ok(()) = moved.changed() => continue,
                        () = self.stop.notified() => return,
                    }
                }
                Some(due) => {
                    // A deadline on the session clock, mapped onto the runtime's clock.
                    let deadline = tokio::time::Instant::now()
                        + Duration::from_millis(due.saturating_sub(now_ms()));
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        () = changed => continue,
                        Ok(()) = moved.changed() => continue,
                        () = self.stop.notified() => return,
                    }
                    if let Err(e) = self.tick(&cell).await {
                        tracing::warn!(session = %cell.record.id, error = %e, "tick failed");
                        // A broken tick must not spin: wait for a change.
                        tokio::select! {
                            () = cell.ticker.notified() => {}
                            () = self.stop.notified() => return,
                        }
                    }
                }
            }
        }
    }

    async fn tick(self: &Arc<Self>, cell: &Arc<SessionCell>) -> Result<(), NodeError> {
        let state = cell.state.clone().lock_owned().await;
        if state.next_tick.is_none_or(|due| due > now_ms()) {
            return Ok(());
        }
        let (state_back, applied) = self.apply_blocking(cell, state, Call::Tick).await?;
        let mut state = state_back;
        let applied = applied?;
        self.make_durable(cell, &mut state, applied).await
    }

    /// Hibernates sessions idle for `hibernate_after_ms`: snapshot, drop
    /// the instance. They wake on their next call or tick.
    async fn sweep_idle(self: Arc<Self>) {
        // Periodic by nature: the period is the point.
        let mut every = tokio::time::interval(Duration::from_millis(
            (self.config.hibernate_after_ms / 4).max(50),
        ));
        loop {
            tokio::select! {
                _ = every.tick() => {}
                () = self.stop.notified() => return,
            }
            let idle = Duration::from_millis(self.config.hibernate_after_ms);
            let cells: Vec<_> = self.sessions_read().values().cloned().collect();
            for cell in cells {
                let Ok(mut state) = cell.state.clone().try_lock_owned() else {
                    continue;
                };
                if state.live.is_none() || state.last_used.elapsed() < idle {
                    continue;
                }
                let Some(pending) = Self::capture_snapshot(&cell, &mut state) else {
                    continue;
                };
                let node = self.clone();
                let _ = tokio::task::spawn_blocking(move || {
                    // Only a durable snapshot lets the instance go.
                    if node.store_snapshot(pending).is_some() {
                        state.live = None;
                    }
                })
                .await;
            }
        }
    }

    /// A session's durable history for an independent replay: its latest
    /// snapshot, the journal after it, and the digest of its live state.
    pub async fn export(self: &Arc<Self>, id: &str) -> Result<Export, NodeError> {
        let cell = self.cell_by_id(id)?;
        let state = cell.state.clone().lock_owned().await;
        let node = self.clone();
        let (_state, export) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let result = (|| {
                node.wake(&cell, &mut state)?;
                let session = state
                    .live
                    .as_mut()
                    .ok_or_else(|| NodeError::Internal("not live".into()))?;
                let digest = session.state_digest().map_err(NodeError::from_call)?;
                let snapshot = node.store.snapshot(id_of(&cell))?;
                let from = snapshot.as_ref().map_or(0, |(p, _)| *p);
                let journal = node.store.journal(id_of(&cell), from)?;
                // An upgraded session's snapshot is of the module it ran then.
                let module_hash = match &snapshot {
                    Some((_, stored)) => baton_runtime::Image::decode(snapshots::open(stored)?.1)
                        .map_err(|e| NodeError::Internal(e.to_string()))?
                        .module
                        .to_hex(),
                    None => cell.record.module_hash.clone(),
                };
                Ok(Export {
                    module_hash,
                    position: state.position,
                    digest: tokens::hex(&digest),
                    snapshot: match &snapshot {
                        Some((position, stored)) => Some(ExportedSnapshot {
                            position: *position,
                            bytes: tokens::hex(snapshots::open(stored)?.1),
                        }),
                        None => None,
                    },
                    journal: journal
                        .into_iter()
                        .map(|(position, bytes)| ExportedEntry {
                            position,
                            entry: tokens::hex(&bytes),
                        })
                        .collect(),
                })
            })();
            (state, result)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        export
    }

    /// The Prometheus exposition of this node's metrics.
    pub async fn metrics_text(&self) -> String {
        let cells: Vec<_> = self.sessions_read().values().cloned().collect();
        let mut counts = crate::metrics::SessionCounts {
            by_module: BTreeMap::new(),
        };
        for cell in cells {
            let (live, module) = {
                let state = cell.state.lock().await;
                (state.live.is_some(), module_id(&state.module))
            };
            let entry = counts.by_module.entry(module).or_default();
            if live {
                entry.0 += 1;
            } else {
                entry.1 += 1;
            }
        }
        self.metrics.render(&counts, self.readiness().await.is_ok())
    }

    /// Stops taking work, finishes calls in flight and flushes the journal.
    pub async fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
        self.stop.notify_waiters();
        // Taking every session's lock waits for the call it runs.
        let cells: Vec<_> = self.sessions_read().values().cloned().collect();
        for cell in cells {
            let _ = cell.state.lock().await;
        }
    }
}

/// A node's view of its cluster (see [`Node::cluster_status`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// This node's name.
    pub name: String,
    /// Where it listens for other nodes.
    pub quic: String,
    /// The other nodes it sees up, by name.
    pub peers: Vec<String>,
    /// Sessions it owns.
    pub owned: usize,
}

/// A session as a node's replicated journal rebuilds it (see
/// [`Node::replica_state`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReplicaState {
    /// The owner's node name, per the records.
    pub owner: String,
    /// The owner's epoch.
    pub epoch: u64,
    /// The replica's node name.
    pub replica: String,
    /// Journal entries held.
    pub position: u64,
    /// The position of the snapshot the rebuild started from (one the
    /// owner shipped here), 0 if it replayed the whole journal.
    pub snapshot: u64,
    /// SHA-256 over the rebuilt instance's memory and globals, hex.
    pub digest: String,
}

/// A session's durable history (see [`Node::export`]). Bytes are hex.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Export {
    /// The module the export starts on (its snapshot's, or the one the
    /// session started on), as hex SHA-256. A switch in the journal names
    /// the module it moves to.
    pub module_hash: String,
    /// Journal entries applied.
    pub position: u64,
    /// SHA-256 of the live session's memories and globals, hex.
    pub digest: String,
    /// The latest snapshot, if one was taken.
    pub snapshot: Option<ExportedSnapshot>,
    /// The journal entries after it.
    pub journal: Vec<ExportedEntry>,
}

/// A snapshot in an [`Export`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportedSnapshot {
    /// The position it covers.
    pub position: u64,
    /// The encoded snapshot, hex.
    pub bytes: String,
}

/// A journal entry in an [`Export`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ExportedEntry {
    /// Its position.
    pub position: u64,
    /// The encoded entry, hex.
    pub entry: String,
}

/// The node's bookkeeping as of the session's position, to seal with a
/// snapshot of it.
fn snapshot_meta(state: &SessionState) -> SnapshotMeta {
    SnapshotMeta {
        acts: state.acts.entries(),
        next_tick: state.next_tick,
        status: Some(state.status.clone()),
        tail: None,
    }
}

fn id_of(cell: &SessionCell) -> &str {
    &cell.record.id
}

/// A snapshot captured under a session's lock, waiting to be encoded and
/// stored off it.
struct PendingSnapshot {
    id: String,
    module: String,
    /// The node's bookkeeping as of the image's position.
    meta: SnapshotMeta,
    image: Arc<baton_runtime::Image>,
    /// The pages changed since the capture before it.
    delta: baton_runtime::Delta,
    shipper: Arc<Shipper>,
}

impl PendingSnapshot {
    /// The snapshot as stored and shipped: its bookkeeping and its encoded
    /// image, sealed (blocking).
    fn seal(&self) -> Vec<u8> {
        snapshots::seal_image(&self.meta.to_json(), &self.image)
    }
}

/// What a client gets when it joins a session.
pub(crate) struct Joined {
    /// The session's module, `name@version`.
    pub(crate) module: String,
    pub(crate) receiver: broadcast::Receiver<Arc<EventBatch>>,
    pub(crate) missed: Option<Vec<Arc<EventBatch>>>,
    pub(crate) resync: bool,
    pub(crate) position: u64,
    /// `None` when the client resumes with the view it holds.
    pub(crate) view: Option<serde_json::Value>,
    pub(crate) status: wire::Status,
    /// Changes when the session moved to another node.
    pub(crate) moved: watch::Receiver<Location>,
    /// Changes when the session went back to an earlier state.
    pub(crate) resets: watch::Receiver<u64>,
}

/// A journaled call's result, waiting to be made durable: the call's
/// entry, and a `status` entry after a call that may have ended the game.
pub(crate) struct Applied {
    pub(crate) entry: JournalEntry,
    pub(crate) reply: Reply,
    encoded: Vec<(u64, Vec<u8>)>,
}

impl Applied {
    /// A call applied outside [`Node::apply`], with the session's
    /// bookkeeping brought up to it.
    pub(crate) fn remembered(
        config: &NodeConfig,
        state: &mut SessionState,
        entry: JournalEntry,
        reply: Reply,
    ) -> Self {
        Node::remember(config, state, &entry, &reply);
        Applied {
            encoded: vec![(entry.position, entry.encode())],
            entry,
            reply,
        }
    }
}

fn act_outcome(applied: &Applied) -> Option<ActOutcome> {
    match &applied.reply {
        Reply::Outcome(Ok(_)) => Some(ActOutcome::Accepted {
            seq: applied.entry.position,
        }),
        Reply::Outcome(Err(r)) => Some(ActOutcome::Rejected {
            seq: applied.entry.position,
            reason: r.reason.clone(),
        }),
        _ => None,
    }
}

impl NodeError {
    pub(crate) fn from_call(e: CallError) -> Self {
        match e {
            CallError::PoolExhausted => NodeError::Failing(e.to_string()),
            other => NodeError::RulesFailed(other.to_string()),
        }
    }
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => NodeError::Conflict(e.to_string()),
            other => NodeError::Failing(other.to_string()),
        }
    }
}
