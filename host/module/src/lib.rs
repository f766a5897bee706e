//! Baton rule modules as files: build a game crate into a component, read a
//! component's structure, and check it against Baton's contract.
//!
//! A rule module is a Wasm component that exports `baton:rules/game`, imports
//! nothing and holds exactly one core module, whose memories and mutable
//! globals are then its whole state. [`Build`] makes one from a crate that
//! uses `baton-sdk`; [`check_component`] is what every loader runs first.
//!
//! # Layout
//!
//! - `compile`: [`Build`] runs cargo for `wasm32-unknown-unknown` with a
//!   small stack and `panic = "abort"`, then [`componentize`] encodes it.
//! - `check`: [`inspect`] reads a component into a [`Report`]; [`check`]
//!   says what, if anything, keeps Baton from running it.
#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod check;
mod compile;

pub use check::{
    CheckError, Forbidden, GAME_INTERFACE, Memory, Report, check, check_component, inspect,
};
pub use compile::{Build, BuildError, Built, STACK_SIZE, TARGET, componentize};
