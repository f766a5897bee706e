//! A live session: one store, one instance, calls serialized, every call
//! journaled, failures rolled back, state captured and restored exactly.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use baton_sdk::wire::{self, ModuleInfo, Outcome, Refusal, SetupArgs, Viewer};
use serde::{Deserialize, Serialize};
use wasmtime::component::{ComponentExportIndex, Instance, WasmList};
use wasmtime::{ResourceLimiter, Store, Trap};
use xxhash_rust::xxh3::xxh3_128;

use crate::bindings::{Rules, game};
use crate::instrument::VIEW_INTERFACE;
use crate::journal::{Call, JournalEntry, Reply, Switch};
use crate::module::{Fresh, MemoryAccess, ModuleHash, RuleModule};
use baton_snapshot::{Delta, Image, MemoryDelta, MemoryImage, PAGE, SnapshotError};

/// Bytes written per accessor call: bounds the accessor's scratch memory.
/// Small, because a fresh pool slot faults in every scratch page it
/// touches (~1.5 µs each on a VM), and a node taking sessions over in a
/// deploy starts with fresh slots; 64 KiB costs 32 calls per 2 MiB.
const CHUNK: usize = 64 << 10;
/// Most bytes of guest memory one view shows (reading copies nothing, so
/// only a list's u32 length bounds it).
const VIEW_MAX: usize = 1 << 30;
/// Fuel for the accessor's own copying, which is not the rules' work.
const ACCESSOR_FUEL: u64 = u64::MAX / 4;

/// Per-session limits. They live in the session's record, not in node
/// config, so every host enforces the same ones.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Fuel (roughly, Wasm instructions) one call may use. Deterministic:
    /// a replay runs out at the same instruction on any host.
    pub fuel_per_call: u64,
    /// The most bytes a guest memory may grow to.
    pub memory_bytes: u64,
    /// The most bytes of events, logs or view one call may return.
    pub max_output_bytes: usize,
    /// Wall-clock backstop per call, in milliseconds; a host fault if hit.
    pub backstop_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            fuel_per_call: 200_000_000,
            memory_bytes: 64 << 20,
            max_output_bytes: 1 << 20,
            backstop_ms: 2000,
        }
    }
}

/// Why a call failed. The session is back at its state before the call.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The call used its whole fuel budget.
    #[error("the rules ran out of fuel: one call may use {budget} units (an endless loop?)")]
    OutOfFuel {
        /// The budget.
        budget: u64,
    },
    /// The guest tried to grow memory past the session's limit.
    #[error("the rules tried to use {wanted} bytes of memory; the session's limit is {limit}")]
    MemoryLimit {
        /// Bytes the guest asked for.
        wanted: u64,
        /// The limit.
        limit: u64,
    },
    /// The guest's call stack overflowed.
    #[error("the rules overflowed their stack (unbounded recursion?)")]
    StackOverflow,
    /// The guest panicked: Rust guests abort on panic.
    #[error(
        "the rules panicked (run the same calls through the SDK harness to see the message){backtrace}"
    )]
    Panicked {
        /// Where, as far as wasmtime can tell.
        backtrace: String,
    },
    /// Another trap.
    #[error("the rules trapped: {trap}{backtrace}")]
    Trapped {
        /// The trap.
        trap: String,
        /// Where.
        backtrace: String,
    },
    /// The wall-clock backstop fired: a host fault, never journaled.
    #[error("the call was stopped after {after_ms} ms of wall-clock time (host backstop)")]
    Backstop {
        /// The backstop.
        after_ms: u64,
    },
    /// The rules returned more than the session allows.
    #[error("the rules returned {bytes} bytes from one call; the limit is {limit}")]
    OutputTooLarge {
        /// What they returned.
        bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// The instance pool is full: try again later or elsewhere.
    #[error("no instance slot is free on this node")]
    PoolExhausted,
    /// The session could not be put back after a failure; it takes no calls.
    #[error("the session is unusable: {0}")]
    Poisoned(String),
    /// A journal entry out of order.
    #[error("journal entry {entry} does not follow the session's position {position}")]
    OutOfOrder {
        /// The entry's position.
        entry: u64,
        /// The session's.
        position: u64,
    },
    /// Anything else the host ran into.
    #[error("host error: {0}")]
    Host(String),
}

/// Why a [`Session::switch`] did not happen. The session is as it was.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SwitchError {
    /// The new version could not take the session over (its migration
    /// refused the state, it trapped loading it, or a view failed): the
    /// reason, for the operator.
    #[error("{0}")]
    NewVersion(String),
    /// The session itself could not be switched.
    #[error(transparent)]
    Session(#[from] CallError),
}

/// Why a snapshot could not be restored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RestoreError {
    /// The bytes are not a usable snapshot.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot's shape does not fit the module.
    #[error("the snapshot does not fit module {module}: {reason}")]
    Layout {
        /// The module.
        module: ModuleHash,
        /// Why.
        reason: String,
    },
    /// Instantiating or writing the instance failed.
    #[error(transparent)]
    Call(#[from] CallError),
}

/// What the store holds for its session.
pub(crate) struct SessionData {
    limiter: Limiter,
    /// The guest memory the accessor's `view-k` last showed the host (see
    /// [`crate::instrument`]): a list that *is* that memory, read in place.
    view: Option<WasmList<u8>>,
}

