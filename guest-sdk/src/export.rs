//! The Wasm side of [`export_game!`](crate::export_game): the component
//! bindings of `wit/rules.wit`, and glue from them to an [`Instance`].
//!
//! Compiled only for `wasm32`; designers never touch it.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::wire;
use crate::{Game, Instance};

wit_bindgen::generate!({
    world: "rules",
    path: "../wit",
    pub_export_macro: true,
    export_macro_name: "__export_rules",
    default_bindings_module: "::baton_sdk::__private::bindings",
});

use exports::baton::rules::game as abi;

/// The instance a component serves: one per Wasm instance.
pub type Slot<G> = LocalKey<RefCell<Instance<G>>>;

pub fn info<G: Game>() -> abi::ModuleInfo {
    let info = Instance::<G>::info();
    abi::ModuleInfo {
        name: info.name,
        version: info.version,
        state_schema: info.state_schema,
    }
}

pub fn start<G: Game>(
    slot: &'static Slot<G>,
    setup: abi::Setup,
) -> Result<abi::Outcome, abi::Rejection> {
    let setup = wire::SetupArgs {
        session_id: setup.session_id,
        players: setup
            .players
            .into_iter()
            .map(|p| wire::Player {
                id: p.id,
                name: p.name,
            })
            .collect(),
        options: setup.options,
        seed: setup.seed,
        now: setup.now,
    };
    slot.with_borrow_mut(|i| i.start(setup))
        .map(outcome)
        .map_err(rejection)
}

pub fn act<G: Game>(
    slot: &'static Slot<G>,
    player: String,
    action: String,
    now: u64,
) -> Result<abi::Outcome, abi::Rejection> {
    slot.with_borrow_mut(|i| i.act(&player, &action, now))
        .map(outcome)
        .map_err(rejection)
}

pub fn tick<G: Game>(slot: &'static Slot<G>, now: u64) -> abi::Outcome {
    outcome(slot.with_borrow_mut(|i| i.tick(now)))
}

pub fn view<G: Game>(slot: &'static Slot<G>, viewer: abi::Viewer) -> Result<String, String> {
    let viewer = match viewer {
        abi::Viewer::Player(id) => wire::Viewer::Player(id),
        abi::Viewer::Spectator => wire::Viewer::Spectator,
    };
    slot.with_borrow(|i| i.view(&viewer))
}

pub fn status<G: Game>(slot: &'static Slot<G>) -> abi::GameStatus {
    match slot.with_borrow(|i| i.status()) {
        wire::Status::Running => abi::GameStatus::Running,
        wire::Status::Finished(result) => abi::GameStatus::Finished(result),
    }
}

pub fn save<G: Game>(slot: &'static Slot<G>) -> Result<Vec<u8>, String> {
    slot.with_borrow(|i| i.save())
}

pub fn load<G: Game>(
    slot: &'static Slot<G>,
    from_schema: u32,
    bytes: Vec<u8>,
) -> Result<Option<u64>, String> {
    slot.with_borrow_mut(|i| i.load(from_schema, &bytes))
}

fn outcome(o: wire::Outcome) -> abi::Outcome {
    abi::Outcome {
        events: o
            .events
            .into_iter()
            .map(|e| abi::Event {
                audience: match e.audience {
                    wire::Audience::Everyone => abi::Audience::Everyone,
                    wire::Audience::Player(p) => abi::Audience::Player(p),
                },
                body: e.body,
            })
            .collect(),
        next_tick: o.next_tick,
        log: o.log,
    }
}

fn rejection(r: wire::Refusal) -> abi::Rejection {
    abi::Rejection {
        reason: r.reason,
        log: r.log,
    }
}
