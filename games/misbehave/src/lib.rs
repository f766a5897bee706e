//! A test fixture, not a game: rules that misbehave on request, so the host's
//! sandbox can be tested against each way a rule module can go wrong.
//!
//! Well-behaved actions change a counter and a ballast of bytes, so a test
//! can check that the state after a contained failure equals the state
//! before it:
//!
//! - `{"add": 5}`: adds to the counter;
//! - `{"ballast": 1048576}`: grows the state to hold that many live bytes
//!   (pseudo-random, so they don't compress away), for big-state tests.
//!
//! Misbehaving actions, each of which the host must contain:
//!
//! - `"spin"`: loops forever (fuel or the wall-clock backstop stops it);
//! - `"hog"`: allocates without end (the memory limit stops it);
//! - `"panic"`: panics (a trap);
//! - `"recurse"`: recurses until the stack overflows (a trap);
//! - `{"flood": n}`: returns `n` events of 1 KiB each;
//! - `{"scribble": n}`: changes state, then refuses (a refusal after a change).

use std::hint::black_box;

use baton_sdk::{Ctx, Game, PlayerId, Rejection, Setup, Status, Viewer, export_game};
use serde::{Deserialize, Serialize};

/// The fixture's state.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Misbehave {
    counter: i64,
    ballast: Vec<u8>,
    hoard: Vec<Vec<u8>>,
}

/// What a test can ask for.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Add to the counter.
    Add(i64),
    /// Hold this many live bytes of state.
    Ballast(usize),
    /// Loop forever.
    Spin,
    /// Allocate without end.
    Hog,
    /// Panic.
    Panic,
    /// Overflow the stack.
    Recurse,
    /// Emit this many 1 KiB events.
    Flood(u32),
    /// Change the counter by this much, then refuse.
    Scribble(i64),
}

/// What the fixture shows.
#[derive(Debug, Serialize)]
pub struct View {
    /// The counter.
    pub counter: i64,
    /// Live bytes of ballast.
    pub ballast: usize,
    /// A checksum of the ballast, to compare states cheaply.
    pub ballast_sum: u64,
}

impl Game for Misbehave {
    const NAME: &'static str = "misbehave";
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");

    type Options = ();
    type Action = Action;
    type Event = String;
    type View = View;
    type Result = i64;

    fn start(_setup: Setup<()>, ctx: &mut Ctx<'_, String>) -> Result<Self, Rejection> {
        ctx.log("misbehave fixture started");
        Ok(Misbehave::default())
    }

    fn act(
        &mut self,
        _player: &PlayerId,
        action: Action,
        ctx: &mut Ctx<'_, String>,
    ) -> Result<(), Rejection> {
        match action {
            Action::Add(n) => {
                self.counter = self.counter.wrapping_add(n);
                ctx.broadcast(format!("counter is {}", self.counter));
            }
            Action::Ballast(bytes) => {
                let rng = ctx.rng();
                self.ballast = (0..bytes).map(|_| rng.next_u64() as u8).collect();
            }
            Action::Spin => spin(),
            Action::Hog => loop {
                // Touch every page so the memory is really used.
                self.hoard.push(vec![1u8; 1 << 20]);
            },
            Action::Panic => panic!("the rules panicked on purpose"),
            Action::Recurse => {
                black_box(recurse(black_box(1)));
            }
            Action::Flood(n) => {
                for i in 0..n {
                    ctx.broadcast(format!("{i:08}{}", "x".repeat(1016)));
                }
            }
            Action::Scribble(n) => {
                self.counter = self.counter.wrapping_add(n);
                return Err(Rejection::new("scribbled, then refused"));
            }
        }
        Ok(())
    }

    fn view(&self, _viewer: &Viewer) -> View {
        View {
            counter: self.counter,
            ballast: self.ballast.len(),
            ballast_sum: self
                .ballast
                .iter()
                .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(*b)),
        }
    }

    fn status(&self) -> Status<i64> {
        Status::Running
    }
}

export_game!(Misbehave);

fn spin() {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

#[allow(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    black_box(recurse(black_box(depth + 1))) + frame[0]
}