/// Adds the host's side of the accessor's view ([`VIEW_INTERFACE`]) to
/// `linker`: `look` keeps the list it is given, for the host to read.
pub(crate) fn add_view_to_linker(
    linker: &mut wasmtime::component::Linker<SessionData>,
) -> wasmtime::Result<()> {
    linker.instance(VIEW_INTERFACE)?.func_wrap(
        "look",
        |mut store: wasmtime::StoreContextMut<'_, SessionData>, (data,): (WasmList<u8>,)| {
            store.data_mut().view = Some(data);
            Ok(())
        },
    )
}

struct Limiter {
    memory_bytes: u64,
    /// Set when the guest was refused memory, to name the cause of the
    /// trap that follows.
    refused: Option<u64>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.memory_bytes {
            self.refused = Some(desired as u64);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// What one pass over memory found.
struct Captured {
    /// Per memory, the pages changed since the last capture.
    deltas: Vec<MemoryDelta>,
    /// Per memory, the pages that differ from the fresh instance (filled
    /// only for a full capture).
    images: Vec<MemoryImage>,
    globals: Vec<u8>,
}

/// An instance and its store.
pub(crate) struct Live {
    pub(crate) store: Store<SessionData>,
    instance: Instance,
    pub(crate) rules: Rules,
}

fn zero_page_hash() -> u128 {
    static HASH: OnceLock<u128> = OnceLock::new();
    *HASH.get_or_init(|| xxh3_128(&[0u8; PAGE]))
}

fn host(e: impl std::fmt::Display) -> CallError {
    CallError::Host(e.to_string())
}

impl Live {
    pub(crate) fn instantiate(module: &RuleModule, limits: &Limits) -> Result<Live, CallError> {
        let engine = module.runtime.engine();
        let mut store = Store::new(
            engine,
            SessionData {
                limiter: Limiter {
                    memory_bytes: limits.memory_bytes,
                    refused: None,
                },
                view: None,
            },
        );
        store.limiter(|data| &mut data.limiter);
        store.epoch_deadline_trap();
        store.set_fuel(ACCESSOR_FUEL).map_err(host)?;
        store.set_epoch_deadline(
            module
                .runtime
                .ticks(Duration::from_millis(limits.backstop_ms)),
        );
        let instance = module
            .pre
            .instance_pre()
            .instantiate(&mut store)
            .map_err(|e| {
                if e.downcast_ref::<wasmtime::PoolConcurrencyLimitError>()
                    .is_some()
                {
                    CallError::PoolExhausted
                } else {
                    host(format!("{e:#}"))
                }
            })?;
        let rules = Rules::new(&mut store, &instance).map_err(host)?;
        Ok(Live {
            store,
            instance,
            rules,
        })
    }

    /// Runs one journaled call with the session's limits.
    fn run(
        &mut self,
        module: &RuleModule,
        limits: &Limits,
        entry: &JournalEntry,
    ) -> Result<Reply, CallError> {
        self.store.data_mut().limiter.refused = None;
        self.store.set_fuel(limits.fuel_per_call).map_err(host)?;
        self.store.set_epoch_deadline(
            module
                .runtime
                .ticks(Duration::from_millis(limits.backstop_ms)),
        );
        let game = self.rules.baton_rules_game();
        let store = &mut self.store;
        let now = entry.now;
        let reply = match &entry.call {
            Call::Info => game.call_info(store).map(|i| {
                Reply::Info(ModuleInfo {
                    name: i.name,
                    version: i.version,
                    state_schema: i.state_schema,
                })
            }),
            Call::Start(setup) => {
                let setup = game::Setup {
                    session_id: setup.session_id.clone(),
                    players: setup
                        .players
                        .iter()
                        .map(|p| game::Player {
                            id: p.id.clone(),
                            name: p.name.clone(),
                        })
                        .collect(),
                    options: setup.options.clone(),
                    seed: setup.seed,
                    now,
                };
                game.call_start(store, &setup)
                    .map(|r| Reply::Outcome(r.map(outcome).map_err(refusal)))
            }
            Call::Act { player, action, .. } => game
                .call_act(store, player, action, now)
                .map(|r| Reply::Outcome(r.map(outcome).map_err(refusal))),
            Call::Tick => game
                .call_tick(store, now)
                .map(|o| Reply::Ticked(outcome(o))),
            Call::View(viewer) => {
                let viewer = match viewer {
                    Viewer::Player(id) => game::Viewer::Player(id.clone()),
                    Viewer::Spectator => game::Viewer::Spectator,
                };
                game.call_view(store, &viewer).map(Reply::View)
            }
            Call::Status => game.call_status(store).map(|s| {
                Reply::Status(match s {
                    game::GameStatus::Running => wire::Status::Running,
                    game::GameStatus::Finished(result) => wire::Status::Finished(result),
                })
            }),
            Call::Save => game.call_save(store).map(Reply::Saved),
            Call::Load { from_schema, bytes } => game
                .call_load(store, *from_schema, bytes)
                .map(Reply::Loaded),
            Call::Switch(_) => {
                return Err(host(
                    "a switch moves a session to a new instance; it is not a call into one",
                ));
            }
        };
        let reply = reply.map_err(|e| self.classify(e, limits))?;
        let size = reply.size();
        if size > limits.max_output_bytes {
            return Err(CallError::OutputTooLarge {
                bytes: size,
                limit: limits.max_output_bytes,
            });
        }
        Ok(reply)
    }

    /// Names the cause of a failed guest call.
    fn classify(&self, error: wasmtime::Error, limits: &Limits) -> CallError {
        if let Some(wanted) = self.store.data().limiter.refused {
            return CallError::MemoryLimit {
                wanted,
                limit: limits.memory_bytes,
            };
        }
        let backtrace = error
            .downcast_ref::<wasmtime::WasmBacktrace>()
            .map(|bt| format!("\n{bt}"))
            .unwrap_or_default();
        match error.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => CallError::OutOfFuel {
                budget: limits.fuel_per_call,
            },
            Some(Trap::Interrupt) => CallError::Backstop {
                after_ms: limits.backstop_ms,
            },
            Some(Trap::StackOverflow) => CallError::StackOverflow,
            Some(Trap::MemoryOutOfBounds) => CallError::Trapped {
                trap: format!(
                    "{} (in Rust rules this is usually the 64 KiB stack overflowing: deep \
                     recursion or a large value on the stack)",
                    Trap::MemoryOutOfBounds
                ),
                backtrace,
            },
            Some(Trap::UnreachableCodeReached) => CallError::Panicked { backtrace },
            Some(trap) => CallError::Trapped {
                trap: trap.to_string(),
                backtrace,
            },
            None => CallError::Host(format!("{error:#}")),
        }
    }

    // --- the snapshot accessor ------------------------------------------

    fn prepare_accessor(&mut self) -> Result<(), CallError> {
        self.store.set_fuel(ACCESSOR_FUEL).map_err(host)?;
        self.store.set_epoch_deadline(u64::MAX / 2);
        Ok(())
    }

    fn size(&mut self, index: &ComponentExportIndex) -> Result<u32, CallError> {
        let f = self
            .instance
            .get_typed_func::<(), (u32,)>(&mut self.store, index)
            .map_err(host)?;
        Ok(f.call(&mut self.store, ()).map_err(host)?.0)
    }

    fn grow(&mut self, index: &ComponentExportIndex, pages: u32) -> Result<i32, CallError> {
        let f = self
            .instance
            .get_typed_func::<(u32,), (i32,)>(&mut self.store, index)
            .map_err(host)?;
        Ok(f.call(&mut self.store, (pages,)).map_err(host)?.0)
    }

    /// Guest memory `[offset, offset + len)`, in place (see
    /// [`crate::instrument`]).
    fn view(
        &mut self,
        index: &ComponentExportIndex,
        offset: usize,
        len: usize,
    ) -> Result<WasmList<u8>, CallError> {
        let f = self
            .instance
            .get_typed_func::<(u32, u32), ()>(&mut self.store, index)
            .map_err(host)?;
        let offset = u32::try_from(offset).map_err(host)?;
        let len = u32::try_from(len).map_err(host)?;
        self.store.data_mut().view = None;
        f.call(&mut self.store, (offset, len)).map_err(host)?;
        self.store
            .data_mut()
            .view
            .take()
            .ok_or_else(|| host("the accessor showed no memory"))
    }

    fn write_pages(
        &mut self,
        index: &ComponentExportIndex,
        pages: &[u32],
        data: &[u8],
    ) -> Result<(), CallError> {
        let f = self
            .instance
            .get_typed_func::<(&[u32], &[u8]), ()>(&mut self.store, index)
            .map_err(host)?;
        f.call(&mut self.store, (pages, data)).map_err(host)
    }

    fn get_globals(&mut self, module: &RuleModule) -> Result<Vec<u8>, CallError> {
        let f = self
            .instance
            .get_typed_func::<(), (WasmList<u8>,)>(&mut self.store, &module.get_globals)
            .map_err(host)?;
        let (list,) = f.call(&mut self.store, ()).map_err(host)?;
        Ok(list.as_le_slice(&self.store).to_vec())
    }

    fn set_globals(&mut self, module: &RuleModule, globals: &[u8]) -> Result<(), CallError> {
        let f = self
            .instance
            .get_typed_func::<(&[u8],), ()>(&mut self.store, &module.set_globals)
            .map_err(host)?;
        f.call(&mut self.store, (globals,)).map_err(host)
    }

    /// Visits every 4 KiB page of memory `access`, in order, in place:
    /// nothing is copied, and the guest's memory is only read.
    fn for_each_page(
        &mut self,
        access: &MemoryAccess,
        mut visit: impl FnMut(usize, &[u8]),
    ) -> Result<u32, CallError> {
        let size = self.size(&access.size)?;
        let bytes = size as usize * 65536;
        let mut offset = 0;
        while offset < bytes {
            // A list's length is a u32: a 4 GiB memory takes two views.
            let len = VIEW_MAX.min(bytes - offset);
            let list = self.view(&access.view, offset, len)?;
            let viewed = list.as_le_slice(&self.store);
            for (i, page) in viewed.chunks_exact(PAGE).enumerate() {
                visit(offset / PAGE + i, page);
            }
            offset += len;
        }
        Ok(size)
    }

    /// The fresh instance's sizes, page hashes and globals.
    pub(crate) fn fresh_image(&mut self, module: &RuleModule) -> Result<Fresh, CallError> {
        self.prepare_accessor()?;
        let mut fresh = Fresh {
            sizes: Vec::new(),
            hashes: Vec::new(),
            globals: Vec::new(),
        };
        for access in &module.memories {
            let mut hashes = Vec::new();
            let size = self.for_each_page(access, |_, page| hashes.push(xxh3_128(page)))?;
            fresh.sizes.push(size);
            fresh.hashes.push(hashes);
        }
        fresh.globals = self.get_globals(module)?;
        Ok(fresh)
    }

    /// One pass over all memory: the pages whose hash differs from
    /// `hashes` (which it updates) and, if `full`, every page that differs
    /// from the fresh instance.
    fn capture(
        &mut self,
        module: &RuleModule,
        hashes: &mut [Vec<u128>],
        full: bool,
    ) -> Result<Captured, CallError> {
        self.prepare_accessor()?;
        let zero = zero_page_hash();
        let mut deltas = Vec::with_capacity(module.memories.len());
        let mut images = Vec::with_capacity(module.memories.len());
        for (k, access) in module.memories.iter().enumerate() {
            let known = &mut hashes[k];
            let fresh = &module.fresh.hashes[k];
            let mut delta = MemoryDelta::default();
            let mut image = MemoryImage::default();
            let size = self.for_each_page(access, |p, page| {
                let hash = xxh3_128(page);
                if p >= known.len() {
                    known.resize(p + 1, zero);
                }
                if known[p] != hash {
                    known[p] = hash;
                    delta.pages.push((p as u32, page.into()));
                }
                if full && fresh.get(p).copied().unwrap_or(zero) != hash {
                    image.pages.insert(p as u32, page.into());
                }
            })?;
            delta.size = size;
            image.size = size;
            deltas.push(delta);
            images.push(image);
        }
        let globals = self.get_globals(module)?;
        Ok(Captured {
            deltas,
            images,
            globals,
        })
    }

    /// Writes `image` into this fresh instance; returns the page hashes of
    /// the result.
    fn restore(
        &mut self,
        module: &RuleModule,
        image: &Image,
    ) -> Result<Vec<Vec<u128>>, RestoreError> {
        let misfit = |reason: String| RestoreError::Layout {
            module: module.hash(),
            reason,
        };
        if image.memories.len() != module.memories.len() {
            return Err(misfit(format!(
                "{} memories in the snapshot, {} in the module",
                image.memories.len(),
                module.memories.len()
            )));
        }
        if image.globals.len() != module.layout.globals_size() {
            return Err(misfit(format!(
                "{} bytes of globals in the snapshot, {} in the module",
                image.globals.len(),
                module.layout.globals_size()
            )));
        }
        self.prepare_accessor()?;
        let zero = zero_page_hash();
        let mut all_hashes = Vec::with_capacity(image.memories.len());
        for (k, (access, memory)) in module.memories.iter().zip(&image.memories).enumerate() {
            let current = self.size(&access.size)?;
            if memory.size < current {
                return Err(misfit(format!(
                    "memory {k} has {} pages in the snapshot but starts at {current}",
                    memory.size
                )));
            }
            if memory.size > current && self.grow(&access.grow, memory.size - current)? < 0 {
                return Err(RestoreError::Call(CallError::MemoryLimit {
                    wanted: u64::from(memory.size) * 65536,
                    limit: self.store.data().limiter.memory_bytes,
                }));
            }
            let mut hashes = module.fresh.hashes[k].clone();
            hashes.resize(memory.size as usize * (65536 / PAGE), zero);
            let batch = CHUNK / PAGE;
            let mut indices = Vec::with_capacity(batch);
            let mut data = Vec::with_capacity(CHUNK);
            let mut pages = memory.pages.iter().peekable();
            while pages.peek().is_some() {
                indices.clear();
                data.clear();
                for (index, page) in pages.by_ref().take(batch) {
                    let slot = hashes.get_mut(*index as usize).ok_or_else(|| {
                        misfit(format!("page {index} is beyond memory {k}'s size"))
                    })?;
                    *slot = xxh3_128(page);
                    indices.push(*index);
                    data.extend_from_slice(page);
                }
                self.write_pages(&access.write_pages, &indices, &data)?;
            }
            all_hashes.push(hashes);
        }
        self.set_globals(module, &image.globals)?;
        Ok(all_hashes)
    }

    /// The whole of memory `k`.
    fn memory(&mut self, module: &RuleModule, k: usize) -> Result<Vec<u8>, CallError> {
        self.prepare_accessor()?;
        let access = module
            .memories
            .get(k)
            .ok_or_else(|| host(format!("the module has no memory {k}")))?
            .clone();
        let mut bytes = Vec::new();
        self.for_each_page(&access, |_, page| bytes.extend_from_slice(page))?;
        Ok(bytes)
    }
}

fn outcome(o: game::Outcome) -> Outcome {
    Outcome {
        events: o
            .events
            .into_iter()
            .map(|e| wire::Event {
                audience: match e.audience {
                    game::Audience::Everyone => wire::Audience::Everyone,
                    game::Audience::Player(p) => wire::Audience::Player(p),
                },
                body: e.body,
            })
            .collect(),
        next_tick: o.next_tick,
        log: o.log,
    }
}

fn refusal(r: game::Rejection) -> Refusal {
    Refusal {
        reason: r.reason,
        log: r.log,
    }
}

/// A state to roll back to: kept in whichever form the session got it, so
/// that restoring never has to encode (compress) a whole image.
#[derive(Clone, Debug)]
enum Checkpoint {
    Encoded(Arc<Vec<u8>>),
    Image(Arc<Image>),
}

impl Checkpoint {
    fn image(&self) -> Result<std::borrow::Cow<'_, Image>, SnapshotError> {
        match self {
            Checkpoint::Encoded(bytes) => Image::decode(bytes).map(std::borrow::Cow::Owned),
            Checkpoint::Image(image) => Ok(std::borrow::Cow::Borrowed(image)),
        }
    }
}

