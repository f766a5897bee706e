#![doc = include_str!("../README.md")]
//!
//! # Layout
//!
//! - [`Game`] (in `game.rs`): the trait, with [`Ctx`], [`Setup`], [`Status`],
//!   [`Rejection`] and the migration types [`Saved`] and [`MigrateError`].
//! - [`Rng`]: the session's seeded random numbers.
//! - [`Instance`]: one session behind the contract in plain Rust; the
//!   component and the harness both run through it.
//! - [`export_game!`]: turns a `Game` into the component's exports.
//! - [`testing`]: the native [`Harness`](testing::Harness).
//! - [`wire`]: the contract's values in plain Rust.
#![warn(missing_docs)]

mod game;
mod instance;
mod rng;
pub mod testing;
pub mod wire;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
#[allow(unsafe_code, reason = "wit-bindgen's generated ABI glue")]
#[allow(missing_docs, unreachable_pub, reason = "generated bindings, hidden")]
pub mod export;

pub use game::{Ctx, Game, MigrateError, Rejection, Saved, Setup, Status, ensure};
pub use instance::Instance;
pub use rng::Rng;
pub use wire::{Audience, Player, Viewer};

/// A player's id, unique within a session.
pub type PlayerId = String;

#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use crate::export::{self as bindings, self as glue, Slot};
}

/// Exports a [`Game`] as this crate's Baton rule module.
///
/// Call it once, at the top level of the game's crate, with the type that
/// implements `Game`. In a `wasm32` build it generates the component's
/// exports; natively it only checks that the type is a `Game`, so the same
/// crate unit-tests with plain `cargo test`.
#[macro_export]
macro_rules! export_game {
    ($game:ty) => {
        const _: () = {
            const fn assert_game<G: $crate::Game>() {}
            assert_game::<$game>();
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::__private::bindings::exports::baton::rules::game as abi;
            use $crate::__private::glue;

            ::std::thread_local! {
                static INSTANCE: ::std::cell::RefCell<$crate::Instance<$game>> =
                    const { ::std::cell::RefCell::new($crate::Instance::new()) };
            }

            struct Export;

            impl abi::Guest for Export {
                fn info() -> abi::ModuleInfo {
                    glue::info::<$game>()
                }
                fn start(setup: abi::Setup) -> Result<abi::Outcome, abi::Rejection> {
                    glue::start(&INSTANCE, setup)
                }
                fn act(
                    player: String,
                    action: String,
                    now: u64,
                ) -> Result<abi::Outcome, abi::Rejection> {
                    glue::act(&INSTANCE, player, action, now)
                }
                fn tick(now: u64) -> abi::Outcome {
                    glue::tick(&INSTANCE, now)
                }
                fn view(viewer: abi::Viewer) -> Result<String, String> {
                    glue::view(&INSTANCE, viewer)
                }
                fn status() -> abi::GameStatus {
                    glue::status(&INSTANCE)
                }
                fn save() -> Result<Vec<u8>, String> {
                    glue::save(&INSTANCE)
                }
                fn load(from_schema: u32, bytes: Vec<u8>) -> Result<Option<u64>, String> {
                    glue::load(&INSTANCE, from_schema, bytes)
                }
            }

            $crate::__private::bindings::__export_rules!(
                Export with_types_in $crate::__private::bindings
            );
        };
    };
}

/// The root README's example compiles too.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
struct RootReadme;
