//! Connect four: two players drop discs into a 7×6 grid; four in a row wins.
//!
//! Turn-based, with an optional move clock: a player who lets it run out
//! loses. Written only from the SDK's docs, with no ABI code, as the proof
//! that Baton's contract is generic.
//!
//! Actions: `{"column": 3}` (0 to 6).

use baton_sdk::{Ctx, Game, PlayerId, Rejection, Setup, Status, Viewer, ensure, export_game};
use serde::{Deserialize, Serialize};

const COLUMNS: usize = 7;
const ROWS: usize = 6;

/// A session: the grid, whose turn it is, and the clock.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectFour {
    players: [PlayerId; 2],
    /// `grid[column]` holds the discs of that column from the bottom up,
    /// as seat numbers (0 or 1).
    grid: Vec<Vec<u8>>,
    turn: u8,
    move_ms: Option<u64>,
    deadline: Option<u64>,
    result: Option<Finish>,
}

/// Options: `{"move_ms": 30000}` gives each move a time limit.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// Milliseconds a player has for each move; no limit if absent.
    pub move_ms: Option<u64>,
}

/// Drop a disc into a column.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    /// 0 (left) to 6 (right).
    pub column: usize,
}

/// What players are told.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A disc landed.
    Dropped {
        /// Who dropped it.
        player: PlayerId,
        /// Column.
        column: usize,
        /// Row it landed in, from the bottom.
        row: usize,
    },
    /// It is this player's turn, until `deadline` if there is a clock.
    Turn {
        /// Whose turn.
        player: PlayerId,
        /// When the move clock runs out.
        deadline: Option<u64>,
    },
    /// The game is over.
    Over(Finish),
}

/// How the game ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finish {
    /// The winner; none for a full board.
    pub winner: Option<PlayerId>,
    /// `four_in_a_row`, `timeout` or `full_board`.
    pub reason: String,
}

/// The board; nothing is hidden in this game.
#[derive(Debug, Serialize)]
pub struct View {
    /// Rows from the top, as strings of `.`, `X` (first player) and `O`.
    pub rows: Vec<String>,
    /// The two players, `X` first.
    pub players: [PlayerId; 2],
    /// Whose turn it is, while the game runs.
    pub turn: Option<PlayerId>,
    /// When the current move clock runs out.
    pub deadline: Option<u64>,
    /// The result, once over.
    pub result: Option<Finish>,
}

impl Game for ConnectFour {
    const NAME: &'static str = "connect-four";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    type Options = Options;
    type Action = Action;
    type Event = Event;
    type View = View;
    type Result = Finish;

    fn start(setup: Setup<Options>, ctx: &mut Ctx<'_, Event>) -> Result<Self, Rejection> {
        let [first, second] = setup.players.as_slice() else {
            return Err("connect four needs exactly 2 players".into());
        };
        ensure(
            setup.options.move_ms.is_none_or(|ms| ms >= 1000),
            "`move_ms` must be at least 1000",
        )?;
        // Who starts is drawn from the session's seed.
        let mut players = [first.id.clone(), second.id.clone()];
        if ctx.rng().chance(1, 2) {
            players.swap(0, 1);
        }
        let mut game = ConnectFour {
            players,
            grid: vec![Vec::new(); COLUMNS],
            turn: 0,
            move_ms: setup.options.move_ms,
            deadline: None,
            result: None,
        };
        game.next_turn(ctx);
        Ok(game)
    }

    fn act(
        &mut self,
        player: &PlayerId,
        action: Action,
        ctx: &mut Ctx<'_, Event>,
    ) -> Result<(), Rejection> {
        ensure(
            *player == self.players[usize::from(self.turn)],
            "it is not your turn",
        )?;
        let column = action.column;
        ensure(column < COLUMNS, "the column must be 0 to 6")?;
        ensure(self.grid[column].len() < ROWS, "that column is full")?;
        self.grid[column].push(self.turn);
        let row = self.grid[column].len() - 1;
        ctx.broadcast(Event::Dropped {
            player: player.clone(),
            column,
            row,
        });
        if self.four_from(column, row) {
            self.finish(Some(player.clone()), "four_in_a_row", ctx);
        } else if self.grid.iter().all(|c| c.len() == ROWS) {
            self.finish(None, "full_board", ctx);
        } else {
            self.turn = 1 - self.turn;
            self.next_turn(ctx);
        }
        Ok(())
    }

    fn tick(&mut self, ctx: &mut Ctx<'_, Event>) {
        if self.deadline.is_some_and(|d| ctx.now() >= d) {
            let winner = self.players[usize::from(1 - self.turn)].clone();
            self.finish(Some(winner), "timeout", ctx);
        }
    }

    fn next_tick(&self) -> Option<u64> {
        self.deadline
    }

    fn view(&self, _viewer: &Viewer) -> View {
        let rows = (0..ROWS)
            .rev()
            .map(|row| {
                (0..COLUMNS)
                    .map(|c| match self.grid[c].get(row) {
                        Some(0) => 'X',
                        Some(_) => 'O',
                        None => '.',
                    })
                    .collect()
            })
            .collect();
        View {
            rows,
            players: self.players.clone(),
            turn: self
                .result
                .is_none()
                .then(|| self.players[usize::from(self.turn)].clone()),
            deadline: self.deadline,
            result: self.result.clone(),
        }
    }

