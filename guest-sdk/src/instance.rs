//! One session's rules behind the contract, in plain Rust.

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::wire::{self, Audience, ModuleInfo, Outcome, Player, Refusal, SetupArgs, Viewer};
use crate::{Ctx, Game, Rng, Saved, Setup, Status};

/// One session of `G`, with exactly the semantics of a component instance
/// exporting the Baton world: the same calls, the same JSON in and out, the
/// same refusals.
///
/// The [`export_game!`](crate::export_game) macro serves a component from one
/// of these, and the [`Harness`](crate::testing::Harness) tests one natively,
/// so a designer's native tests exercise the code that runs in Wasm.
#[derive(Debug)]
pub struct Instance<G> {
    session: Option<Session<G>>,
}

/// A started session: the game plus what the SDK keeps for it.
#[derive(Debug, Serialize, Deserialize)]
struct Session<G> {
    players: Vec<Player>,
    rng: Rng,
    state: G,
}

/// What `save` writes: the session, with the game's state left as JSON so
/// that `load` can hand an older schema to [`Game::migrate`].
#[derive(Serialize, Deserialize)]
struct SavedSession {
    players: Vec<Player>,
    rng: Rng,
    state: serde_json::Value,
}

const NOT_STARTED: &str = "the session has not been started";

impl<G> Default for Instance<G> {
    fn default() -> Self {
        Self::new()
    }
}

impl<G> Instance<G> {
    /// An instance before `start` or `load`, like a freshly instantiated module.
    pub const fn new() -> Self {
        Instance { session: None }
    }
}

impl<G: Game> Instance<G> {
    /// `info`: name, version and state schema of `G`.
    pub fn info() -> ModuleInfo {
        ModuleInfo {
            name: G::NAME.to_owned(),
            version: G::VERSION.to_owned(),
            state_schema: G::STATE_SCHEMA,
        }
    }

    /// `start`: sets up the session. Refused if it already runs, if player
    /// ids are empty or repeated, or if the options or the game refuse.
    pub fn start(&mut self, setup: SetupArgs) -> Result<Outcome, Refusal> {
        if self.session.is_some() {
            return Err(refusal("the session has already been started"));
        }
        check_players(&setup.players)?;
        let options: G::Options = parse_options(&setup.options)?;
        let mut rng = Rng::from_seed(setup.seed);
        let mut ctx = Ctx::new(setup.now, &mut rng, &setup.players);
        let typed = Setup {
            session_id: setup.session_id,
            players: setup.players.clone(),
            options,
            now: setup.now,
        };
        let started = G::start(typed, &mut ctx);
        let (events, log) = ctx.finish();
        match started {
            Ok(state) => {
                let session = Session {
                    players: setup.players,
                    rng,
                    state,
                };
                let next_tick = session.next_tick();
                self.session = Some(session);
                Ok(Outcome {
                    events,
                    next_tick,
                    log,
                })
            }
            Err(rejection) => Err(Refusal {
                reason: rejection.reason,
                log,
            }),
        }
    }

    /// `act`: applies `player`'s `action` (JSON) at `now`.
    pub fn act(&mut self, player: &str, action: &str, now: u64) -> Result<Outcome, Refusal> {
        let session = self.session.as_mut().ok_or_else(|| refusal(NOT_STARTED))?;
        if !session.players.iter().any(|p| p.id == player) {
            return Err(refusal(format!("`{player}` is not a player in this game")));
        }
        if matches!(session.state.status(), Status::Finished(_)) {
            return Err(refusal("the game is over"));
        }
        let action: G::Action = serde_json::from_str(action)
            .map_err(|e| refusal(format!("this action is not understood: {e}")))?;
        let player = player.to_owned();
        let mut ctx = Ctx::new(now, &mut session.rng, &session.players);
        let applied = session.state.act(&player, action, &mut ctx);
        let (events, log) = ctx.finish();
        match applied {
            Ok(()) => Ok(Outcome {
                events,
                next_tick: session.next_tick(),
                log,
            }),
            Err(rejection) => Err(Refusal {
                reason: rejection.reason,
                log,
            }),
        }
    }

    /// `tick`: lets the rules handle timers due at `now`. Does nothing before
    /// `start` or after the game is over.
    pub fn tick(&mut self, now: u64) -> Outcome {
        let Some(session) = self.session.as_mut() else {
            return Outcome::default();
        };
        if matches!(session.state.status(), Status::Finished(_)) {
            return Outcome::default();
        }
        let mut ctx = Ctx::new(now, &mut session.rng, &session.players);
        session.state.tick(&mut ctx);
        let (events, log) = ctx.finish();
        Outcome {
            events,
            next_tick: session.next_tick(),
            log,
        }
    }

