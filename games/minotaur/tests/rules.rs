//! Minotaur's rules, tested natively through the SDK harness.

use baton_sdk::testing::{Harness, Value, json};
use baton_sdk::wire::Status;
use minotaur::{Hex, Minotaur};

/// A game with fixed start cells: `cells[i]` is player i's (q, r).
fn game(players: &[&str], cells: &[(i32, i32)], extra: Value) -> Harness<Minotaur> {
    let mut options = json!({
        "radius": 3,
        "round_ms": 1000,
        "positions": cells.iter().map(|(q, r)| json!({"q": q, "r": r})).collect::<Vec<_>>(),
    });
    if let (Value::Object(o), Value::Object(e)) = (&mut options, extra) {
        o.extend(e);
    }
    Harness::with_players(players.iter().copied())
        .options(options)
        .seed(1)
        .start()
        .expect("the game starts")
}

fn mv(dq: i32, dr: i32) -> Value {
    json!({"type": "move", "dq": dq, "dr": dr})
}

fn attack(target: &str) -> Value {
    json!({"type": "attack", "target": target})
}

fn pos(h: &Harness<Minotaur>, id: &str) -> Hex {
    h.state()
        .fighters()
        .iter()
        .find(|f| f.id == id)
        .expect("a player")
        .pos
}

fn hp(h: &Harness<Minotaur>, id: &str) -> u32 {
    h.state()
        .fighters()
        .iter()
        .find(|f| f.id == id)
        .expect("a player")
        .hp
}

fn refusal(h: &mut Harness<Minotaur>, player: &str, action: Value) -> String {
    h.act(player, action)
        .expect_err("the action is refused")
        .reason
}

#[test]
fn a_round_resolves_when_everyone_has_registered() {
    let mut g = game(&["ann", "bob"], &[(0, 0), (2, 0)], json!({}));
    let first = g.act("ann", mv(1, 0)).unwrap();
    assert_eq!(g.state().round(), 1, "bob has not registered yet");
    assert_eq!(first.seen_by("ann")[0]["type"], "registered");
    assert_eq!(
        first.seen_by("bob"),
        [json!({"type": "ready", "round": 1, "player": "ann"})]
    );

    // Bob walks into the cell ann wants too: both bump and stay.
    let second = g.act("bob", mv(-1, 0)).unwrap();
    assert_eq!(g.state().round(), 2);
    let round = &second.public()[1];
    assert_eq!(round["type"], "round");
    assert_eq!(round["results"][0]["effect"]["effect"], "blocked");
    assert_eq!(pos(&g, "ann"), Hex::new(0, 0));
    assert_eq!(pos(&g, "bob"), Hex::new(2, 0));
    assert_eq!(
        second.next_tick,
        Some(1000),
        "round 2 ends at now + round_ms"
    );
}

#[test]
fn moves_go_one_step_and_stay_on_the_board() {
    let mut g = game(&["ann", "bob"], &[(3, 0), (-3, 0)], json!({}));
    assert!(refusal(&mut g, "ann", mv(2, 0)).contains("one step"));
    assert!(
        refusal(&mut g, "ann", mv(1, 1)).contains("one step"),
        "(1,1) is not a hex direction"
    );
    assert!(refusal(&mut g, "ann", mv(1, 0)).contains("leave the board"));
    g.act("ann", mv(-1, 0)).unwrap();
    g.act("bob", mv(0, 1)).unwrap();
    assert_eq!(pos(&g, "ann"), Hex::new(2, 0));
    assert_eq!(pos(&g, "bob"), Hex::new(-3, 1));
}

#[test]
fn illegal_actions_are_refused_and_change_nothing() {
    let mut g = game(&["ann", "bob", "cy"], &[(0, 0), (1, 0), (3, 0)], json!({}));
    let before = g.save();
    assert!(refusal(&mut g, "ann", attack("ann")).contains("yourself"));
    assert!(refusal(&mut g, "ann", attack("cy")).contains("not next to you"));
    assert!(refusal(&mut g, "ann", attack("zed")).contains("no player"));
    assert!(refusal(&mut g, "zed", mv(1, 0)).contains("not a player"));
    assert!(refusal(&mut g, "ann", json!({"type": "fly"})).contains("not understood"));
    assert!(refusal(&mut g, "ann", json!("move")).contains("not understood"));
    assert_eq!(g.save(), before, "refusals leave the state as it was");

    g.act("ann", attack("bob")).unwrap();
    assert!(refusal(&mut g, "ann", mv(0, 1)).contains("already registered"));
}

