//! Loading a rule module: check, instrument, compile (or reuse the cache),
//! pre-instantiate, and record the fresh instance's image.

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub use baton_snapshot::ModuleHash;
use wasmtime::component::{Component, ComponentExportIndex, Linker};

use crate::bindings::RulesPre;
use crate::engine::Runtime;
use crate::instrument::{ACCESSOR_INTERFACE, InstrumentError, Layout, instrument, memory_function};
use crate::session::{Limits, Live, SessionData};
use baton_sdk::wire::ModuleInfo;

/// Why a module could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// It is not a Baton rule module.
    #[error(transparent)]
    Invalid(#[from] baton_module::CheckError),
    /// The snapshot accessor could not be added.
    #[error("the module could not be instrumented for snapshots: {0}")]
    Instrument(#[from] InstrumentError),
    /// wasmtime could not compile it.
    #[error("the module could not be compiled: {0}")]
    Compile(String),
    /// Its exports do not match the `baton:rules` world.
    #[error("the module's exports do not match the baton:rules world: {0}")]
    WorldMismatch(String),
    /// Instantiating or asking it for its info failed.
    #[error("the module failed when first started: {0}")]
    Start(String),
    /// Its info is unusable.
    #[error("the module describes itself badly: {0}")]
    BadInfo(String),
}

/// The accessor functions of one memory, as export indices.
#[derive(Clone, Debug)]
pub(crate) struct MemoryAccess {
    pub(crate) size: ComponentExportIndex,
    pub(crate) grow: ComponentExportIndex,
    pub(crate) view: ComponentExportIndex,
    pub(crate) write_pages: ComponentExportIndex,
}

/// What a fresh instance of the module looks like.
#[derive(Clone, Debug)]
pub(crate) struct Fresh {
    /// Memory sizes in Wasm pages.
    pub(crate) sizes: Vec<u32>,
    /// Per memory, the hash of each 4 KiB page.
    pub(crate) hashes: Vec<Vec<u128>>,
    /// Packed mutable globals.
    pub(crate) globals: Vec<u8>,
}

/// A loaded rule module, ready to start sessions of.
pub struct RuleModule {
    pub(crate) runtime: Runtime,
    hash: ModuleHash,
    info: ModuleInfo,
    report: baton_module::Report,
    pub(crate) layout: Layout,
    pub(crate) pre: RulesPre<SessionData>,
    pub(crate) memories: Vec<MemoryAccess>,
    pub(crate) get_globals: ComponentExportIndex,
    pub(crate) set_globals: ComponentExportIndex,
    pub(crate) fresh: Fresh,
    /// The fresh image, encoded: every new session's first checkpoint.
    pub(crate) fresh_checkpoint: std::sync::Arc<Vec<u8>>,
}

impl fmt::Debug for RuleModule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleModule")
            .field("hash", &self.hash)
            .field("info", &self.info)
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl RuleModule {
    pub(crate) fn load(runtime: &Runtime, bytes: &[u8]) -> Result<Self, LoadError> {
        let hash = ModuleHash::of(bytes);
        let report = baton_module::check_component(bytes)?;
        let (instrumented, layout) = instrument(bytes)?;
        let engine = runtime.engine();
        let component = match &runtime.inner.config.cache_dir {
            Some(dir) => cached_compile(engine, dir, &instrumented)?,
            None => Component::new(engine, &instrumented)
                .map_err(|e| LoadError::Compile(format!("{e:#}")))?,
        };
        let mut linker = Linker::<SessionData>::new(engine);
        crate::session::add_view_to_linker(&mut linker)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let instance_pre = linker
            .instantiate_pre(&component)
            .map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;
        let pre =
            RulesPre::new(instance_pre).map_err(|e| LoadError::WorldMismatch(format!("{e:#}")))?;

        let export = |instance: Option<&ComponentExportIndex>, name: &str| {
            component.get_export_index(instance, name).ok_or_else(|| {
                LoadError::Instrument(InstrumentError::Unsupported(format!(
                    "no accessor export `{name}`"
                )))
            })
        };
        let accessor = export(None, ACCESSOR_INTERFACE)?;
        let memories = layout
            .memories
            .iter()
            .map(|m| {
                Ok(MemoryAccess {
                    size: export(Some(&accessor), &memory_function("size", m.index))?,
                    grow: export(Some(&accessor), &memory_function("grow", m.index))?,
                    view: export(Some(&accessor), &memory_function("view", m.index))?,
                    write_pages: export(Some(&accessor), &memory_function("write-pages", m.index))?,
                })
            })
            .collect::<Result<Vec<_>, LoadError>>()?;
        let get_globals = export(Some(&accessor), "get-globals")?;
        let set_globals = export(Some(&accessor), "set-globals")?;

        let mut module = RuleModule {
            runtime: runtime.clone(),
            hash,
            info: ModuleInfo {
                name: String::new(),
                version: String::new(),
                state_schema: 0,
            },
            report,
            layout,
            pre,
            memories,
            get_globals,
            set_globals,
            fresh: Fresh {
                sizes: Vec::new(),
                hashes: Vec::new(),
                globals: Vec::new(),
            },
            fresh_checkpoint: Default::default(),
        };
        // Record the fresh image before any guest code runs, then ask the
        // rules who they are on that same throwaway instance.
        let mut live = Live::instantiate(&module, &Limits::default())
            .map_err(|e| LoadError::Start(e.to_string()))?;
        module.fresh = live
            .fresh_image(&module)
            .map_err(|e| LoadError::Start(e.to_string()))?;
        module.fresh_checkpoint = std::sync::Arc::new(module.fresh_image().encode());
        let info = live
            .rules
            .baton_rules_game()
            .call_info(&mut live.store)
            .map_err(|e| LoadError::Start(format!("{e:#}")))?;
        module.info = ModuleInfo {
            name: info.name,
            version: info.version,
            state_schema: info.state_schema,
        };
        check_info(&module.info)?;
        Ok(module)
    }

    /// The SHA-256 of the component as published.
    pub fn hash(&self) -> ModuleHash {
        self.hash
    }

    /// Name, version and state schema, as the rules report them.
    pub fn info(&self) -> &ModuleInfo {
        &self.info
    }

    /// `name@version`.
    pub fn name_version(&self) -> String {
        format!("{}@{}", self.info.name, self.info.version)
    }

    /// The component's structure, as checked at load.
    pub fn report(&self) -> &baton_module::Report {
        &self.report
    }

    /// The guest state the snapshot accessor exposes.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Bytes of memory a fresh instance starts with.
    pub fn fresh_memory_bytes(&self) -> usize {
        self.fresh.sizes.iter().map(|s| *s as usize * 65536).sum()
    }
}

fn check_info(info: &ModuleInfo) -> Result<(), LoadError> {
    let name_ok = !info.name.is_empty()
        && info.name.len() <= 64
        && info
            .name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !name_ok {
        return Err(LoadError::BadInfo(format!(
            "the name {:?} must be 1-64 characters of a-z, 0-9 and -",
            info.name
        )));
    }
    let parts: Vec<&str> = info
        .version
        .split(['-', '+'])
        .next()
        .unwrap_or("")
        .split('.')
        .collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(LoadError::BadInfo(format!(
            "the version {:?} is not semver (MAJOR.MINOR.PATCH)",
            info.version
        )));
    }
    Ok(())
}

