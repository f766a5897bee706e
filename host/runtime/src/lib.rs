//! Baton's session runtime: rule modules as sandboxed Wasm instances whose
//! state can be captured, moved and restored exactly.
//!
//! A [`Runtime`] holds the node's one wasmtime engine (pooling allocator,
//! fuel, NaN canonicalization, no threads, an epoch backstop). It
//! [loads](Runtime::load) rule components into [`RuleModule`]s: checked
//! against the contract, instrumented with the snapshot accessor, compiled
//! (with an optional private cache), pre-instantiated. A [`Session`] is one
//! live instance: every call is journaled ([`JournalEntry`]), bounded by the
//! session's [`Limits`], and rolled back if it fails. [`Session::snapshot`]
//! and [`Session::delta`] capture its memories and mutable globals without
//! disturbing it; [`Session::restore`] puts them into a fresh instance.
//!
//! No networking here: the node wires sessions to players and storage.
//!
//! # Layout
//!
//! - `engine`: [`Runtime`] and [`RuntimeConfig`].
//! - `module`: [`RuleModule`] loading, [`ModuleHash`], the compiled-module cache.
//! - `instrument`: the component rewrite adding the snapshot accessor.
//! - `session`: [`Session`], [`Limits`], [`CallError`].
//! - [`snapshot`] (the `baton-snapshot` crate): [`Image`], [`Delta`] and their binary format.
//! - `journal`: [`JournalEntry`], [`Call`], [`Reply`].
//! - `bindings`: wasmtime's bindings of `wit/rules.wit`.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

#[doc(hidden)]
pub mod bindings;
mod engine;
pub mod instrument;
mod journal;
mod module;
mod session;

/// The snapshot format, re-exported.
pub use baton_snapshot as snapshot;
pub use baton_snapshot::{Delta, Image, SnapshotError};
pub use engine::{Runtime, RuntimeConfig, RuntimeError};
pub use journal::{Call, JournalEntry, Reply, Switch};
pub use module::{LoadError, ModuleHash, RuleModule};
pub use session::{CallError, Limits, RestoreError, Session, SwitchError};
