//! Minotaur: last one standing on a hex board.
//!
//! Players stand on an axial hex grid (`q`, `r`) of a given radius. Each
//! round, every player still standing registers one secret action: a move one
//! step in one of the six directions, or an attack on an adjacent player. The
//! round ends when everyone has registered, or when its timer runs out
//! (players who did not register stand still). Then all actions are revealed
//! and resolved at once:
//!
//! 1. every attack takes one hit point from its target;
//! 2. players left with no hit points are eliminated (their moves are void);
//! 3. moves happen, except where two players would enter the same cell, swap
//!    cells, or walk into someone who stays: those players stay put.
//!
//! The last one standing wins. If the last players fall together it is a
//! draw; after `max_rounds` the players with the most hit points share it.
//!
//! Actions: `{"type": "move", "dq": 1, "dr": 0}`,
//! `{"type": "attack", "target": "bob"}`.
//!
//! # Version 2 (feature `v2`)
//!
//! Version 2.0.0 renames `attack` to `strike` and counts the strikes each
//! fighter landed (`strikes`, in views too). Its state schema is 2; a
//! session saved by version 1 (schema 1) is migrated by
//! [`Game::migrate`]: registered attacks become strikes, and `strikes`
//! starts at 0. Feature `v2-broken` builds 2.0.0-broken, whose migration
//! fails on purpose, to show that a failed upgrade leaves sessions as they
//! were; `v2-trap` builds 2.0.0-trap, which migrates but traps on every
//! action, to show that a session goes back to the version it came from.

use std::collections::{BTreeMap, BTreeSet};

use baton_sdk::{
    Ctx, Game, MigrateError, PlayerId, Rejection, Saved, Setup, Status, Viewer, ensure, export_game,
};
use serde::{Deserialize, Serialize};

/// A cell of the board in axial coordinates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hex {
    /// Column.
    pub q: i32,
    /// Row.
    pub r: i32,
}

/// The six unit steps, starting east and turning counter-clockwise.
pub const DIRECTIONS: [Hex; 6] = [
    Hex { q: 1, r: 0 },
    Hex { q: 1, r: -1 },
    Hex { q: 0, r: -1 },
    Hex { q: -1, r: 0 },
    Hex { q: -1, r: 1 },
    Hex { q: 0, r: 1 },
];

impl Hex {
    /// The cell at `q`, `r`.
    pub const fn new(q: i32, r: i32) -> Self {
        Hex { q, r }
    }

    /// Steps between two cells.
    pub fn distance(self, other: Hex) -> u32 {
        let dq = self.q - other.q;
        let dr = self.r - other.r;
        (dq.unsigned_abs() + dr.unsigned_abs() + (dq + dr).unsigned_abs()) / 2
    }

    fn plus(self, step: Hex) -> Hex {
        Hex::new(self.q + step.q, self.r + step.r)
    }

    fn on_board(self, radius: u32) -> bool {
        self.distance(Hex::new(0, 0)) <= radius
    }
}

/// Game options, all optional: `{"radius": 4, "hit_points": 3, ...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Cells from the centre to the edge (1..=12).
    pub radius: u32,
    /// Hit points each player starts with (1..=99).
    pub hit_points: u32,
    /// How long a round waits for actions, in milliseconds (at least 100).
    pub round_ms: u64,
    /// Rounds before the game ends on hit points (at least 1).
    pub max_rounds: u32,
    /// Fixed start cells, one per player in seating order; random if absent.
    pub positions: Option<Vec<Hex>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            radius: 4,
            hit_points: 3,
            round_ms: 10_000,
            max_rounds: 100,
            positions: None,
        }
    }
}

/// What a player registers for the round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Action {
    /// One step: `(dq, dr)` must be one of [`DIRECTIONS`].
    Move {
        /// Step in `q`.
        dq: i32,
        /// Step in `r`.
        dr: i32,
    },
    /// Take a hit point from an adjacent player (`strike` from version 2).
    #[cfg_attr(feature = "v2", serde(rename = "strike"))]
    Attack {
        /// Who.
        target: PlayerId,
    },
}

/// One player on the board.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fighter {
    /// The player's id.
    pub id: PlayerId,
    /// The player's display name.
    pub name: String,
    /// Where they stand.
    pub pos: Hex,
    /// Hit points left; 0 means eliminated.
    pub hp: u32,
    /// What they registered this round, hidden from others until resolved.
    pub registered: Option<Action>,
    /// Hits landed on others (version 2; 0 for a session migrated from 1).
    #[cfg(feature = "v2")]
    #[serde(default)]
    pub strikes: u32,
}

