//! The games and test fixtures in `games/`, built from source into Baton
//! rule components by this crate's build script (never committed as `.wasm`).
//!
//! - [`MINOTAUR`]: last one standing on a hex board.
//! - [`CONNECT_FOUR`]: the small second game.
//! - [`MISBEHAVE`]: rules that loop, hog memory, panic, overflow the stack or
//!   flood events on request, for sandbox tests.
//! - [`MINOTAUR_V2`]: minotaur 2.0.0 (state schema 2, migrates from 1), and
//!   [`MINOTAUR_V2_BROKEN`], whose migration fails on purpose: for upgrades.
#![warn(missing_docs)]

/// A built rule component.
#[derive(Clone, Copy, Debug)]
pub struct Component {
    /// The package it was built from.
    pub name: &'static str,
    /// Where the component file is.
    pub path: &'static str,
    /// The component's bytes.
    pub bytes: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/components.rs"));