#[test]
fn attacks_cost_hit_points_and_eliminate() {
    let mut g = game(
        &["ann", "bob", "cy"],
        &[(0, 0), (1, 0), (-3, 0)],
        json!({"hit_points": 2}),
    );
    g.act("ann", attack("bob")).unwrap();
    g.act("bob", attack("ann")).unwrap();
    g.act("cy", mv(1, 0)).unwrap();
    assert_eq!((hp(&g, "ann"), hp(&g, "bob")), (1, 1), "simultaneous hits");

    g.act("ann", attack("bob")).unwrap();
    g.act("bob", mv(1, 0)).unwrap(); // too late: the attack lands first
    let out = g.act("cy", mv(1, 0)).unwrap();
    assert_eq!(hp(&g, "bob"), 0);
    assert_eq!(
        pos(&g, "bob"),
        Hex::new(1, 0),
        "a fallen player's move is void"
    );
    let round = &out.public()[1];
    assert_eq!(round["eliminated"], json!(["bob"]));
    assert_eq!(
        round["results"][0]["effect"],
        json!({"effect": "hit", "hp_left": 0})
    );

    assert!(refusal(&mut g, "bob", mv(1, 0)).contains("eliminated"));
    assert!(refusal(&mut g, "ann", attack("bob")).contains("already been eliminated"));
}

#[test]
fn last_one_standing_wins() {
    let mut g = game(&["ann", "bob"], &[(0, 0), (0, 1)], json!({"hit_points": 1}));
    let out = g.act("ann", attack("bob")).unwrap();
    assert_eq!(g.status(), Status::Running);
    assert!(out.next_tick.is_some());
    let out = g.act("bob", mv(0, 1)).unwrap();
    assert_eq!(
        g.result(),
        Some(json!({"winner": "ann", "draw": [], "rounds": 1}))
    );
    assert_eq!(out.next_tick, None, "a finished game needs no ticks");
    assert_eq!(out.public().last().unwrap()["type"], "game_over");
    assert!(refusal(&mut g, "ann", mv(1, 0)).contains("over"));
}

#[test]
fn falling_together_is_a_draw() {
    let mut g = game(&["ann", "bob"], &[(0, 0), (1, 0)], json!({"hit_points": 1}));
    g.act("ann", attack("bob")).unwrap();
    g.act("bob", attack("ann")).unwrap();
    assert_eq!(
        g.result(),
        Some(json!({"winner": null, "draw": ["ann", "bob"], "rounds": 1}))
    );
}

#[test]
fn the_round_timer_resolves_with_whoever_registered() {
    let mut g = game(&["ann", "bob"], &[(0, 0), (2, 0)], json!({}));
    g.act("ann", mv(0, 1)).unwrap();
    assert!(g.advance(999).is_empty(), "not due yet");
    let ticks = g.advance(1);
    assert_eq!(ticks.len(), 1);
    assert_eq!(g.state().round(), 2);
    assert_eq!(pos(&g, "ann"), Hex::new(0, 1));
    assert_eq!(
        ticks[0].public()[0]["results"][1]["effect"]["effect"],
        "idle"
    );

    // Nobody acts for several rounds: each timer fires in turn.
    assert_eq!(g.advance(3500).len(), 3);
    assert_eq!(g.state().round(), 5);
}

#[test]
fn the_round_limit_ends_the_game_on_hit_points() {
    let mut g = game(
        &["ann", "bob"],
        &[(0, 0), (1, 0)],
        json!({"max_rounds": 2, "hit_points": 3}),
    );
    g.act("ann", attack("bob")).unwrap();
    g.act("bob", mv(1, 0)).unwrap();
    g.advance(1000);
    assert_eq!(
        g.result(),
        Some(json!({"winner": "ann", "draw": [], "rounds": 2}))
    );
}

#[test]
fn blocked_moves_chain_but_rotations_and_followers_move() {
    // ann follows bob east; bob is blocked by cy, who stays: all stop.
    let mut g = game(&["ann", "bob", "cy"], &[(-1, 0), (0, 0), (1, 0)], json!({}));
    g.act("ann", mv(1, 0)).unwrap();
    g.act("bob", mv(1, 0)).unwrap();
    g.advance(1000);
    assert_eq!(
        [pos(&g, "ann"), pos(&g, "bob")],
        [Hex::new(-1, 0), Hex::new(0, 0)]
    );

    // Now cy moves away too: the line walks.
    g.act("ann", mv(1, 0)).unwrap();
    g.act("bob", mv(1, 0)).unwrap();
    g.act("cy", mv(1, 0)).unwrap();
    assert_eq!(
        [pos(&g, "ann"), pos(&g, "bob"), pos(&g, "cy")],
        [Hex::new(0, 0), Hex::new(1, 0), Hex::new(2, 0)]
    );

    // Two neighbours cannot swap cells.
    g.act("ann", mv(1, 0)).unwrap();
    g.act("bob", mv(-1, 0)).unwrap();
    g.act("cy", mv(0, 1)).unwrap();
    assert_eq!(
        [pos(&g, "ann"), pos(&g, "bob")],
        [Hex::new(0, 0), Hex::new(1, 0)]
    );
}