    fn status(&self) -> Status<Finish> {
        match &self.result {
            Some(finish) => Status::Finished(finish.clone()),
            None => Status::Running,
        }
    }
}

export_game!(ConnectFour);

impl ConnectFour {
    fn next_turn(&mut self, ctx: &mut Ctx<'_, Event>) {
        self.deadline = self.move_ms.map(|ms| ctx.now() + ms);
        let player = self.players[usize::from(self.turn)].clone();
        ctx.broadcast(Event::Turn {
            player,
            deadline: self.deadline,
        });
    }

    fn finish(&mut self, winner: Option<PlayerId>, reason: &str, ctx: &mut Ctx<'_, Event>) {
        let finish = Finish {
            winner,
            reason: reason.to_owned(),
        };
        self.deadline = None;
        self.result = Some(finish.clone());
        ctx.broadcast(Event::Over(finish));
    }

    fn disc(&self, column: i32, row: i32) -> Option<u8> {
        let column = usize::try_from(column).ok()?;
        let row = usize::try_from(row).ok()?;
        self.grid.get(column)?.get(row).copied()
    }

    /// Whether the disc at (`column`, `row`) is part of four in a row.
    fn four_from(&self, column: usize, row: usize) -> bool {
        let (c, r) = (column as i32, row as i32);
        let me = self.disc(c, r);
        [(1, 0), (0, 1), (1, 1), (1, -1)].iter().any(|&(dc, dr)| {
            let run = |sign: i32| {
                (1..4)
                    .take_while(|k| self.disc(c + sign * k * dc, r + sign * k * dr) == me)
                    .count()
            };
            1 + run(1) + run(-1) >= 4
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_sdk::testing::{Harness, json};

    fn start(move_ms: Option<u64>) -> (Harness<ConnectFour>, String, String) {
        let h = Harness::<ConnectFour>::with_players(["ann", "bob"])
            .options(json!({"move_ms": move_ms}))
            .seed(3)
            .start()
            .unwrap();
        let [a, b] = h.state().players.clone();
        (h, a, b)
    }

    #[test]
    fn four_in_a_row_wins() {
        let (mut h, a, b) = start(None);
        for column in [0, 0, 1, 1, 2, 2] {
            let who = if h.state().turn == 0 { &a } else { &b };
            h.act(who, json!({"column": column})).unwrap();
        }
        h.act(&a, json!({"column": 3})).unwrap();
        assert_eq!(
            h.result(),
            Some(json!({"winner": a, "reason": "four_in_a_row"}))
        );
        assert_eq!(h.spectator_view()["rows"][5], "XXXX...");
    }

    #[test]
    fn diagonals_count() {
        let (mut h, a, b) = start(None);
        // X builds a rising diagonal from column 0; O plays elsewhere.
        for (who, column) in [
            (&a, 0),
            (&b, 1),
            (&a, 1),
            (&b, 2),
            (&a, 2),
            (&b, 3),
            (&a, 2),
            (&b, 3),
            (&a, 3),
            (&b, 6),
            (&a, 3),
        ] {
            h.act(who, json!({"column": column})).unwrap();
        }
        assert_eq!(h.result().unwrap()["winner"], json!(a));
    }

    #[test]
    fn illegal_moves_are_refused() {
        let (mut h, a, b) = start(None);
        assert!(
            h.act(&b, json!({"column": 0}))
                .unwrap_err()
                .reason
                .contains("not your turn")
        );
        assert!(
            h.act(&a, json!({"column": 7}))
                .unwrap_err()
                .reason
                .contains("0 to 6")
        );
        assert!(
            h.act(&a, json!({"row": 1}))
                .unwrap_err()
                .reason
                .contains("not understood")
        );
        for i in 0..6 {
            let who = if i % 2 == 0 { &a } else { &b };
            h.act(who, json!({"column": 4})).unwrap();
        }
        assert!(
            h.act(&a, json!({"column": 4}))
                .unwrap_err()
                .reason
                .contains("full")
        );
    }

    #[test]
    fn the_move_clock_forfeits() {
        let (mut h, a, b) = start(Some(5000));
        assert_eq!(h.next_tick(), Some(5000));
        h.act(&a, json!({"column": 3})).unwrap();
        h.advance(4999);
        assert_eq!(h.status(), baton_sdk::wire::Status::Running);
        h.advance(1);
        assert_eq!(h.result(), Some(json!({"winner": a, "reason": "timeout"})));
        assert!(h.act(&b, json!({"column": 3})).is_err());
    }

    #[test]
    fn the_seed_draws_who_starts() {
        let first = |seed| {
            Harness::<ConnectFour>::with_players(["ann", "bob"])
                .seed(seed)
                .start()
                .unwrap()
                .state()
                .players[0]
                .clone()
        };
        let starters: std::collections::BTreeSet<_> = (0..16).map(first).collect();
        assert_eq!(starters.len(), 2, "both players get to start for some seed");
        assert_eq!(first(9), first(9));
    }
}
