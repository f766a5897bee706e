//! The trait a designer implements, and what the SDK hands to it.

use serde::{Serialize, de::DeserializeOwned};

use crate::instance::encode_events;
use crate::wire::{self, Audience, Player, Viewer};
use crate::{PlayerId, Rng};

/// The rules of a game.
///
/// Implement it on the type that holds a session's state, then export it
/// with [`export_game!`](crate::export_game). Every method is a pure function
/// of the state and its arguments: time comes in through [`Ctx::now`],
/// randomness from [`Ctx::rng`]. Don't read clocks, threads or the
/// environment; a session must replay identically anywhere.
///
/// A method that refuses (returns `Err`) should do so before changing
/// anything, so that a refused action leaves the game as it was.
pub trait Game: Serialize + DeserializeOwned + Sized {
    /// The game's name, e.g. `"minotaur"`.
    const NAME: &'static str;
    /// The rules' semver version; usually `env!("CARGO_PKG_VERSION")`.
    const VERSION: &'static str;
    /// The version of this type's serialized form. Bump it when the state's
    /// shape changes in a way older saves can't be read as, and teach
    /// [`migrate`](Game::migrate) the old one.
    const STATE_SCHEMA: u32 = 1;

    /// Options chosen when a session is created; an empty options string
    /// gives `Default::default()`.
    type Options: DeserializeOwned + Default;
    /// What a player can do.
    type Action: DeserializeOwned;
    /// What the rules tell players.
    type Event: Serialize;
    /// What one viewer sees of the game.
    type View: Serialize;
    /// The result of a finished game.
    type Result: Serialize;

    /// Sets up a new session, or refuses (too few players, bad options).
    fn start(
        setup: Setup<Self::Options>,
        ctx: &mut Ctx<'_, Self::Event>,
    ) -> Result<Self, Rejection>;

    /// Applies one action of `player`, or refuses it with a reason the player
    /// can read. The SDK has already refused unknown players, actions that
    /// don't parse, and anything after the game finished.
    fn act(
        &mut self,
        player: &PlayerId,
        action: Self::Action,
        ctx: &mut Ctx<'_, Self::Event>,
    ) -> Result<(), Rejection>;

    /// Handles timers at `ctx.now()`. Called when [`next_tick`](Game::next_tick)
    /// is due, possibly later, possibly (after a restart) more than once.
    fn tick(&mut self, ctx: &mut Ctx<'_, Self::Event>) {
        let _ = ctx;
    }

    /// When the rules next need [`tick`](Game::tick), in session
    /// milliseconds; `None` if no timer runs. The host never polls.
    fn next_tick(&self) -> Option<u64> {
        None
    }

    /// The game as `viewer` may see it. Hide what they must not know.
    fn view(&self, viewer: &Viewer) -> Self::View;

    /// Whether the game is over, and its result.
    fn status(&self) -> Status<Self::Result>;

    /// Builds the state from one saved by an older schema, `from_schema`
    /// (always lower than [`STATE_SCHEMA`](Game::STATE_SCHEMA)). The default
    /// knows no older schema.
    fn migrate(from_schema: u32, saved: Saved) -> Result<Self, MigrateError> {
        Err(saved.unsupported(from_schema))
    }
}

/// What [`Game::start`] gets.
#[derive(Clone, Debug)]
pub struct Setup<O> {
    /// The host's id for the session.
    pub session_id: String,
    /// Who plays, in seating order (ids checked non-empty and unique).
    pub players: Vec<Player>,
    /// The parsed options.
    pub options: O,
    /// The session's clock at the start, in milliseconds.
    pub now: u64,
}

/// Whether a game is running, or finished with a result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status<R> {
    /// Still being played.
    Running,
    /// Over.
    Finished(R),
}

/// A refusal with a reason a player can read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: String,
}

impl Rejection {
    /// A refusal saying `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        Rejection {
            reason: reason.into(),
        }
    }
}

impl From<&str> for Rejection {
    fn from(reason: &str) -> Self {
        Rejection::new(reason)
    }
}

impl From<String> for Rejection {
    fn from(reason: String) -> Self {
        Rejection::new(reason)
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Rejection {}

/// Refuses unless `cond` holds: `ensure(cell.is_free(), "that cell is taken")?`.
pub fn ensure(cond: bool, reason: impl Into<String>) -> Result<(), Rejection> {
    if cond {
        Ok(())
    } else {
        Err(Rejection::new(reason))
    }
}

/// The context of one call: the time, the session's random numbers, and
/// where events and log lines go.
#[derive(Debug)]
pub struct Ctx<'a, E> {
    now: u64,
    rng: &'a mut Rng,
    players: &'a [Player],
    events: Vec<(Audience, E)>,
    log: Vec<String>,
}

impl<'a, E: Serialize> Ctx<'a, E> {
    pub(crate) fn new(now: u64, rng: &'a mut Rng, players: &'a [Player]) -> Self {
        Ctx {
            now,
            rng,
            players,
            events: Vec::new(),
            log: Vec::new(),
        }
    }

    /// The session's clock, in milliseconds. Never goes backwards.
    pub fn now(&self) -> u64 {
        self.now
    }

    /// The session's random numbers, seeded from the session's seed.
    pub fn rng(&mut self) -> &mut Rng {
        self.rng
    }

    /// The session's players, in seating order.
    pub fn players(&self) -> &[Player] {
        self.players
    }

    /// Tells `event` to everyone.
    pub fn broadcast(&mut self, event: E) {
        self.events.push((Audience::Everyone, event));
    }

    /// Tells `event` to `player` only.
    pub fn tell(&mut self, player: impl Into<PlayerId>, event: E) {
        self.events.push((Audience::Player(player.into()), event));
    }

    /// Adds a diagnostic line for the operator (not shown to players).
    pub fn log(&mut self, line: impl Into<String>) {
        self.log.push(line.into());
    }

    /// The encoded events and the log lines; events of a refused call are
    /// dropped by the caller.
    pub(crate) fn finish(self) -> (Vec<wire::Event>, Vec<String>) {
        (encode_events(self.events), self.log)
    }
}

/// A state saved by an older schema, handed to [`Game::migrate`].
#[derive(Debug)]
pub struct Saved {
    from_schema: u32,
    state: serde_json::Value,
}

impl Saved {
    pub(crate) fn new(from_schema: u32, state: serde_json::Value) -> Self {
        Saved { from_schema, state }
    }

    /// Reads the saved state as `T`, typically your old state type.
    pub fn decode<T: DeserializeOwned>(self) -> Result<T, MigrateError> {
        let from = self.from_schema;
        T::deserialize(self.state).map_err(|e| {
            MigrateError::new(format!(
                "the state saved by schema {from} did not decode: {e}"
            ))
        })
    }

    /// The saved state as raw JSON, for migrations that rewrite it by hand.
    pub fn into_json(self) -> serde_json::Value {
        self.state
    }

    /// The error for a schema this module cannot migrate from.
    pub fn unsupported(&self, from_schema: u32) -> MigrateError {
        MigrateError::new(format!(
            "these rules cannot migrate from state schema {from_schema}"
        ))
    }
}

/// Why a migration failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MigrateError(String);

impl MigrateError {
    /// A migration failure explained by `reason`.
    pub fn new(reason: impl Into<String>) -> Self {
        MigrateError(reason.into())
    }
}

impl std::fmt::Display for MigrateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for MigrateError {}