impl Fighter {
    fn standing(&self) -> bool {
        self.hp > 0
    }
}

/// How a game ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The winner, if there is exactly one.
    pub winner: Option<PlayerId>,
    /// Who shares a draw (empty when someone won).
    pub draw: Vec<PlayerId>,
    /// Rounds played.
    pub rounds: u32,
}

/// A session of minotaur.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Minotaur {
    radius: u32,
    round_ms: u64,
    max_rounds: u32,
    /// The round being played, from 1.
    round: u32,
    /// When the current round's timer runs out.
    deadline: u64,
    fighters: Vec<Fighter>,
    outcome: Option<Outcome>,
}

/// What the rules tell players.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The game began (to everyone).
    Started {
        /// Round timer in milliseconds.
        round_ms: u64,
        /// When round 1 ends at the latest.
        deadline: u64,
    },
    /// Your action is registered (to you only).
    Registered {
        /// The round.
        round: u32,
        /// What you registered.
        action: Action,
    },
    /// Someone has registered; what, stays secret (to everyone).
    Ready {
        /// The round.
        round: u32,
        /// Who.
        player: PlayerId,
    },
    /// A round was resolved: every action revealed, with its effect.
    Round {
        /// The round that ended.
        round: u32,
        /// What each player did.
        results: Vec<Resolved>,
        /// Who fell this round.
        eliminated: Vec<PlayerId>,
        /// When the next round ends at the latest, unless the game is over.
        deadline: Option<u64>,
    },
    /// The game is over.
    GameOver(Outcome),
}

/// One player's part in a resolved round.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Resolved {
    /// Who.
    pub player: PlayerId,
    /// What they registered, if anything.
    pub action: Option<Action>,
    /// What came of it.
    pub effect: Effect,
}

/// What came of one registered action.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "effect", rename_all = "snake_case")]
pub enum Effect {
    /// Nothing registered, or nothing to do.
    Idle,
    /// Moved to `to`.
    Moved {
        /// The new cell.
        to: Hex,
    },
    /// Stayed: the way was blocked, or they fell.
    Blocked,
    /// Took a hit point from the target, who has `hp_left`.
    Hit {
        /// The target's hit points after the round's attacks.
        hp_left: u32,
    },
}

/// What one viewer sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct View {
    /// Board radius.
    pub radius: u32,
    /// The round being played.
    pub round: u32,
    /// When it ends at the latest.
    pub deadline: u64,
    /// Who is viewing (absent for spectators).
    pub you: Option<PlayerId>,
    /// Everyone on the board, in seating order.
    pub players: Vec<PlayerView>,
    /// The result, once the game is over.
    pub outcome: Option<Outcome>,
}

/// One player as a viewer sees them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlayerView {
    /// Id.
    pub id: PlayerId,
    /// Display name.
    pub name: String,
    /// Cell.
    pub pos: Hex,
    /// Hit points left.
    pub hp: u32,
    /// Whether they have registered this round.
    pub ready: bool,
    /// Their registered action: only in their own view.
    pub registered: Option<Action>,
    /// Hits they landed (version 2).
    #[cfg(feature = "v2")]
    pub strikes: u32,
}

const MAX_RADIUS: u32 = 12;

