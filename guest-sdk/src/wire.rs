//! The values that cross the rules contract (`wit/rules.wit`), in plain Rust.
//!
//! A designer rarely needs these: they are what [`Instance`](crate::Instance)
//! and the test [`Harness`](crate::testing::Harness) return, with payloads
//! already encoded as JSON, exactly as a host sees them from a component.

use serde::{Deserialize, Serialize};

use crate::PlayerId;

/// What a module says about itself (`module-info`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModuleInfo {
    /// The game's name.
    pub name: String,
    /// The rules' semver version.
    pub version: String,
    /// The format version of [`save`](crate::Instance::save).
    pub state_schema: u32,
}

/// A player as the host names it (`player`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Player {
    /// Unique within the session.
    pub id: PlayerId,
    /// The name shown to other players.
    pub name: String,
}

impl Player {
    /// A player whose display name is its id.
    pub fn named(id: impl Into<String>) -> Self {
        let id = id.into();
        Player {
            name: id.clone(),
            id,
        }
    }
}

/// Everything needed to start a session (`setup`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupArgs {
    /// The host's id for the session.
    pub session_id: String,
    /// Who plays, in seating order.
    pub players: Vec<Player>,
    /// Game options as JSON; empty means the game's defaults.
    pub options: String,
    /// The seed of the session's [`Rng`](crate::Rng).
    pub seed: u64,
    /// The session's clock at the start, in milliseconds.
    pub now: u64,
}

/// Who may see an event (`audience`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Every player and spectator.
    Everyone,
    /// Only this player.
    Player(PlayerId),
}

impl Audience {
    /// Whether `player` may see an event with this audience.
    pub fn includes(&self, player: &str) -> bool {
        match self {
            Audience::Everyone => true,
            Audience::Player(p) => p == player,
        }
    }
}

/// Whose view to render (`viewer`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Viewer {
    /// A seated player, who may know things others do not.
    Player(PlayerId),
    /// Someone watching, who sees only what is public.
    Spectator,
}

/// One event, encoded (`event`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Who may see it.
    pub audience: Audience,
    /// The game's event as JSON.
    pub body: String,
}

impl Event {
    /// The body parsed back into JSON, for assertions in tests.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// The result of a call that changed the session (`outcome`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// Events, in the order the rules emitted them.
    pub events: Vec<Event>,
    /// When the rules next need a tick, if ever.
    pub next_tick: Option<u64>,
    /// Diagnostic lines for the operator.
    pub log: Vec<String>,
}

impl Outcome {
    /// The bodies of the events `player` may see, parsed as JSON.
    pub fn seen_by(&self, player: &str) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter(|e| e.audience.includes(player))
            .map(Event::json)
            .collect()
    }

    /// The bodies of the events everyone sees, parsed as JSON.
    pub fn public(&self) -> Vec<serde_json::Value> {
        self.events
            .iter()
            .filter(|e| e.audience == Audience::Everyone)
            .map(Event::json)
            .collect()
    }
}

/// A refused call (`rejection`): the session did not change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    /// Why, in words a player can read.
    pub reason: String,
    /// Diagnostic lines for the operator.
    pub log: Vec<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Refusal {}

/// Whether the game is running or its result, encoded (`status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Still being played.
    Running,
    /// Over, with the game's result as JSON.
    Finished(String),
}
