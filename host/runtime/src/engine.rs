//! The one wasmtime engine of a node: deterministic, fuel-metered, pooled.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig};

use crate::module::{LoadError, RuleModule};

/// How the node's engine is set up. Plain data with working defaults.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Live instances the pooling allocator holds slots for. Hibernated
    /// sessions hold none.
    pub max_live_instances: u32,
    /// The most memory one guest memory may ever reach, in bytes; also the
    /// virtual reservation per memory slot. Per-session limits sit below it.
    pub max_memory_bytes: u64,
    /// Where compiled modules are cached (a private directory, created with
    /// mode 0700); no cache if `None`.
    pub cache_dir: Option<PathBuf>,
    /// How often the wall-clock backstop's epoch advances.
    pub epoch_tick: Duration,
    /// Bytes of each memory a pool slot keeps resident (zeroed with memset,
    /// not returned to the OS) when its instance is dropped. Restores into a
    /// reused slot then write to memory that is already mapped in: on a VM a
    /// fresh 4 KiB page costs ~1.5 µs to fault in. Costs resident memory
    /// for idle slots.
    pub keep_resident_bytes: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            max_live_instances: 2000,
            max_memory_bytes: 256 << 20,
            cache_dir: None,
            epoch_tick: Duration::from_millis(10),
            keep_resident_bytes: 2 << 20,
        }
    }
}

/// Why the runtime could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// wasmtime refused the configuration.
    #[error("the Wasm engine could not be configured: {0}")]
    Engine(String),
    /// The cache directory is unusable.
    #[error("the module cache directory {path} is unusable: {reason}")]
    CacheDir {
        /// The directory.
        path: String,
        /// Why.
        reason: String,
    },
}

/// The node's Wasm engine and module loader.
///
/// Cheap to clone; clones share the engine, its pool and its epoch ticker.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    pub(crate) engine: Engine,
    pub(crate) config: RuntimeConfig,
    /// Dropping this stops the epoch ticker.
    _ticker: mpsc::Sender<()>,
}

impl Runtime {
    /// Sets up the engine and starts the epoch ticker.
    pub fn new(config: RuntimeConfig) -> Result<Self, RuntimeError> {
        Self::with_wasmtime_config(config, |_| {})
    }

    /// Like [`Runtime::new`], letting a test adjust wasmtime's configuration
    /// (for example to turn on guest debugging as an oracle).
    #[doc(hidden)]
    pub fn with_wasmtime_config(
        config: RuntimeConfig,
        adjust: impl FnOnce(&mut Config),
    ) -> Result<Self, RuntimeError> {
        if let Some(dir) = &config.cache_dir {
            prepare_cache_dir(dir)?;
        }
        let mut wasm = Config::new();
        wasm.wasm_component_model(true)
            // Determinism: a session replays identically on any host.
            .cranelift_nan_canonicalization(true)
            .relaxed_simd_deterministic(true)
            // (Threads are not even compiled in: wasmtime's `threads` feature is off.)
            .shared_memory(false)
            // The snapshot accessor copies between the guest's memory and its own.
            .wasm_multi_memory(true)
            // Fuel bounds each call deterministically; the epoch is only a
            // wall-clock backstop.
            .consume_fuel(true)
            .epoch_interruption(true)
            .cranelift_opt_level(OptLevel::Speed)
            .max_wasm_stack(512 << 10)
            .memory_reservation(config.max_memory_bytes)
            .memory_guard_size(64 << 10)
            .memory_reservation_for_growth(0);
        let mut pool = PoolingAllocationConfig::new();
        let slots = config.max_live_instances;
        pool.total_component_instances(slots)
            // The guest's core instance and the accessor's, plus the
            // argument instance that links them.
            .total_core_instances(slots * 3)
            .max_core_instances_per_component(4)
            .total_memories(slots * 2)
            .max_memories_per_component(2)
            .max_memories_per_module(2)
            .total_tables(slots * 2)
            .max_tables_per_component(2)
            .max_memory_size(config.max_memory_bytes as usize)
            .linear_memory_keep_resident(config.keep_resident_bytes);
        wasm.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        adjust(&mut wasm);
        let engine = Engine::new(&wasm).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;

        // The backstop's clock: a periodic tick is the point here, not a wait.
        let (stop, stopped) = mpsc::channel::<()>();
        let ticking = engine.clone();
        let tick = config.epoch_tick;
        std::thread::Builder::new()
            .name("baton-epoch".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(tick) {
                    ticking.increment_epoch();
                }
            })
            .map_err(|e| RuntimeError::Engine(format!("could not start the epoch ticker: {e}")))?;

        Ok(Runtime {
            inner: Arc::new(Inner {
                engine,
                config,
                _ticker: stop,
            }),
        })
    }

    /// Validates, instruments, compiles (or loads from the cache) and
    /// pre-instantiates a rule component.
    pub fn load(&self, component: &[u8]) -> Result<Arc<RuleModule>, LoadError> {
        RuleModule::load(self, component).map(Arc::new)
    }

    /// The wasmtime engine.
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Epoch ticks in `d`, at least one.
    pub(crate) fn ticks(&self, d: Duration) -> u64 {
        let tick = self.inner.config.epoch_tick.as_micros().max(1);
        (d.as_micros() / tick).max(1) as u64
    }
}

fn prepare_cache_dir(dir: &std::path::Path) -> Result<(), RuntimeError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let fail = |reason: String| RuntimeError::CacheDir {
        path: dir.display().to_string(),
        reason,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| fail(e.to_string()))?;
    let mode = std::fs::metadata(dir)
        .map_err(|e| fail(e.to_string()))?
        .permissions()
        .mode();
    // Compiled code is loaded from here: nobody else may write to it.
    if mode & 0o022 != 0 {
        return Err(fail(format!(
            "it is writable by others (mode {:o}); make it private with chmod 700",
            mode & 0o777
        )));
    }
    Ok(())
}