impl Game for Minotaur {
    const NAME: &'static str = "minotaur";
    const VERSION: &'static str = if cfg!(feature = "v2-broken") {
        "2.0.0-broken"
    } else if cfg!(feature = "v2-trap") {
        "2.0.0-trap"
    } else if cfg!(feature = "v2") {
        "2.0.0"
    } else {
        env!("CARGO_PKG_VERSION")
    };
    const STATE_SCHEMA: u32 = if cfg!(feature = "v2") { 2 } else { 1 };

    type Options = Options;
    type Action = Action;
    type Event = Event;
    type View = View;
    type Result = Outcome;

    fn start(setup: Setup<Options>, ctx: &mut Ctx<'_, Event>) -> Result<Self, Rejection> {
        let o = setup.options;
        ensure(
            (1..=MAX_RADIUS).contains(&o.radius),
            format!("`radius` must be 1 to {MAX_RADIUS}"),
        )?;
        ensure(
            (1..=99).contains(&o.hit_points),
            "`hit_points` must be 1 to 99",
        )?;
        ensure(o.round_ms >= 100, "`round_ms` must be at least 100")?;
        ensure(o.max_rounds >= 1, "`max_rounds` must be at least 1")?;
        let cells = board(o.radius);
        let players = setup.players;
        ensure(players.len() >= 2, "minotaur needs at least 2 players")?;
        ensure(
            players.len() <= cells.len() / 2,
            format!(
                "a board of radius {} holds at most {} players",
                o.radius,
                cells.len() / 2
            ),
        )?;
        let positions = match o.positions {
            Some(given) => {
                ensure(
                    given.len() == players.len(),
                    "`positions` needs one cell per player",
                )?;
                ensure(
                    given.iter().all(|h| h.on_board(o.radius)),
                    "a start position is off the board",
                )?;
                let distinct: BTreeSet<_> = given.iter().collect();
                ensure(
                    distinct.len() == given.len(),
                    "two players cannot start on one cell",
                )?;
                given
            }
            None => spread(cells, players.len(), ctx),
        };
        let fighters = players
            .into_iter()
            .zip(positions)
            .map(|(p, pos)| Fighter {
                id: p.id,
                name: p.name,
                pos,
                hp: o.hit_points,
                registered: None,
                #[cfg(feature = "v2")]
                strikes: 0,
            })
            .collect();
        let deadline = setup.now + o.round_ms;
        ctx.broadcast(Event::Started {
            round_ms: o.round_ms,
            deadline,
        });
        Ok(Minotaur {
            radius: o.radius,
            round_ms: o.round_ms,
            max_rounds: o.max_rounds,
            round: 1,
            deadline,
            fighters,
            outcome: None,
        })
    }

    fn act(
        &mut self,
        player: &PlayerId,
        action: Action,
        ctx: &mut Ctx<'_, Event>,
    ) -> Result<(), Rejection> {
        if cfg!(feature = "v2-trap") {
            panic!("minotaur 2.0.0-trap fails every action: broken on purpose");
        }
        let me = self.fighter(player)?;
        ensure(me.standing(), "you have been eliminated")?;
        ensure(
            me.registered.is_none(),
            "you have already registered an action this round",
        )?;
        match &action {
            Action::Move { dq, dr } => {
                let step = Hex::new(*dq, *dr);
                ensure(
                    DIRECTIONS.contains(&step),
                    "a move is one step: (dq, dr) must be one of (1,0) (1,-1) (0,-1) (-1,0) (-1,1) (0,1)",
                )?;
                ensure(
                    me.pos.plus(step).on_board(self.radius),
                    "that move would leave the board",
                )?;
            }
            Action::Attack { target } => {
                ensure(target != player, "you cannot attack yourself")?;
                let them = self.fighter(target)?;
                ensure(
                    them.standing(),
                    format!("`{target}` has already been eliminated"),
                )?;
                ensure(
                    me.pos.distance(them.pos) == 1,
                    format!("`{target}` is not next to you"),
                )?;
            }
        }
        let round = self.round;
        if let Some(me) = self.fighters.iter_mut().find(|f| &f.id == player) {
            me.registered = Some(action.clone());
        }
        ctx.tell(player.clone(), Event::Registered { round, action });
        ctx.broadcast(Event::Ready {
            round,
            player: player.clone(),
        });
        if self
            .fighters
            .iter()
            .filter(|f| f.standing())
            .all(|f| f.registered.is_some())
        {
            self.resolve(ctx);
        }
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Ctx<'_, Event>) {
        if ctx.now() >= self.deadline {
            self.resolve(ctx);
        }
    }

    fn next_tick(&self) -> Option<u64> {
        Some(self.deadline)
    }

    fn view(&self, viewer: &Viewer) -> View {
        let you = match viewer {
            Viewer::Player(id) => Some(id.clone()),
            Viewer::Spectator => None,
        };
        let players = self
            .fighters
            .iter()
            .map(|f| PlayerView {
                id: f.id.clone(),
                name: f.name.clone(),
                pos: f.pos,
                hp: f.hp,
                ready: f.registered.is_some(),
                registered: f.registered.clone().filter(|_| you.as_ref() == Some(&f.id)),
                #[cfg(feature = "v2")]
                strikes: f.strikes,
            })
            .collect();
        View {
            radius: self.radius,
            round: self.round,
            deadline: self.deadline,
            you,
            players,
            outcome: self.outcome.clone(),
        }
    }

    fn status(&self) -> Status<Outcome> {
        match &self.outcome {
            Some(outcome) => Status::Finished(outcome.clone()),
            None => Status::Running,
        }
    }

    fn migrate(from_schema: u32, saved: Saved) -> Result<Self, MigrateError> {
        migrate(from_schema, saved)
    }
}