#[test]
fn views_hide_what_others_registered() {
    let mut g = game(&["ann", "bob"], &[(0, 0), (2, 0)], json!({}));
    g.act("ann", mv(1, 0)).unwrap();
    let ann = g.view_of("ann").unwrap();
    let bob = g.view_of("bob").unwrap();
    let spectator = g.spectator_view();
    assert_eq!(ann["players"][0]["registered"], mv(1, 0));
    assert_eq!(bob["players"][0]["registered"], Value::Null);
    assert_eq!(bob["players"][0]["ready"], true);
    assert_eq!(spectator["players"][0]["registered"], Value::Null);
    assert_eq!(spectator["you"], Value::Null);
    assert!(g.view_of("zed").is_err());
}

#[test]
fn bad_options_refuse_the_start() {
    let start = |options: Value, players: &[&str]| {
        Harness::<Minotaur>::with_players(players.iter().copied())
            .options(options)
            .start()
            .map(|_| ())
            .unwrap_err()
            .reason
    };
    assert!(start(json!({"radius": 0}), &["a", "b"]).contains("radius"));
    assert!(start(json!({"radius": 40}), &["a", "b"]).contains("radius"));
    assert!(start(json!({"colour": "red"}), &["a", "b"]).contains("unknown field"));
    assert!(start(json!({}), &["a"]).contains("at least 2"));
    assert!(start(json!({"radius": 1}), &["a", "b", "c", "d"]).contains("at most 3"));
    assert!(
        start(
            json!({"positions": [{"q": 0, "r": 0}, {"q": 0, "r": 0}]}),
            &["a", "b"]
        )
        .contains("one cell")
    );
    assert!(
        start(
            json!({"positions": [{"q": 9, "r": 0}, {"q": 0, "r": 0}]}),
            &["a", "b"]
        )
        .contains("off the board")
    );
}

#[test]
fn random_starts_are_distinct_on_board_and_seeded() {
    let players = ["a", "b", "c", "d", "e", "f", "g", "h"];
    let start = |seed| {
        Harness::<Minotaur>::with_players(players)
            .seed(seed)
            .start()
            .unwrap()
    };
    let cells = |h: &Harness<Minotaur>| {
        h.state()
            .fighters()
            .iter()
            .map(|f| f.pos)
            .collect::<Vec<_>>()
    };
    let one = start(5);
    let mut sorted = cells(&one);
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 8);
    assert!(sorted.iter().all(|h| h.distance(Hex::new(0, 0)) <= 4));
    assert_eq!(cells(&one), cells(&start(5)), "same seed, same board");
    assert_ne!(cells(&one), cells(&start(6)));
}

/// Plays a whole game of `players` with seeded random but legal actions,
/// returning everything the rules said.
fn play(seed: u64, players: &[&str]) -> (Vec<String>, Vec<u8>, Value) {
    let mut g = Harness::<Minotaur>::with_players(players.iter().copied())
        .seed(seed)
        .options(json!({"radius": 2, "round_ms": 500, "max_rounds": 40}))
        .start()
        .unwrap();
    let mut transcript = Vec::new();
    let mut dice = baton_sdk::Rng::from_seed(seed ^ 0xdead);
    while g.status() == Status::Running {
        for p in players {
            // Try random actions; keep the refusals in the transcript too.
            let action = match dice.below(3) {
                0 => mv(
                    DIRS[dice.below(6) as usize].0,
                    DIRS[dice.below(6) as usize].1,
                ),
                _ => attack(players[dice.below(players.len() as u64) as usize]),
            };
            let result = g.act(p, &action);
            transcript.push(format!("{p} {action} -> {result:?}"));
        }
        for t in g.advance(250) {
            transcript.push(format!("tick -> {t:?}"));
        }
    }
    let result = g.result().unwrap();
    (transcript, g.save(), result)
}

const DIRS: [(i32, i32); 6] = [(1, 0), (1, -1), (0, -1), (-1, 0), (-1, 1), (0, 1)];

#[test]
fn same_seed_and_calls_replay_identically() {
    let players = ["ann", "bob", "cy", "dee"];
    let (t1, s1, r1) = play(11, &players);
    let (t2, s2, r2) = play(11, &players);
    assert_eq!(t1, t2, "identical results, call by call");
    assert_eq!(s1, s2, "identical final state");
    assert_eq!(r1, r2);
    let (t3, _, _) = play(12, &players);
    assert_ne!(t1, t3, "another seed plays another game");
}

#[test]
fn a_saved_game_loads_and_plays_on_identically() {
    let mut g = game(&["ann", "bob"], &[(0, 0), (2, 0)], json!({}));
    g.act("ann", mv(1, 0)).unwrap();
    let bytes = g.save();
    let mut copy = Harness::<Minotaur>::load(1, &bytes, g.now()).unwrap();
    assert_eq!(copy.view_of("ann"), g.view_of("ann"));
    assert_eq!(copy.act("bob", mv(0, 1)), g.act("bob", mv(0, 1)));
    assert_eq!(copy.save(), g.save());
    assert!(
        Harness::<Minotaur>::load(2, &bytes, 0)
            .unwrap_err()
            .contains("newer")
    );
    assert!(
        Harness::<Minotaur>::load(1, b"{not json", 0)
            .unwrap_err()
            .contains("not readable")
    );
}