/// One live session of a rule module.
///
/// Every call goes through [`Session::call`] (or the typed helpers), which
/// clamps the clock (`now = max(last, clock)`), runs the guest under the
/// session's [`Limits`], and returns the call's [`JournalEntry`]. A call
/// that fails leaves the session exactly as it was before: the instance is
/// rebuilt from the last checkpoint plus the journal since.
pub struct Session {
    module: Arc<RuleModule>,
    limits: Limits,
    live: Live,
    position: u64,
    now: u64,
    /// Page hashes as of the last capture: what a delta is taken against.
    hashes: Vec<Vec<u128>>,
    /// The last checkpoint and the entries applied since: what a failed
    /// call rolls back to.
    checkpoint: Checkpoint,
    since_checkpoint: Vec<JournalEntry>,
    /// The position of the last capture.
    captured_at: u64,
    /// The position at which a capture last read `hashes` from this
    /// instance's memory: until the next call they are its page hashes,
    /// and [`Session::state_digest`] needs no pass of its own. (After a
    /// restore or a switch they are the image's, not read back.)
    read_at: Option<u64>,
    poisoned: Option<String>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("module", &self.module.name_version())
            .field("position", &self.position)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A fresh session of `module`: nothing called yet.
    pub fn new(module: Arc<RuleModule>, limits: Limits) -> Result<Self, CallError> {
        let live = Live::instantiate(&module, &limits)?;
        let checkpoint = Checkpoint::Encoded(module.fresh_checkpoint.clone());
        Ok(Session {
            hashes: module.fresh.hashes.clone(),
            module,
            limits,
            live,
            position: 0,
            now: 0,
            checkpoint,
            since_checkpoint: Vec::new(),
            captured_at: 0,
            read_at: None,
            poisoned: None,
        })
    }