/// Version 1 knows no older schema.
#[cfg(not(feature = "v2"))]
fn migrate(from_schema: u32, saved: Saved) -> Result<Minotaur, MigrateError> {
    Err(saved.unsupported(from_schema))
}

/// Schema 1 to 2: a registered `attack` is now a `strike`, and `strikes`
/// starts at 0 (its serde default).
#[cfg(all(feature = "v2", not(feature = "v2-broken")))]
fn migrate(from_schema: u32, saved: Saved) -> Result<Minotaur, MigrateError> {
    if from_schema != 1 {
        return Err(saved.unsupported(from_schema));
    }
    let mut state = saved.into_json();
    if let Some(fighters) = state["fighters"].as_array_mut() {
        for fighter in fighters {
            let registered = &mut fighter["registered"];
            if registered["type"] == "attack" {
                registered["type"] = "strike".into();
            }
        }
    }
    serde_json::from_value(state)
        .map_err(|e| MigrateError::new(format!("a schema-1 state did not migrate: {e}")))
}

/// The deliberately broken migration of 2.0.0-broken.
#[cfg(feature = "v2-broken")]
fn migrate(from_schema: u32, _: Saved) -> Result<Minotaur, MigrateError> {
    Err(MigrateError::new(format!(
        "minotaur 2.0.0-broken cannot migrate from schema {from_schema}: broken on purpose"
    )))
}

export_game!(Minotaur);

impl Minotaur {
    /// Everyone on the board, in seating order.
    pub fn fighters(&self) -> &[Fighter] {
        &self.fighters
    }

    /// The round being played.
    pub fn round(&self) -> u32 {
        self.round
    }

    fn fighter(&self, id: &str) -> Result<&Fighter, Rejection> {
        self.fighters
            .iter()
            .find(|f| f.id == id)
            .ok_or_else(|| Rejection::new(format!("there is no player `{id}`")))
    }

    /// Ends the round: reveals and applies every registered action.
    fn resolve(&mut self, ctx: &mut Ctx<'_, Event>) {
        let index: BTreeMap<PlayerId, usize> = self
            .fighters
            .iter()
            .enumerate()
            .map(|(i, f)| (f.id.clone(), i))
            .collect();
        let mut effects = vec![Effect::Idle; self.fighters.len()];

        // 1. Attacks, all against the positions at the start of the round.
        let mut damage = vec![0u32; self.fighters.len()];
        for (i, f) in self.fighters.iter().enumerate() {
            if let Some(Action::Attack { target }) = &f.registered
                && let Some(&t) = index.get(target)
            {
                damage[t] += 1;
                effects[i] = Effect::Hit { hp_left: 0 };
            }
        }
        #[cfg(feature = "v2")]
        for (f, effect) in self.fighters.iter_mut().zip(&effects) {
            if matches!(effect, Effect::Hit { .. }) {
                f.strikes += 1;
            }
        }
        let mut eliminated = Vec::new();
        for (f, d) in self.fighters.iter_mut().zip(&damage) {
            if f.standing() && *d > 0 {
                f.hp = f.hp.saturating_sub(*d);
                if f.hp == 0 {
                    eliminated.push(f.id.clone());
                }
            }
        }
        for (i, f) in self.fighters.iter().enumerate() {
            if let (Some(Action::Attack { target }), Effect::Hit { hp_left }) =
                (&f.registered, &mut effects[i])
                && let Some(&t) = index.get(target)
            {
                *hp_left = self.fighters[t].hp;
            }
        }

        // 2. Moves of those still standing.
        let targets = self.move_targets();
        for (i, target) in targets.iter().enumerate() {
            if matches!(self.fighters[i].registered, Some(Action::Move { .. })) {
                effects[i] = match target {
                    Some(to) => Effect::Moved { to: *to },
                    None => Effect::Blocked,
                };
            }
        }
        for (f, target) in self.fighters.iter_mut().zip(targets) {
            if let Some(to) = target {
                f.pos = to;
            }
        }

        let results = self
            .fighters
            .iter_mut()
            .zip(effects)
            .map(|(f, effect)| Resolved {
                player: f.id.clone(),
                action: f.registered.take(),
                effect,
            })
            .collect();
        let round = self.round;
        self.outcome = self.ending(&eliminated);
        let deadline = if self.outcome.is_none() {
            self.round += 1;
            self.deadline = ctx.now() + self.round_ms;
            Some(self.deadline)
        } else {
            None
        };
        ctx.broadcast(Event::Round {
            round,
            results,
            eliminated,
            deadline,
        });
        if let Some(outcome) = &self.outcome {
            ctx.log(format!("game over after {round} rounds: {outcome:?}"));
            ctx.broadcast(Event::GameOver(outcome.clone()));
        }
    }

