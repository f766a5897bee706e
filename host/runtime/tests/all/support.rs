//! Shared set-up: one runtime per test binary, modules loaded once.

use std::sync::{Arc, OnceLock};

use baton_runtime::{Limits, RuleModule, Runtime, RuntimeConfig, Session};
use baton_sdk::wire::{Player, SetupArgs};

pub(crate) fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| Runtime::new(RuntimeConfig::default()).expect("the runtime starts"))
}

fn load(component: &baton_games::Component) -> Arc<RuleModule> {
    runtime()
        .load(component.bytes)
        .unwrap_or_else(|e| panic!("{} loads: {e}", component.name))
}

pub(crate) fn minotaur() -> Arc<RuleModule> {
    static M: OnceLock<Arc<RuleModule>> = OnceLock::new();
    M.get_or_init(|| load(&baton_games::MINOTAUR)).clone()
}

pub(crate) fn connect_four() -> Arc<RuleModule> {
    static M: OnceLock<Arc<RuleModule>> = OnceLock::new();
    M.get_or_init(|| load(&baton_games::CONNECT_FOUR)).clone()
}

pub(crate) fn minotaur_v2() -> Arc<RuleModule> {
    static M: OnceLock<Arc<RuleModule>> = OnceLock::new();
    M.get_or_init(|| load(&baton_games::MINOTAUR_V2)).clone()
}

pub(crate) fn minotaur_v2_broken() -> Arc<RuleModule> {
    static M: OnceLock<Arc<RuleModule>> = OnceLock::new();
    M.get_or_init(|| load(&baton_games::MINOTAUR_V2_BROKEN))
        .clone()
}

pub(crate) fn minotaur_v2_trap() -> Arc<RuleModule> {
    static M: OnceLock<Arc<RuleModule>> = OnceLock::new();
    M.get_or_init(|| load(&baton_games::MINOTAUR_V2_TRAP))
        .clone()
}

pub(crate) fn misbehave() -> Arc<RuleModule> {
    static M: OnceLock<Arc<RuleModule>> = OnceLock::new();
    M.get_or_init(|| load(&baton_games::MISBEHAVE)).clone()
}

pub(crate) fn setup(players: &[&str], options: &str, seed: u64) -> SetupArgs {
    SetupArgs {
        session_id: "s1".into(),
        players: players.iter().map(|p| Player::named(*p)).collect(),
        options: options.into(),
        seed,
        now: 0,
    }
}

/// A started session of `module`.
pub(crate) fn started(
    module: Arc<RuleModule>,
    players: &[&str],
    options: &str,
    seed: u64,
) -> Session {
    let mut session = Session::new(module, Limits::default()).expect("a session");
    session
        .start(setup(players, options, seed))
        .expect("no trap")
        .expect("the rules accept the start");
    session
}
