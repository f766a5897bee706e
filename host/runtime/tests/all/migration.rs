//! A live session's state carried from one rule version to the next, as
//! the Wasm modules do it: `save` on the old instance, `load` (with the
//! rules' `migrate`) on a fresh instance of the new one.

use baton_runtime::Limits;
use baton_runtime::Session;
use baton_sdk::wire::Viewer;
use serde_json::Value;

use crate::support::{minotaur, minotaur_v2, minotaur_v2_broken, started};

const OPTIONS: &str =
    r#"{"radius": 3, "hit_points": 3, "positions": [{"q":0,"r":0},{"q":1,"r":0},{"q":-2,"r":0}]}"#;

/// A version-1 game in round 2: a hit landed in round 1, and in round 2 ann
/// registered an attack and cy a move, while bob has not acted yet.
fn mid_game() -> Session {
    let mut session = started(minotaur(), &["ann", "bob", "cy"], OPTIONS, 7);
    let acts = [
        ("ann", r#"{"type":"attack","target":"bob"}"#),
        ("bob", r#"{"type":"move","dq":-1,"dr":1}"#),
        ("cy", r#"{"type":"move","dq":0,"dr":1}"#),
        ("ann", r#"{"type":"attack","target":"bob"}"#),
        ("cy", r#"{"type":"move","dq":0,"dr":-1}"#),
    ];
    for (player, action) in acts {
        session
            .act(player, action, 10)
            .expect("no trap")
            .unwrap_or_else(|r| panic!("{player} {action}: {}", r.reason));
    }
    session
}

fn view(session: &mut Session, viewer: Viewer) -> Value {
    let json = session.view(viewer).expect("no trap").expect("a view");
    serde_json::from_str(&json).expect("JSON")
}

#[test]
fn a_mid_game_session_migrates_to_version_2_with_every_player_and_registered_action() {
    let mut old = mid_game();
    let ann_before = view(&mut old, Viewer::Player("ann".into()));
    let spectator_before = view(&mut old, Viewer::Spectator);
    assert_eq!(ann_before["round"], 2, "{ann_before}");
    let saved = old.save().expect("no trap").expect("saved");

    let mut new = Session::new(minotaur_v2(), Limits::default()).expect("a session");
    assert_eq!(new.module().info().version, "2.0.0");
    let next_tick = new
        .load(old.module().info().state_schema, saved)
        .expect("no trap")
        .expect("the migration succeeds");
    assert_eq!(
        Some(ann_before["deadline"].as_u64().expect("deadline")),
        next_tick
    );

    let ann_after = view(&mut new, Viewer::Player("ann".into()));
    for key in ["radius", "round", "deadline", "you", "outcome"] {
        assert_eq!(ann_after[key], ann_before[key], "{key}");
    }
    let before = ann_before["players"].as_array().expect("players");
    let after = ann_after["players"].as_array().expect("players");
    assert_eq!(before.len(), after.len());
    for (b, a) in before.iter().zip(after) {
        for key in ["id", "name", "pos", "hp", "ready"] {
            assert_eq!(a[key], b[key], "{}: {key}", b["id"]);
        }
        // New in version 2: counted from the upgrade on.
        assert_eq!(a["strikes"], 0, "{a}");
    }
    // Ann's registered attack is a strike now, still aimed at bob.
    assert_eq!(before[0]["registered"]["type"], "attack");
    assert_eq!(
        after[0]["registered"],
        serde_json::json!({"type": "strike", "target": "bob"})
    );
    assert_eq!(
        view(&mut new, Viewer::Spectator)["players"]
            .as_array()
            .map(Vec::len),
        spectator_before["players"].as_array().map(Vec::len)
    );

    // The game goes on under the new rules: bob's move ends the round, and
    // the migrated strike lands.
    let strike = r#"{"type":"attack","target":"ann"}"#;
    let refused = new.act("bob", strike, 20).expect("no trap");
    assert!(refused.is_err(), "version 2 no longer knows `attack`");
    new.act("bob", r#"{"type":"move","dq":-1,"dr":0}"#, 20)
        .expect("no trap")
        .expect("bob moves");
    let after_round = view(&mut new, Viewer::Spectator);
    assert_eq!(after_round["round"], 3, "{after_round}");
    let ann = &after_round["players"][0];
    let bob = &after_round["players"][1];
    assert_eq!(ann["strikes"], 1, "{after_round}");
    assert_eq!(bob["hp"], before[1]["hp"].as_u64().expect("hp") - 1);
}

#[test]
fn the_broken_version_refuses_with_its_reason_and_the_old_session_is_untouched() {
    let mut old = mid_game();
    let before = view(&mut old, Viewer::Spectator);
    let saved = old.save().expect("no trap").expect("saved");
    let mut broken = Session::new(minotaur_v2_broken(), Limits::default()).expect("a session");
    let err = broken
        .load(1, saved)
        .expect("no trap")
        .expect_err("the broken migration fails");
    assert!(err.contains("broken on purpose"), "{err}");
    // The old session plays on.
    old.act("bob", r#"{"type":"move","dq":-1,"dr":0}"#, 20)
        .expect("no trap")
        .expect("bob moves");
    let round = before["round"].as_u64().expect("a round");
    assert_eq!(view(&mut old, Viewer::Spectator)["round"], round + 1);
}

#[test]
fn a_newer_schema_is_refused_by_an_older_version() {
    let mut new = Session::new(minotaur_v2(), Limits::default()).expect("a session");
    new.start(crate::support::setup(&["ann", "bob"], "", 1))
        .expect("no trap")
        .expect("started");
    let saved = new.save().expect("no trap").expect("saved");
    let mut old = Session::new(minotaur(), Limits::default()).expect("a session");
    let err = old.load(2, saved).expect("no trap").expect_err("refused");
    assert!(err.contains("newer"), "{err}");
}