    /// The session saved in `snapshot` (an encoded full snapshot), in a
    /// fresh instance of `module`.
    pub fn restore(
        module: Arc<RuleModule>,
        limits: Limits,
        snapshot: &[u8],
    ) -> Result<Self, RestoreError> {
        let image = Image::decode(snapshot)?;
        let checkpoint = Checkpoint::Encoded(Arc::new(snapshot.to_vec()));
        Self::restore_into(module, limits, &image, checkpoint)
    }

    /// Like [`Session::restore`], from a decoded image, which the session
    /// keeps as its rollback checkpoint (so nothing is re-encoded).
    pub fn restore_image(
        module: Arc<RuleModule>,
        limits: Limits,
        image: Arc<Image>,
    ) -> Result<Self, RestoreError> {
        let checkpoint = Checkpoint::Image(Arc::clone(&image));
        Self::restore_into(module, limits, &image, checkpoint)
    }

    fn restore_into(
        module: Arc<RuleModule>,
        limits: Limits,
        image: &Image,
        checkpoint: Checkpoint,
    ) -> Result<Self, RestoreError> {
        if image.module != module.hash() {
            return Err(SnapshotError::WrongModule {
                expected: module.hash(),
                found: image.module,
            }
            .into());
        }
        let mut live = Live::instantiate(&module, &limits)?;
        let hashes = live.restore(&module, image)?;
        Ok(Session {
            module,
            limits,
            live,
            position: image.position,
            now: image.now,
            hashes,
            checkpoint,
            since_checkpoint: Vec::new(),
            captured_at: image.position,
            read_at: None,
            poisoned: None,
        })
    }

