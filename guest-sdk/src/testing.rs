//! Test rules natively with plain `cargo test`: no Wasm, no host.
//!
//! A [`Harness`] runs one session through the same [`Instance`] a component
//! serves, with a clock you move by hand, so what passes here behaves the
//! same in Baton.
//!
//! ```
//! # use baton_sdk::testing::{Harness, json};
//! # use baton_sdk::{Ctx, Game, PlayerId, Rejection, Setup, Status, Viewer};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Counter { n: u32 }
//! # impl Game for Counter {
//! #     const NAME: &'static str = "counter"; const VERSION: &'static str = "0.1.0";
//! #     type Options = (); type Action = u32; type Event = u32; type View = u32; type Result = u32;
//! #     fn start(_: Setup<()>, _: &mut Ctx<'_, u32>) -> Result<Self, Rejection> { Ok(Counter { n: 0 }) }
//! #     fn act(&mut self, _: &PlayerId, by: u32, ctx: &mut Ctx<'_, u32>) -> Result<(), Rejection> {
//! #         self.n += by; ctx.broadcast(self.n); Ok(())
//! #     }
//! #     fn view(&self, _: &Viewer) -> u32 { self.n }
//! #     fn status(&self) -> Status<u32> { Status::Running }
//! # }
//! let mut game = Harness::<Counter>::with_players(["ann", "bob"]).seed(7).start().unwrap();
//! let outcome = game.act("ann", json!(2)).unwrap();
//! assert_eq!(outcome.public(), [json!(2)]);
//! assert_eq!(game.state().n, 2);
//! assert!(game.act("zed", json!(1)).is_err(), "strangers are refused");
//! ```

use serde::Serialize;

pub use serde_json::{Value, json};

use crate::wire::{Outcome, Player, Refusal, SetupArgs, Status, Viewer};
use crate::{Game, Instance};

/// One session of `G`, driven by a test.
#[derive(Debug)]
pub struct Harness<G> {
    instance: Instance<G>,
    now: u64,
    next_tick: Option<u64>,
}

/// How to start a [`Harness`]: players, options, seed and clock.
#[derive(Debug)]
#[must_use = "call .start() to start the session"]
pub struct Builder<G> {
    setup: SetupArgs,
    game: std::marker::PhantomData<G>,
}

impl<G: Game> Builder<G> {
    /// Sets the session's seed (default 0).
    pub fn seed(mut self, seed: u64) -> Self {
        self.setup.seed = seed;
        self
    }

    /// Sets the options, as any serializable value (default: none).
    pub fn options(mut self, options: impl Serialize) -> Self {
        self.setup.options = encode(&options);
        self
    }

    /// Sets the clock at the start, in milliseconds (default 0).
    pub fn at(mut self, now: u64) -> Self {
        self.setup.now = now;
        self
    }

    /// Names the session (default `test`).
    pub fn session_id(mut self, id: impl Into<String>) -> Self {
        self.setup.session_id = id.into();
        self
    }

    /// Starts the session, or returns the rules' refusal.
    pub fn start(self) -> Result<Harness<G>, Refusal> {
        Harness::start_with(self.setup).map(|(h, _)| h)
    }

    /// Starts the session and returns what `start` emitted too.
    pub fn start_with_outcome(self) -> Result<(Harness<G>, Outcome), Refusal> {
        Harness::start_with(self.setup)
    }
}

