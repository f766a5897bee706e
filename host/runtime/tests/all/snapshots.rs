//! A restored session is the same session: same bytes, same future.

use std::sync::Arc;

use baton_runtime::{Call, Image, Limits, Reply, RuleModule, Runtime, RuntimeConfig, Session};
use baton_sdk::wire::Viewer;
use proptest::prelude::*;

use crate::support::{connect_four, minotaur, setup, started};

const MINOTAUR_PLAYERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
const C4_PLAYERS: [&str; 2] = ["ann", "bob"];

/// One step of a random session.
#[derive(Clone, Debug)]
enum Op {
    /// An action by player `player` (mod the player count), from the game's
    /// list of templates (some illegal, some not even JSON).
    Act {
        player: usize,
        template: usize,
        dt: u64,
    },
    /// Time passes and the rules tick.
    Tick {
        dt: u64,
    },
    /// Someone looks (the last index is a spectator).
    View {
        viewer: usize,
    },
    Status,
    /// An action of `kib` KiB of junk: grows memory while it is lowered,
    /// and past the session's limit it traps and is rolled back.
    Big {
        kib: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..4usize, 0..16usize, 0..400u64).prop_map(|(player, template, dt)| Op::Act { player, template, dt }),
        2 => (0..3000u64).prop_map(|dt| Op::Tick { dt }),
        2 => (0..5usize).prop_map(|viewer| Op::View { viewer }),
        1 => Just(Op::Status),
        1 => prop_oneof![16..1024usize, 5000..7000usize].prop_map(|kib| Op::Big { kib }),
    ]
}

/// Limits for random sessions: small memory, so `Big` ops can hit it.
fn limits() -> Limits {
    Limits {
        memory_bytes: 4 << 20,
        ..Limits::default()
    }
}

fn minotaur_action(template: usize) -> String {
    const DIRS: [(i32, i32); 6] = [(1, 0), (1, -1), (0, -1), (-1, 0), (-1, 1), (0, 1)];
    match template {
        0..=5 => format!(
            r#"{{"type":"move","dq":{},"dr":{}}}"#,
            DIRS[template].0, DIRS[template].1
        ),
        6..=9 => format!(
            r#"{{"type":"attack","target":"{}"}}"#,
            MINOTAUR_PLAYERS[template - 6]
        ),
        10 => r#"{"type":"move","dq":2,"dr":0}"#.into(),
        11 => r#"{"type":"fly"}"#.into(),
        12 => "not json".into(),
        _ => r#"{"type":"attack","target":"zed"}"#.into(),
    }
}