    /// Calls the rules at `clock` (clamped so session time never goes
    /// backwards) and returns the reply with the call's journal entry.
    pub fn call(&mut self, call: Call, clock: u64) -> Result<(Reply, JournalEntry), CallError> {
        let entry = JournalEntry {
            position: self.position,
            now: self.now.max(clock),
            call,
        };
        let reply = self.apply(&entry)?;
        Ok((reply, entry))
    }

    /// Applies a journal entry, e.g. when replaying a journal after a
    /// restore. The entry must be the session's next. A [`Call::Switch`]
    /// needs its module: see [`Session::replay_with`].
    pub fn replay(&mut self, entry: &JournalEntry) -> Result<Reply, CallError> {
        self.replay_with(entry, |_| None)
    }

    /// [`Session::replay`], with `modules` to find the module a
    /// [`Call::Switch`] moves the session onto. A journaled switch
    /// happened, so one that fails on replay is a host error.
    pub fn replay_with(
        &mut self,
        entry: &JournalEntry,
        modules: impl FnOnce(&ModuleHash) -> Option<Arc<RuleModule>>,
    ) -> Result<Reply, CallError> {
        let Call::Switch(switch) = &entry.call else {
            return self.apply(entry);
        };
        let hash = switch.module_hash();
        let module = modules(&hash).ok_or_else(|| {
            host(format!(
                "journal entry {} switches the session to module {hash}, which is not at hand",
                entry.position
            ))
        })?;
        self.switch_to(entry, module).map_err(|e| match e {
            SwitchError::Session(e) => e,
            SwitchError::NewVersion(reason) => host(format!(
                "journal entry {} switched the session, which fails on replay: {reason}",
                entry.position
            )),
        })
    }