impl<G: Game> Harness<G> {
    /// A session for `players` (ids, also used as display names).
    pub fn with_players<I, S>(players: I) -> Builder<G>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Builder {
            setup: SetupArgs {
                session_id: "test".into(),
                players: players.into_iter().map(Player::named).collect(),
                options: String::new(),
                seed: 0,
                now: 0,
            },
            game: std::marker::PhantomData,
        }
    }

    /// Starts a session from the exact arguments a host would pass.
    pub fn start_with(setup: SetupArgs) -> Result<(Self, Outcome), Refusal> {
        let now = setup.now;
        let mut instance = Instance::new();
        let outcome = instance.start(setup)?;
        let harness = Harness {
            instance,
            now,
            next_tick: outcome.next_tick,
        };
        Ok((harness, outcome))
    }

    /// A session restored from [`save`](Harness::save)d bytes of schema
    /// `from_schema`, migrated if older: how to test a migration.
    pub fn load(from_schema: u32, bytes: &[u8], now: u64) -> Result<Self, String> {
        let mut instance = Instance::new();
        let next_tick = instance.load(from_schema, bytes)?;
        Ok(Harness {
            instance,
            now,
            next_tick,
        })
    }

    /// Applies `player`'s action (any serializable value) at the current time.
    pub fn act(&mut self, player: &str, action: impl Serialize) -> Result<Outcome, Refusal> {
        self.act_json(player, &encode(&action))
    }

    /// Applies `player`'s action given as JSON text, as a host would.
    pub fn act_json(&mut self, player: &str, action: &str) -> Result<Outcome, Refusal> {
        let outcome = self.instance.act(player, action, self.now)?;
        self.next_tick = outcome.next_tick;
        Ok(outcome)
    }

    /// Moves the clock forward by `ms` and, as a host would, ticks every time
    /// the rules asked for on the way. Returns the ticks' outcomes.
    pub fn advance(&mut self, ms: u64) -> Vec<Outcome> {
        let until = self.now.saturating_add(ms);
        let mut outcomes = Vec::new();
        while let Some(due) = self.next_tick.filter(|due| *due <= until) {
            self.now = self.now.max(due);
            let outcome = self.tick();
            outcomes.push(outcome);
        }
        self.now = until;
        outcomes
    }

    /// Calls `tick` at the current time, whether or not one is due.
    pub fn tick(&mut self) -> Outcome {
        let outcome = self.instance.tick(self.now);
        self.next_tick = outcome.next_tick;
        outcome
    }

    /// What `player` sees.
    pub fn view_of(&self, player: &str) -> Result<Value, String> {
        self.view(&Viewer::Player(player.into()))
    }

    /// What a spectator sees.
    pub fn spectator_view(&self) -> Value {
        self.view(&Viewer::Spectator).unwrap_or(Value::Null)
    }

    /// What `viewer` sees, as JSON.
    pub fn view(&self, viewer: &Viewer) -> Result<Value, String> {
        let json = self.instance.view(viewer)?;
        serde_json::from_str(&json).map_err(|e| e.to_string())
    }

    /// Running, or finished with the result.
    pub fn status(&self) -> Status {
        self.instance.status()
    }

    /// The result, if the game is over, as JSON.
    pub fn result(&self) -> Option<Value> {
        match self.status() {
            Status::Running => None,
            Status::Finished(json) => serde_json::from_str(&json).ok(),
        }
    }

    /// The game's typed state, to assert on.
    pub fn state(&self) -> &G {
        match self.instance.state() {
            Some(state) => state,
            None => unreachable!("a Harness always holds a started or loaded session"),
        }
    }

    /// The session saved, as `save` would (schema `G::STATE_SCHEMA`).
    pub fn save(&self) -> Vec<u8> {
        match self.instance.save() {
            Ok(bytes) => bytes,
            Err(e) => panic!("saving the session failed: {e}"),
        }
    }

    /// The session's clock.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// When the rules next need a tick.
    pub fn next_tick(&self) -> Option<u64> {
        self.next_tick
    }

    /// The underlying instance, for calls the harness does not wrap.
    pub fn instance(&mut self) -> &mut Instance<G> {
        &mut self.instance
    }
}

fn encode(value: &impl Serialize) -> String {
    match serde_json::to_string(value) {
        Ok(json) => json,
        Err(e) => panic!("the test's value cannot be encoded as JSON: {e}"),
    }
}