fn c4_action(template: usize) -> String {
    match template {
        0..=7 => format!(r#"{{"column":{template}}}"#),
        8 => r#"{"row":1}"#.into(),
        _ => format!(r#"{{"column":{}}}"#, template % 7),
    }
}

struct Game {
    module: Arc<RuleModule>,
    players: &'static [&'static str],
    options: &'static str,
    action: fn(usize) -> String,
}

fn minotaur_game() -> Game {
    Game {
        module: minotaur(),
        players: &MINOTAUR_PLAYERS,
        options: r#"{"radius":3,"round_ms":1000,"max_rounds":60}"#,
        action: minotaur_action,
    }
}

fn c4_game() -> Game {
    Game {
        module: connect_four(),
        players: &C4_PLAYERS,
        options: r#"{"move_ms":2000}"#,
        action: c4_action,
    }
}

/// Runs `op` and renders everything it returned, errors included.
fn run(game: &Game, session: &mut Session, clock: &mut u64, op: &Op) -> String {
    let call = match op {
        Op::Act {
            player,
            template,
            dt,
        } => {
            *clock += dt;
            Call::Act {
                player: game.players[player % game.players.len()].into(),
                action: (game.action)(*template),
                client_action_id: None,
            }
        }
        Op::Tick { dt } => {
            *clock += dt;
            Call::Tick
        }
        Op::View { viewer } => Call::View(match game.players.get(*viewer) {
            Some(p) => Viewer::Player((*p).into()),
            None => Viewer::Spectator,
        }),
        Op::Status => Call::Status,
        Op::Big { kib } => Call::Act {
            player: game.players[0].into(),
            action: "x".repeat(kib * 1024),
            client_action_id: None,
        },
    };
    match session.call(call, *clock) {
        Ok((reply, entry)) => format!("{} @{} -> {:?}", entry.position, entry.now, reply),
        Err(e) => format!("error: {e}"),
    }
}

fn check_restore_mid_game(game: Game, seed: u64, before: Vec<Op>, after: Vec<Op>) {
    let mut original = Session::new(game.module.clone(), limits()).unwrap();
    original
        .start(setup(game.players, game.options, seed))
        .unwrap()
        .unwrap();
    let mut clock = 0;
    for op in &before {
        run(&game, &mut original, &mut clock, op);
    }
    let image = original.snapshot().expect("capture");
    let mut restored =
        Session::restore(game.module.clone(), limits(), &image.encode()).expect("restore");
    assert_eq!(
        restored.memory(0).unwrap(),
        original.memory(0).unwrap(),
        "memory bytes"
    );
    assert_eq!(
        restored.globals().unwrap(),
        original.globals().unwrap(),
        "globals"
    );
    assert_eq!(restored.position(), original.position());

    let mut clock_restored = clock;
    for (i, op) in after.iter().enumerate() {
        let a = run(&game, &mut original, &mut clock, op);
        let b = run(&game, &mut restored, &mut clock_restored, op);
        assert_eq!(a, b, "result {i} after the restore differs");
    }
    assert_eq!(
        original.state_digest().unwrap(),
        restored.state_digest().unwrap(),
        "final state"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 10, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn minotaur_restored_mid_game_is_the_same_session(
        seed in any::<u64>(),
        before in prop::collection::vec(op(), 0..60),
        after in prop::collection::vec(op(), 100..120),
    ) {
        check_restore_mid_game(minotaur_game(), seed, before, after);
    }

    #[test]
    fn connect_four_restored_mid_game_is_the_same_session(
        seed in any::<u64>(),
        before in prop::collection::vec(op(), 0..60),
        after in prop::collection::vec(op(), 100..120),
    ) {
        check_restore_mid_game(c4_game(), seed, before, after);
    }
}

/// A session driven by a fixed script, for the deterministic tests below.
fn scripted(game: &Game, seed: u64, steps: usize) -> (Session, u64) {
    let mut session = Session::new(game.module.clone(), limits()).unwrap();
    session
        .start(setup(game.players, game.options, seed))
        .unwrap()
        .unwrap();
    let mut clock = 0;
    let mut rng = baton_sdk::Rng::from_seed(seed);
    for _ in 0..steps {
        let op = match rng.below(10) {
            0..=5 => Op::Act {
                player: rng.below(4) as usize,
                template: rng.below(14) as usize,
                dt: rng.below(300),
            },
            6 | 7 => Op::Tick {
                dt: rng.below(1500),
            },
            8 => Op::View {
                viewer: rng.below(5) as usize,
            },
            _ => Op::Big { kib: 6000 },
        };
        run(game, &mut session, &mut clock, &op);
    }
    (session, clock)
}

#[test]
fn a_snapshot_plus_the_journal_suffix_replays_to_identical_bytes() {
    let game = minotaur_game();
    let (mut session, clock) = scripted(&game, 3, 40);
    let snapshot = session.snapshot().unwrap().encode();
    let mut entries = Vec::new();
    let mut clock = clock;
    let mut rng = baton_sdk::Rng::from_seed(99);
    for _ in 0..60 {
        clock += rng.below(700);
        let call = Call::Act {
            player: MINOTAUR_PLAYERS[rng.below(4) as usize].into(),
            action: minotaur_action(rng.below(14) as usize),
            client_action_id: Some(format!("c{}", rng.next_u64())),
        };
        if let Ok((_, entry)) = session.call(call, clock) {
            entries.push(entry);
        }
        if let Ok((_, entry)) = session.call(Call::Tick, clock) {
            entries.push(entry);
        }
    }
    let expected = session.state_digest().unwrap();

    let mut replayed = Session::restore(game.module.clone(), limits(), &snapshot).unwrap();
    for entry in &entries {
        // Entries survive their storage form.
        let entry = baton_runtime::JournalEntry::decode(&entry.encode()).unwrap();
        replayed.replay(&entry).unwrap();
    }
    assert_eq!(replayed.state_digest().unwrap(), expected);
    assert_eq!(replayed.position(), session.position());

    // Out of order is refused.
    let mut again = Session::restore(game.module.clone(), limits(), &snapshot).unwrap();
    let err = again.replay(&entries[1]).unwrap_err();
    assert!(err.to_string().contains("does not follow"), "{err}");
}

#[test]
fn the_whole_journal_from_a_fresh_instance_replays_to_identical_bytes() {
    let game = c4_game();
    let mut session = Session::new(game.module.clone(), limits()).unwrap();
    let mut journal = Vec::new();
    let (_, entry) = session
        .call(Call::Start(setup(&C4_PLAYERS, game.options, 5)), 0)
        .unwrap();
    journal.push(entry);
    for (i, column) in [3, 3, 4, 9, 2, 2, 5, 0, 1].into_iter().enumerate() {
        for player in C4_PLAYERS {
            let call = Call::Act {
                player: player.into(),
                action: format!(r#"{{"column":{column}}}"#),
                client_action_id: None,
            };
            journal.push(session.call(call, 100 * i as u64).unwrap().1);
        }
        journal.push(
            session
                .call(Call::View(Viewer::Spectator), 100 * i as u64)
                .unwrap()
                .1,
        );
    }
    let mut replayed = Session::new(game.module.clone(), limits()).unwrap();
    for entry in &journal {
        replayed.replay(entry).unwrap();
    }
    assert_eq!(
        replayed.state_digest().unwrap(),
        session.state_digest().unwrap()
    );
}

#[test]
fn deltas_folded_in_order_restore_the_same_session() {
    let game = minotaur_game();
    let module = game.module.clone();
    let mut session = Session::new(module.clone(), limits()).unwrap();
    let mut folded: Image = module.fresh_image();
    session
        .start(setup(&MINOTAUR_PLAYERS, game.options, 8))
        .unwrap()
        .unwrap();
    let mut clock = 0;
    let mut rng = baton_sdk::Rng::from_seed(8);
    for round in 0..12 {
        for _ in 0..rng.below(8) {
            let op = Op::Act {
                player: rng.below(4) as usize,
                template: rng.below(10) as usize,
                dt: 50,
            };
            run(&game, &mut session, &mut clock, &op);
        }
        if round == 6 {
            run(&game, &mut session, &mut clock, &Op::Big { kib: 900 });
        }
        let delta = baton_runtime::Delta::decode(&session.delta().unwrap().encode()).unwrap();
        folded.apply(&delta).unwrap();
    }
    let mut restored = Session::restore_image(module, limits(), Arc::new(folded)).unwrap();
    assert_eq!(
        restored.state_digest().unwrap(),
        session.state_digest().unwrap()
    );
    assert_eq!(restored.position(), session.position());
}

#[test]
fn a_replica_that_folds_checkpoint_deltas_holds_the_owners_checkpoint() {
    // What a replica does: take the first checkpoint whole, then only the
    // deltas of later ones, some folded together as a busy link would.
    let game = minotaur_game();
    let module = game.module.clone();
    let mut session = Session::new(module.clone(), limits()).unwrap();
    session
        .start(setup(&MINOTAUR_PLAYERS, game.options, 3))
        .unwrap()
        .unwrap();
    let (first, _) = session.checkpoint_with_delta().unwrap();
    let mut replica = (*first).clone();
    let mut waiting: Option<baton_runtime::Delta> = None;
    let mut clock = 0;
    let mut rng = baton_sdk::Rng::from_seed(3);
    let mut last = first;
    for round in 0..10 {
        for _ in 0..1 + rng.below(6) {
            let op = Op::Act {
                player: rng.below(4) as usize,
                template: rng.below(10) as usize,
                dt: 50,
            };
            run(&game, &mut session, &mut clock, &op);
        }
        let (image, delta) = session.checkpoint_with_delta().unwrap();
        assert_eq!(delta.base, last.position);
        assert_eq!(delta.position, image.position);
        match &mut waiting {
            Some(w) => w.then(delta).unwrap(),
            None => waiting = Some(delta),
        }
        if round % 3 != 1 {
            let delta = waiting.take().unwrap();
            replica
                .apply(&baton_runtime::Delta::decode(&delta.encode()).unwrap())
                .unwrap();
        }
        last = image;
    }
    if let Some(delta) = waiting.take() {
        replica.apply(&delta).unwrap();
    }
    let mut restored = Session::restore_image(module, limits(), Arc::new(replica)).unwrap();
    assert_eq!(restored.position(), session.position());
    assert_eq!(
        restored.state_digest().unwrap(),
        session.state_digest().unwrap()
    );
}

#[test]
fn a_snapshot_of_another_module_is_refused() {
    let mut session = started(minotaur(), &["ann", "bob"], "", 1);
    let snapshot = session.snapshot().unwrap().encode();
    let err = Session::restore(connect_four(), Limits::default(), &snapshot).unwrap_err();
    assert!(err.to_string().contains("is of module"), "{err}");
    let mut damaged = snapshot.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0x40;
    let err = Session::restore(minotaur(), Limits::default(), &damaged).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
}

#[test]
fn the_accessor_reads_what_wasmtimes_guest_debug_view_sees() {
    // A second engine with guest debugging on: slow, but it sees every
    // memory and global directly. The accessor must agree with it.
    let runtime = Runtime::with_wasmtime_config(RuntimeConfig::default(), |c| {
        c.guest_debug(true);
    })
    .unwrap();
    for component in [&baton_games::MINOTAUR, &baton_games::CONNECT_FOUR] {
        let module = runtime.load(component.bytes).unwrap();
        let game = Game {
            module,
            ..if component.name == "minotaur" {
                minotaur_game()
            } else {
                c4_game()
            }
        };
        let (mut session, _) = scripted(&game, 21, 30);
        let (memories, globals) = session.debug_oracle().unwrap();
        assert_eq!(
            session.memory(0).unwrap(),
            memories[0],
            "{}: memory",
            component.name
        );
        assert_eq!(
            session.globals().unwrap(),
            globals,
            "{}: globals",
            component.name
        );
        // And a restore writes what the oracle then sees.
        let image = session.snapshot().unwrap();
        let mut restored =
            Session::restore_image(game.module.clone(), limits(), Arc::new(image)).unwrap();
        let (restored_memories, restored_globals) = restored.debug_oracle().unwrap();
        assert_eq!(
            restored_memories, memories,
            "{}: restored memory",
            component.name
        );
        assert_eq!(
            restored_globals, globals,
            "{}: restored globals",
            component.name
        );
    }
}

/// The replies of `script` run on a session restored from `snapshot`.
fn replies_after_restore(
    module: Arc<RuleModule>,
    snapshot: &[u8],
    script: &[(Call, u64)],
) -> (Vec<String>, [u8; 32]) {
    let mut session = Session::restore(module, limits(), snapshot).unwrap();
    let replies = script
        .iter()
        .map(|(call, clock)| match session.call(call.clone(), *clock) {
            Ok((reply, _)) => format!("{reply:?}"),
            Err(e) => format!("error: {e}"),
        })
        .collect();
    (replies, session.state_digest().unwrap())
}

fn cross_process_script() -> Vec<(Call, u64)> {
    (0..120u64)
        .map(|i| {
            let call = match i % 4 {
                0 | 1 => Call::Act {
                    player: MINOTAUR_PLAYERS[(i % 3) as usize].into(),
                    action: minotaur_action((i * 7 % 14) as usize),
                    client_action_id: None,
                },
                2 => Call::Tick,
                _ => Call::View(Viewer::Player(MINOTAUR_PLAYERS[(i % 4) as usize].into())),
            };
            (call, 10_000 + i * 400)
        })
        .collect()
}

/// The half of `a_snapshot_restores_identically_in_another_process` that
/// runs in the child: a no-op unless the parent set the variables.
#[test]
fn child_process_restores_a_snapshot_file() {
    let (Ok(input), Ok(output)) = (
        std::env::var("BATON_TEST_SNAPSHOT"),
        std::env::var("BATON_TEST_REPLIES"),
    ) else {
        return;
    };
    let snapshot = std::fs::read(input).unwrap();
    let (replies, digest) = replies_after_restore(minotaur(), &snapshot, &cross_process_script());
    let rendered = format!("{}\n{}", replies.join("\n"), hex(&digest));
    std::fs::write(output, rendered).unwrap();
}

#[test]
fn a_snapshot_restores_identically_in_another_process() {
    let game = minotaur_game();
    let (mut session, _) = scripted(&game, 77, 50);
    let snapshot = session.snapshot().unwrap().encode();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("session.snap");
    let output = dir.path().join("replies.txt");
    std::fs::write(&input, &snapshot).unwrap();

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "snapshots::child_process_restores_a_snapshot_file",
            "--test-threads=1",
        ])
        .env("BATON_TEST_SNAPSHOT", &input)
        .env("BATON_TEST_REPLIES", &output)
        .status()
        .unwrap();
    assert!(status.success());
    let theirs = std::fs::read_to_string(&output).expect("the child wrote its replies");

    let (replies, digest) =
        replies_after_restore(game.module.clone(), &snapshot, &cross_process_script());
    let ours = format!("{}\n{}", replies.join("\n"), hex(&digest));
    assert_eq!(theirs.lines().count(), 121);
    assert_eq!(theirs, ours);
    // And both equal the original session continuing in this process.
    let mut original_replies = Vec::new();
    for (call, clock) in cross_process_script() {
        original_replies.push(match session.call(call, clock) {
            Ok((reply, _)) => format!("{reply:?}"),
            Err(e) => format!("error: {e}"),
        });
    }
    assert_eq!(original_replies, replies);
    assert_eq!(session.state_digest().unwrap(), digest);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn capturing_does_not_disturb_the_guest() {
    let game = minotaur_game();
    let (mut session, _) = scripted(&game, 5, 30);
    let before = session.state_digest().unwrap();
    let sizes_before = session.memory(0).unwrap().len();
    for _ in 0..5 {
        session.snapshot().unwrap();
        session.delta().unwrap();
    }
    assert_eq!(session.state_digest().unwrap(), before);
    assert_eq!(
        session.memory(0).unwrap().len(),
        sizes_before,
        "reading never grows guest memory"
    );
    assert!(matches!(
        session.call(Call::Status, 0).unwrap().0,
        Reply::Status(_)
    ));
}