    /// Moves the session onto a fresh instance of `to` (an upgrade, or the
    /// way back from one): `load` of `bytes`, saved with schema
    /// `from_schema`, then a `view` for each of `viewers`, all first in a
    /// shadow instance. Only if every step succeeds does the session switch
    /// to it, at its next position; else it stays exactly as it was, on
    /// its module, and the error says why.
    ///
    /// Afterwards the session has no capture to take a delta against: the
    /// next checkpoint must travel whole.
    pub fn switch(
        &mut self,
        to: Arc<RuleModule>,
        from_schema: u32,
        bytes: Vec<u8>,
        viewers: Vec<Viewer>,
        clock: u64,
    ) -> Result<(Reply, JournalEntry), SwitchError> {
        let entry = JournalEntry {
            position: self.position,
            now: self.now.max(clock),
            call: Call::Switch(Switch {
                module: to.hash().0,
                from_schema,
                bytes,
                viewers,
            }),
        };
        let reply = self.switch_to(&entry, to)?;
        Ok((reply, entry))
    }

    fn switch_to(
        &mut self,
        entry: &JournalEntry,
        to: Arc<RuleModule>,
    ) -> Result<Reply, SwitchError> {
        self.live()?;
        if entry.position != self.position {
            return Err(CallError::OutOfOrder {
                entry: entry.position,
                position: self.position,
            }
            .into());
        }
        let Call::Switch(switch) = &entry.call else {
            return Err(host("not a switch").into());
        };
        if to.hash() != switch.module_hash() {
            return Err(host(format!(
                "the switch names module {}, not {}",
                switch.module_hash(),
                to.hash()
            ))
            .into());
        }
        let name = to.name_version();
        // The steps the new instance runs, kept as its rollback journal.
        let step = |call| JournalEntry {
            position: entry.position,
            now: entry.now,
            call,
        };
        let mut steps = vec![step(Call::Load {
            from_schema: switch.from_schema,
            bytes: switch.bytes.clone(),
        })];
        steps.extend(switch.viewers.iter().cloned().map(|v| step(Call::View(v))));
        let mut shadow = Live::instantiate(&to, &self.limits)?;
        let mut next_tick = None;
        for step in &steps {
            let refused = |why: String| SwitchError::NewVersion(format!("{name} {why}"));
            match (&step.call, shadow.run(&to, &self.limits, step)) {
                (_, Ok(Reply::Loaded(Ok(next)))) => next_tick = next,
                (_, Ok(Reply::Loaded(Err(reason)))) => {
                    return Err(refused(format!("refused the saved state: {reason}")));
                }
                (_, Ok(Reply::View(Ok(_)))) => {}
                (Call::View(viewer), Ok(Reply::View(Err(reason)))) => {
                    return Err(refused(format!(
                        "cannot show the game to {viewer:?}: {reason}"
                    )));
                }
                (call, Ok(other)) => {
                    return Err(refused(format!("answered {} with {other:?}", call.name())));
                }
                (call, Err(e)) => return Err(refused(format!("failed in {}: {e}", call.name()))),
            }
        }
        self.live = shadow;
        self.hashes = to.fresh.hashes.clone();
        self.checkpoint = Checkpoint::Encoded(to.fresh_checkpoint.clone());
        self.since_checkpoint = steps;
        self.module = to;
        self.position += 1;
        self.now = self.now.max(entry.now);
        // Deltas are taken against the fresh instance now, as at position 0.
        self.captured_at = 0;
        self.read_at = None;
        Ok(Reply::Switched(next_tick))
    }

    /// The instance, unless a failed rollback left the session unusable.
    fn live(&mut self) -> Result<&mut Live, CallError> {
        match &self.poisoned {
            Some(reason) => Err(CallError::Poisoned(reason.clone())),
            None => Ok(&mut self.live),
        }
    }

    fn apply(&mut self, entry: &JournalEntry) -> Result<Reply, CallError> {
        self.live()?;
        if entry.position != self.position {
            return Err(CallError::OutOfOrder {
                entry: entry.position,
                position: self.position,
            });
        }
        match self.live.run(&self.module, &self.limits, entry) {
            Ok(reply) => {
                self.position += 1;
                self.now = self.now.max(entry.now);
                self.since_checkpoint.push(entry.clone());
                Ok(reply)
            }
            Err(error) => {
                self.roll_back()?;
                Err(error)
            }
        }
    }

