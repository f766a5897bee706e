//! Baton's snapshot format: what a session's state looks like at rest and on
//! the wire, independent of any Wasm engine.
//!
//! # Layout
//!
//! - [`ModuleHash`]: a rule module's identity (SHA-256 of its component).
//! - `format`: [`Image`] (full state) and [`Delta`] (changes since the last
//!   capture), their versioned, checksummed, compressed encoding, and
//!   [`Image::apply`] to fold deltas in order.
//!
//! Decoding is fuzzed (`scripts/fuzz`, target `snapshot_decode`), and a
//! bounded mutation test runs with the unit tests.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod format;
mod hash;

pub use format::{
    Delta, FORMAT_VERSION, Image, MemoryDelta, MemoryImage, PAGE, PAGES_PER_WASM_PAGE, Page,
    SnapshotError,
};
pub use hash::ModuleHash;
