//! Upgrading a live session from 1.0.0 to 2.0.0, tested natively with the
//! SDK harness (how a designer tests a migration, no host needed).
//!
//! Version 1 saves a mid-game session; `saved-1.0.0.json` holds those
//! bytes, and the version-1 test keeps the file honest. Version 2 (`cargo
//! test -p minotaur --features v2 --test migration`, which `scripts/test`
//! runs) must load it with every player, position, hit point and
//! registered action. Regenerate the file after a change to version 1 with
//! `BATON_WRITE_FIXTURE=1 cargo test -p minotaur --test migration`.

use baton_sdk::testing::{Harness, json};
use minotaur::Minotaur;

const SAVED_BY_1: &str = include_str!("saved-1.0.0.json");

/// Round 2 of a three-player game: bob took a hit in round 1; in round 2
/// ann registered an attack on bob and cy a move; bob has not acted.
#[cfg(not(feature = "v2"))]
fn mid_game() -> Harness<Minotaur> {
    let cells = [(0, 0), (1, 0), (-2, 0)];
    let mut h = Harness::with_players(["ann", "bob", "cy"])
        .options(json!({
            "radius": 3,
            "positions": cells.iter().map(|(q, r)| json!({"q": q, "r": r})).collect::<Vec<_>>(),
        }))
        .seed(7)
        .start()
        .expect("the game starts");
    let acts = [
        ("ann", json!({"type": "attack", "target": "bob"})),
        ("bob", json!({"type": "move", "dq": -1, "dr": 1})),
        ("cy", json!({"type": "move", "dq": 0, "dr": 1})),
        ("ann", json!({"type": "attack", "target": "bob"})),
        ("cy", json!({"type": "move", "dq": 0, "dr": -1})),
    ];
    for (player, action) in acts {
        h.act(player, action).expect("accepted");
    }
    h
}

#[cfg(not(feature = "v2"))]
#[test]
fn version_1_saves_what_the_fixture_holds() {
    let saved = String::from_utf8(mid_game().save()).expect("JSON");
    if std::env::var_os("BATON_WRITE_FIXTURE").is_some() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/saved-1.0.0.json");
        std::fs::write(path, format!("{saved}\n")).expect("written");
    }
    assert_eq!(
        saved,
        SAVED_BY_1.trim_end(),
        "version 1 saves something else now: regenerate tests/saved-1.0.0.json (see the top of this file)"
    );
}

#[cfg(all(feature = "v2", not(feature = "v2-broken")))]
#[test]
fn version_2_loads_a_version_1_session_mid_game() {
    let mut h = Harness::<Minotaur>::load(1, SAVED_BY_1.as_bytes(), 0).expect("it migrates");
    let ann = h.view_of("ann").expect("a view");
    assert_eq!(ann["round"], 2);
    let players = ann["players"].as_array().expect("players");
    let summary: Vec<_> = players
        .iter()
        .map(|p| {
            (
                p["id"].clone(),
                p["pos"].clone(),
                p["hp"].clone(),
                p["strikes"].clone(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (json!("ann"), json!({"q": 0, "r": 0}), json!(3), json!(0)),
            (json!("bob"), json!({"q": 0, "r": 1}), json!(2), json!(0)),
            (json!("cy"), json!({"q": -2, "r": 1}), json!(3), json!(0)),
        ]
    );
    // Ann's registered attack is a strike now; cy's move is kept.
    assert_eq!(
        players[0]["registered"],
        json!({"type": "strike", "target": "bob"})
    );
    assert_eq!(players[2]["ready"], true);
    // Bob's move ends the round: the migrated strike lands and counts.
    h.act("bob", json!({"type": "move", "dq": -1, "dr": 0}))
        .expect("accepted");
    let after = h.spectator_view();
    assert_eq!(after["round"], 3);
    assert_eq!(after["players"][0]["strikes"], 1);
    assert_eq!(after["players"][1]["hp"], 1);
    // And players now use the new name.
    let refused = h.act("ann", json!({"type": "attack", "target": "bob"}));
    assert!(refused.is_err(), "`attack` is `strike` in version 2");
}

#[cfg(feature = "v2-broken")]
#[test]
fn the_broken_version_refuses_a_version_1_session() {
    let err = Harness::<Minotaur>::load(1, SAVED_BY_1.as_bytes(), 0)
        .err()
        .expect("it fails");
    assert!(err.contains("broken on purpose"), "{err}");
}