    /// Rebuilds the instance from the checkpoint and the entries since.
    fn roll_back(&mut self) -> Result<(), CallError> {
        let rebuilt = (|| -> Result<Live, String> {
            let image = self.checkpoint.image().map_err(|e| e.to_string())?;
            let mut live =
                Live::instantiate(&self.module, &self.limits).map_err(|e| e.to_string())?;
            live.restore(&self.module, &image)
                .map_err(|e| e.to_string())?;
            for entry in &self.since_checkpoint {
                live.run(&self.module, &self.limits, entry)
                    .map_err(|e| format!("replaying entry {} failed: {e}", entry.position))?;
            }
            Ok(live)
        })();
        match rebuilt {
            // The rebuilt memory is byte-identical to the one before the
            // failed call, so the capture hashes still hold.
            Ok(live) => {
                self.live = live;
                Ok(())
            }
            Err(reason) => {
                let reason = format!("rolling back a failed call failed: {reason}");
                self.poisoned = Some(reason.clone());
                Err(CallError::Poisoned(reason))
            }
        }
    }

    /// One capture pass over the live instance (see `Live::capture`); its
    /// page hashes are this instance's until the next call.
    fn capture(&mut self, full: bool) -> Result<Captured, CallError> {
        self.live()?;
        let captured = self.live.capture(&self.module, &mut self.hashes, full)?;
        self.read_at = Some(self.position);
        Ok(captured)
    }

    /// Captures the full state: every page that differs from the fresh
    /// instance. Also the new baseline for [`Session::delta`].
    pub fn snapshot(&mut self) -> Result<Image, CallError> {
        let Captured {
            images, globals, ..
        } = self.capture(true)?;
        self.captured_at = self.position;
        Ok(Image {
            module: self.module.hash(),
            position: self.position,
            now: self.now,
            globals,
            memories: images,
        })
    }

    /// Captures the pages changed since the last capture.
    pub fn delta(&mut self) -> Result<Delta, CallError> {
        let Captured {
            deltas, globals, ..
        } = self.capture(false)?;
        let base = std::mem::replace(&mut self.captured_at, self.position);
        Ok(Delta {
            module: self.module.hash(),
            base,
            position: self.position,
            now: self.now,
            globals,
            memories: deltas,
        })
    }

    /// Takes a full snapshot, encodes it, and makes it the point failed
    /// calls roll back to (dropping the journal kept since the last one).
    pub fn checkpoint(&mut self) -> Result<Arc<Vec<u8>>, CallError> {
        Ok(Arc::new(self.checkpoint_image()?.encode()))
    }

    /// Like [`Session::checkpoint`] but without encoding: the image becomes
    /// the rollback point and is returned, so that the caller can encode and
    /// store it off the session's path.
    pub fn checkpoint_image(&mut self) -> Result<Arc<Image>, CallError> {
        Ok(self.checkpoint_with_delta()?.0)
    }

    /// Like [`Session::checkpoint_image`], and also returns the pages
    /// changed since the previous capture: what a replica that holds that
    /// capture needs to reach this one.
    pub fn checkpoint_with_delta(&mut self) -> Result<(Arc<Image>, Delta), CallError> {
        let Captured {
            images,
            deltas,
            globals,
        } = self.capture(true)?;
        let base = std::mem::replace(&mut self.captured_at, self.position);
        let delta = Delta {
            module: self.module.hash(),
            base,
            position: self.position,
            now: self.now,
            globals: globals.clone(),
            memories: deltas,
        };
        let image = Arc::new(Image {
            module: self.module.hash(),
            position: self.position,
            now: self.now,
            globals,
            memories: images,
        });
        self.checkpoint = Checkpoint::Image(image.clone());
        self.since_checkpoint.clear();
        Ok((image, delta))
    }

    /// The whole of guest memory `k`, for inspection and tests.
    pub fn memory(&mut self, k: usize) -> Result<Vec<u8>, CallError> {
        let module = self.module.clone();
        self.live()?.memory(&module, k)
    }

    /// The packed mutable globals.
    pub fn globals(&mut self) -> Result<Vec<u8>, CallError> {
        let module = self.module.clone();
        let live = self.live()?;
        live.prepare_accessor()?;
        live.get_globals(&module)
    }

    /// A digest of every memory and the globals: equal digests mean equal
    /// sessions. SHA-256 over each memory's size and its 4 KiB pages'
    /// xxh3-128 hashes, then the globals: a 2 MiB memory takes a tenth of
    /// a millisecond, not one, and it sits on a handoff's path.
    ///
    /// Right after a capture (no call since), the capture's page hashes,
    /// read from this instance's memory at this position, stand in for a
    /// pass of its own: a handoff's fence right after its warm snapshot
    /// hashes nothing twice.
    pub fn state_digest(&mut self) -> Result<[u8; 32], CallError> {
        use sha2::{Digest, Sha256};
        let module = self.module.clone();
        self.live()?;
        let captured = self.read_at == Some(self.position);
        let (live, hashes) = (&mut self.live, &self.hashes);
        live.prepare_accessor()?;
        let mut hasher = Sha256::new();
        for (k, access) in module.memories.iter().enumerate() {
            let mut pages = Vec::new();
            let known = match hashes.get(k) {
                Some(known) if captured => {
                    let size = live.size(&access.size)?;
                    (known.len() == size as usize * (65536 / PAGE)).then_some((size, known))
                }
                _ => None,
            };
            let size = match known {
                Some((size, known)) => {
                    for hash in known {
                        pages.extend_from_slice(&hash.to_le_bytes());
                    }
                    size
                }
                None => live.for_each_page(access, |_, page| {
                    pages.extend_from_slice(&xxh3_128(page).to_le_bytes());
                })?,
            };
            hasher.update((u64::from(size) * 65536).to_le_bytes());
            hasher.update(&pages);
        }
        hasher.update(live.get_globals(&module)?);
        Ok(hasher.finalize().into())
    }