const CACHE_MAGIC: &[u8; 8] = b"BATNCWSM";

/// Compiles `bytes`, or loads the artifact a previous compile left in `dir`.
///
/// The file name binds the artifact to the exact bytes and to this engine's
/// version and configuration; its content carries a SHA-256 of the artifact
/// that is checked before wasmtime is allowed to load it.
fn cached_compile(
    engine: &wasmtime::Engine,
    dir: &Path,
    bytes: &[u8],
) -> Result<Component, LoadError> {
    use std::hash::{Hash, Hasher};
    let mut compat = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut compat);
    let path: PathBuf = dir.join(format!(
        "{}-{:016x}.cwasm",
        ModuleHash::of(bytes).to_hex(),
        compat.finish()
    ));
    if let Ok(file) = std::fs::read(&path)
        && let Some(component) = load_artifact(engine, &file)
    {
        return Ok(component);
    }
    let artifact = engine
        .precompile_component(bytes)
        .map_err(|e| LoadError::Compile(format!("{e:#}")))?;
    let mut file = Vec::with_capacity(artifact.len() + 40);
    file.extend_from_slice(CACHE_MAGIC);
    file.extend_from_slice(&Sha256::digest(&artifact));
    file.extend_from_slice(&artifact);
    // Write then rename, so a crash never leaves a half-written artifact.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(&file).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, &path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    load_artifact(engine, &file)
        .ok_or_else(|| LoadError::Compile("a fresh artifact failed its own check".into()))
}

/// The component in a cache file, if the file is intact.
#[allow(
    unsafe_code,
    reason = "loading precompiled code is unsafe by nature; see SAFETY"
)]
fn load_artifact(engine: &wasmtime::Engine, file: &[u8]) -> Option<Component> {
    let rest = file.strip_prefix(CACHE_MAGIC)?;
    let (digest, artifact) = rest.split_at_checked(32)?;
    if digest != Sha256::digest(artifact).as_slice() {
        return None;
    }
    // SAFETY: `artifact` is byte for byte what this engine's
    // `precompile_component` produced (its SHA-256 matches the one written
    // beside it, in a directory only this user can write), and wasmtime
    // itself refuses artifacts of another version or configuration.
    unsafe { Component::deserialize(engine, artifact) }.ok()
}
