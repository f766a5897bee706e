//! A live session's state carried from one rule version to the next, as
//! the Wasm modules do it: `save` on the old instance, `load` (with the
//! rules' `migrate`) on a fresh instance of the new one.

use std::sync::Arc;

use baton_runtime::{Call, CallError, JournalEntry, Limits, Reply, Session, SwitchError};
use baton_sdk::wire::Viewer;
use serde_json::Value;

use crate::support::{minotaur, minotaur_v2, minotaur_v2_broken, minotaur_v2_trap, started};

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

/// Everyone who must see the game after a switch.
fn viewers() -> Vec<Viewer> {
    let mut viewers: Vec<Viewer> = ["ann", "bob", "cy"]
        .iter()
        .map(|p| Viewer::Player((*p).into()))
        .collect();
    viewers.push(Viewer::Spectator);
    viewers
}

/// [`mid_game`], with its journal.
fn mid_game_journaled() -> (Session, Vec<JournalEntry>) {
    let mut session = Session::new(minotaur(), Limits::default()).expect("a session");
    let mut journal = Vec::new();
    let mut call = |session: &mut Session, call: Call| {
        let (reply, entry) = session.call(call, 10).expect("no trap");
        journal.push(entry);
        reply
    };
    let setup = crate::support::setup(&["ann", "bob", "cy"], OPTIONS, 7);
    call(&mut session, Call::Start(setup));
    for (player, action) in [
        ("ann", r#"{"type":"attack","target":"bob"}"#),
        ("bob", r#"{"type":"move","dq":-1,"dr":1}"#),
        ("cy", r#"{"type":"move","dq":0,"dr":1}"#),
        ("ann", r#"{"type":"attack","target":"bob"}"#),
        ("cy", r#"{"type":"move","dq":0,"dr":-1}"#),
    ] {
        let reply = call(
            &mut session,
            Call::Act {
                player: player.into(),
                action: action.into(),
                client_action_id: None,
            },
        );
        assert!(matches!(reply, Reply::Outcome(Ok(_))), "{reply:?}");
    }
    (session, journal)
}

/// The old instance's `save`, journaled like any call.
fn saved(session: &mut Session, journal: &mut Vec<JournalEntry>) -> Vec<u8> {
    let (reply, entry) = session.call(Call::Save, 10).expect("no trap");
    journal.push(entry);
    match reply {
        Reply::Saved(Ok(bytes)) => bytes,
        other => panic!("save answered {other:?}"),
    }
}

#[test]
fn a_switch_is_journaled_and_a_replay_through_it_gives_the_same_bytes() {
    let (mut session, mut journal) = mid_game_journaled();
    let bytes = saved(&mut session, &mut journal);
    let v2 = minotaur_v2();
    let (reply, entry) = session
        .switch(v2.clone(), 1, bytes, viewers(), 20)
        .expect("the switch happens");
    assert!(matches!(reply, Reply::Switched(Some(_))), "{reply:?}");
    assert_eq!(entry.position, journal.len() as u64);
    assert_eq!(session.module().hash(), v2.hash());
    journal.push(entry);
    // Under the new rules the migrated strike lands when the round ends.
    let (reply, entry) = session
        .call(
            Call::Act {
                player: "bob".into(),
                action: r#"{"type":"move","dq":-1,"dr":0}"#.into(),
                client_action_id: None,
            },
            30,
        )
        .expect("no trap");
    assert!(matches!(reply, Reply::Outcome(Ok(_))), "{reply:?}");
    journal.push(entry);
    let (reply, entry) = session
        .call(Call::View(Viewer::Spectator), 30)
        .expect("no trap");
    journal.push(entry);
    let Reply::View(Ok(json)) = reply else {
        panic!("{reply:?}")
    };
    let spectator: Value = serde_json::from_str(&json).expect("JSON");
    assert_eq!(spectator["players"][0]["strikes"], 1, "{spectator}");

    // Without the new module at hand, a replay says what it misses.
    let mut blind = Session::new(minotaur(), Limits::default()).expect("a session");
    let missing = journal
        .iter()
        .map(|entry| blind.replay(entry))
        .find_map(Result::err)
        .expect("the switch cannot replay without its module");
    assert!(missing.to_string().contains("not at hand"), "{missing}");

    let mut replayed = Session::new(minotaur(), Limits::default()).expect("a session");
    for entry in &journal {
        replayed
            .replay_with(entry, |hash| (*hash == v2.hash()).then(|| Arc::clone(&v2)))
            .unwrap_or_else(|e| panic!("entry {}: {e}", entry.position));
    }
    assert_eq!(replayed.position(), session.position());
    assert_eq!(replayed.module().hash(), v2.hash());
    assert_eq!(
        replayed.state_digest().expect("a digest"),
        session.state_digest().expect("a digest"),
        "the replay has the live session's bytes"
    );
}

#[test]
fn a_refused_switch_leaves_the_session_exactly_as_it_was() {
    let (mut session, mut journal) = mid_game_journaled();
    let bytes = saved(&mut session, &mut journal);
    let digest = session.state_digest().expect("a digest");
    let position = session.position();
    let err = session
        .switch(minotaur_v2_broken(), 1, bytes, viewers(), 20)
        .expect_err("the broken version refuses");
    match &err {
        SwitchError::NewVersion(reason) => {
            assert!(reason.contains("minotaur@2.0.0-broken"), "{reason}");
            assert!(reason.contains("broken on purpose"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(session.position(), position);
    assert_eq!(session.module().hash(), minotaur().hash());
    assert_eq!(session.state_digest().expect("a digest"), digest);
    session
        .act("bob", r#"{"type":"move","dq":-1,"dr":0}"#, 20)
        .expect("no trap")
        .expect("the old rules play on");
}

#[test]
fn a_version_that_traps_after_the_switch_rolls_back_in_place_and_switching_back_restores_the_game()
{
    let (mut session, mut journal) = mid_game_journaled();
    let before = view(&mut session, Viewer::Spectator);
    let bytes = saved(&mut session, &mut journal);
    session
        .switch(minotaur_v2_trap(), 1, bytes.clone(), viewers(), 20)
        .expect("2.0.0-trap migrates");
    let switched = session.state_digest().expect("a digest");
    let err = session
        .act("bob", r#"{"type":"move","dq":-1,"dr":0}"#, 20)
        .expect_err("2.0.0-trap traps on every action");
    assert!(matches!(err, CallError::Panicked { .. }), "{err}");
    // The failed call left the new instance as the switch made it...
    assert_eq!(session.state_digest().expect("a digest"), switched);
    // ...and the way back is a switch to the old version with the state
    // saved before the upgrade.
    let (reply, _) = session
        .switch(minotaur(), 1, bytes, viewers(), 30)
        .expect("the old version takes its own state back");
    assert!(matches!(reply, Reply::Switched(_)), "{reply:?}");
    assert_eq!(session.module().hash(), minotaur().hash());
    let after = view(&mut session, Viewer::Spectator);
    assert_eq!(after, before, "the game as it was before the upgrade");
    session
        .act("bob", r#"{"type":"move","dq":-1,"dr":0}"#, 40)
        .expect("no trap")
        .expect("the old rules play on");
}