    /// Journal entries applied.
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The session clock, in milliseconds.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The module this session runs.
    pub fn module(&self) -> &Arc<RuleModule> {
        &self.module
    }

    /// The session's limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Entries applied since the last checkpoint.
    pub fn since_checkpoint(&self) -> &[JournalEntry] {
        &self.since_checkpoint
    }

    /// The guest's memories and packed mutable globals as wasmtime's
    /// guest-debug API sees them: the oracle the accessor is tested
    /// against. Needs an engine with `guest_debug` on.
    #[cfg(feature = "debug-oracle")]
    #[doc(hidden)]
    pub fn debug_oracle(&mut self) -> Result<(Vec<Vec<u8>>, Vec<u8>), CallError> {
        let store = &mut self.live.store;
        let guest = store
            .debug_all_instances()
            .into_iter()
            .find(|i| i.module(&*store).imports().len() == 0)
            .ok_or_else(|| host("no guest instance in the debug view (is guest_debug on?)"))?;
        let mut memories = Vec::new();
        for m in &self.module.layout.memories {
            let memory = guest
                .debug_memory(&mut *store, m.index)
                .ok_or_else(|| host(format!("no memory {} in the debug view", m.index)))?;
            memories.push(memory.data(&*store).to_vec());
        }
        let mut globals = Vec::new();
        for g in &self.module.layout.globals {
            let global = guest
                .debug_global(&mut *store, g.index)
                .ok_or_else(|| host(format!("no global {} in the debug view", g.index)))?;
            match global.get(&mut *store) {
                wasmtime::Val::I32(v) => globals.extend_from_slice(&v.to_le_bytes()),
                wasmtime::Val::I64(v) => globals.extend_from_slice(&v.to_le_bytes()),
                wasmtime::Val::F32(bits) => globals.extend_from_slice(&bits.to_le_bytes()),
                wasmtime::Val::F64(bits) => globals.extend_from_slice(&bits.to_le_bytes()),
                wasmtime::Val::V128(v) => globals.extend_from_slice(&v.as_u128().to_le_bytes()),
                other => return Err(host(format!("unexpected global value {other:?}"))),
            }
        }
        Ok((memories, globals))
    }

    // --- typed helpers over `call` --------------------------------------

    /// `start`.
    pub fn start(&mut self, setup: SetupArgs) -> Result<Result<Outcome, Refusal>, CallError> {
        let clock = setup.now;
        match self.call(Call::Start(setup), clock)?.0 {
            Reply::Outcome(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// `act` by `player` at `clock`.
    pub fn act(
        &mut self,
        player: &str,
        action: &str,
        clock: u64,
    ) -> Result<Result<Outcome, Refusal>, CallError> {
        let call = Call::Act {
            player: player.to_owned(),
            action: action.to_owned(),
            client_action_id: None,
        };
        match self.call(call, clock)?.0 {
            Reply::Outcome(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// `tick` at `clock`.
    pub fn tick(&mut self, clock: u64) -> Result<Outcome, CallError> {
        match self.call(Call::Tick, clock)?.0 {
            Reply::Ticked(o) => Ok(o),
            other => Err(unexpected(other)),
        }
    }

    /// `view` for `viewer`.
    pub fn view(&mut self, viewer: Viewer) -> Result<Result<String, String>, CallError> {
        let clock = self.now;
        match self.call(Call::View(viewer), clock)?.0 {
            Reply::View(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// `status`.
    pub fn status(&mut self) -> Result<wire::Status, CallError> {
        let clock = self.now;
        match self.call(Call::Status, clock)?.0 {
            Reply::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// `save`: the state in the portable form of the module's state schema.
    pub fn save(&mut self) -> Result<Result<Vec<u8>, String>, CallError> {
        let clock = self.now;
        match self.call(Call::Save, clock)?.0 {
            Reply::Saved(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// `load` of `bytes` saved with state schema `from_schema` (migrated by
    /// the rules if older) into this fresh session; the next tick time.
    pub fn load(
        &mut self,
        from_schema: u32,
        bytes: Vec<u8>,
    ) -> Result<Result<Option<u64>, String>, CallError> {
        let clock = self.now;
        match self.call(Call::Load { from_schema, bytes }, clock)?.0 {
            Reply::Loaded(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

fn unexpected(reply: Reply) -> CallError {
    CallError::Host(format!(
        "the rules answered with an unexpected reply: {reply:?}"
    ))
}

impl RuleModule {
    /// The image of a fresh instance, at position 0.
    pub fn fresh_image(&self) -> Image {
        Image::fresh(
            self.hash(),
            self.fresh.globals.clone(),
            self.fresh.sizes.iter().copied(),
        )
    }
}