    /// `view`: the game as `viewer` may see it, as JSON.
    pub fn view(&self, viewer: &Viewer) -> Result<String, String> {
        let session = self.session.as_ref().ok_or(NOT_STARTED)?;
        if let Viewer::Player(id) = viewer
            && !session.players.iter().any(|p| &p.id == id)
        {
            return Err(format!("`{id}` is not a player in this game"));
        }
        Ok(to_json(&session.state.view(viewer), "view"))
    }

    /// `status`: running, or finished with the result as JSON.
    pub fn status(&self) -> wire::Status {
        match self.session.as_ref().map(|s| s.state.status()) {
            None | Some(Status::Running) => wire::Status::Running,
            Some(Status::Finished(result)) => wire::Status::Finished(to_json(&result, "result")),
        }
    }

    /// `save`: the session in a portable form, in schema `G::STATE_SCHEMA`.
    pub fn save(&self) -> Result<Vec<u8>, String> {
        let session = self.session.as_ref().ok_or(NOT_STARTED)?;
        serde_json::to_vec(session).map_err(|e| format!("the state cannot be saved: {e}"))
    }

    /// `load`: replaces this instance's session with one saved by a module of
    /// schema `from_schema`, through [`Game::migrate`] if that is older.
    /// Returns when the rules next need a tick.
    pub fn load(&mut self, from_schema: u32, bytes: &[u8]) -> Result<Option<u64>, String> {
        let saved: SavedSession = serde_json::from_slice(bytes)
            .map_err(|e| format!("the saved session is not readable: {e}"))?;
        let state = if from_schema == G::STATE_SCHEMA {
            G::deserialize(saved.state)
                .map_err(|e| format!("the saved state does not match schema {from_schema}: {e}"))?
        } else if from_schema > G::STATE_SCHEMA {
            return Err(format!(
                "the session was saved with state schema {from_schema}, newer than this \
                 module's {}: it cannot be loaded by older rules",
                G::STATE_SCHEMA
            ));
        } else {
            G::migrate(from_schema, Saved::new(from_schema, saved.state))
                .map_err(|e| format!("migrating from schema {from_schema} failed: {e}"))?
        };
        let session = Session {
            players: saved.players,
            rng: saved.rng,
            state,
        };
        let next_tick = session.next_tick();
        self.session = Some(session);
        Ok(next_tick)
    }

    /// The game's typed state, if the session has started.
    pub fn state(&self) -> Option<&G> {
        self.session.as_ref().map(|s| &s.state)
    }
}

impl<G: Game> Session<G> {
    fn next_tick(&self) -> Option<u64> {
        match self.state.status() {
            Status::Running => self.state.next_tick(),
            Status::Finished(_) => None,
        }
    }
}

fn refusal(reason: impl Into<String>) -> Refusal {
    Refusal {
        reason: reason.into(),
        log: Vec::new(),
    }
}

fn check_players(players: &[Player]) -> Result<(), Refusal> {
    for (i, p) in players.iter().enumerate() {
        if p.id.is_empty() {
            return Err(refusal("a player id is empty"));
        }
        if players[..i].iter().any(|q| q.id == p.id) {
            return Err(refusal(format!("player `{}` is listed twice", p.id)));
        }
    }
    Ok(())
}

fn parse_options<O: DeserializeOwned + Default>(json: &str) -> Result<O, Refusal> {
    if json.trim().is_empty() {
        return Ok(O::default());
    }
    serde_json::from_str(json).map_err(|e| refusal(format!("the options are not valid: {e}")))
}

/// Encodes a game value. The game's own types failing to serialize (a map
/// with non-string keys, say) is a bug in the rules: it traps, and the host
/// rolls the session back and reports it.
fn to_json<T: Serialize>(value: &T, what: &str) -> String {
    match serde_json::to_string(value) {
        Ok(json) => json,
        Err(e) => panic!("the rules' {what} cannot be encoded as JSON: {e}"),
    }
}

pub(crate) fn encode_events<E: Serialize>(events: Vec<(Audience, E)>) -> Vec<wire::Event> {
    events
        .into_iter()
        .map(|(audience, event)| wire::Event {
            audience,
            body: to_json(&event, "event"),
        })
        .collect()
}