    /// Where each fighter ends up: `Some(cell)` for a move that happens,
    /// `None` for everyone else. A move is blocked when its cell is wanted by
    /// another mover, when two movers would swap, or when the cell's occupant
    /// stays; blocking one move can block others, so repeat until stable.
    fn move_targets(&self) -> Vec<Option<Hex>> {
        let mut target: Vec<Option<Hex>> = self
            .fighters
            .iter()
            .map(|f| match f.registered {
                Some(Action::Move { dq, dr }) if f.standing() => Some(f.pos.plus(Hex::new(dq, dr))),
                _ => None,
            })
            .collect();
        // Decide each pass from the previous one, so that contested moves
        // are blocked together; blocks only accumulate, so this ends.
        loop {
            let blocked: Vec<bool> = (0..target.len())
                .map(|i| {
                    let Some(to) = target[i] else { return false };
                    let here = self.fighters[i].pos;
                    let contested = target
                        .iter()
                        .enumerate()
                        .any(|(j, t)| j != i && *t == Some(to));
                    let occupant_stays_or_swaps = self.fighters.iter().enumerate().any(|(j, f)| {
                        j != i
                            && f.standing()
                            && f.pos == to
                            && (target[j].is_none() || target[j] == Some(here))
                    });
                    contested || occupant_stays_or_swaps
                })
                .collect();
            if !blocked.contains(&true) {
                return target;
            }
            for (t, b) in target.iter_mut().zip(blocked) {
                if b {
                    *t = None;
                }
            }
        }
    }

    /// The result if the round just resolved ended the game; `fell` are the
    /// players eliminated in it.
    fn ending(&self, fell: &[PlayerId]) -> Option<Outcome> {
        let standing: Vec<&Fighter> = self.fighters.iter().filter(|f| f.standing()).collect();
        let rounds = self.round;
        match standing.as_slice() {
            [winner] => Some(Outcome {
                winner: Some(winner.id.clone()),
                draw: Vec::new(),
                rounds,
            }),
            [] => Some(Outcome {
                winner: None,
                // Everyone left fell in the same round.
                draw: fell.to_vec(),
                rounds,
            }),
            _ if rounds >= self.max_rounds => {
                let best = standing.iter().map(|f| f.hp).max().unwrap_or(0);
                let leaders: Vec<PlayerId> = standing
                    .iter()
                    .filter(|f| f.hp == best)
                    .map(|f| f.id.clone())
                    .collect();
                Some(match leaders.as_slice() {
                    [one] => Outcome {
                        winner: Some(one.clone()),
                        draw: Vec::new(),
                        rounds,
                    },
                    _ => Outcome {
                        winner: None,
                        draw: leaders,
                        rounds,
                    },
                })
            }
            _ => None,
        }
    }
}

/// Every cell of a board of `radius`, in a fixed order.
fn board(radius: u32) -> Vec<Hex> {
    let r = radius as i32;
    let mut cells = Vec::new();
    for q in -r..=r {
        for s in -r..=r {
            let cell = Hex::new(q, s);
            if cell.on_board(radius) {
                cells.push(cell);
            }
        }
    }
    cells
}

/// `n` random start cells, not next to each other where the board allows.
fn spread(mut cells: Vec<Hex>, n: usize, ctx: &mut Ctx<'_, Event>) -> Vec<Hex> {
    ctx.rng().shuffle(&mut cells);
    let mut chosen: Vec<Hex> = Vec::with_capacity(n);
    for &cell in &cells {
        if chosen.len() < n && chosen.iter().all(|c| c.distance(cell) >= 2) {
            chosen.push(cell);
        }
    }
    for &cell in &cells {
        if chosen.len() < n && !chosen.contains(&cell) {
            chosen.push(cell);
        }
    }
    chosen
}
