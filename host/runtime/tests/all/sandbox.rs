//! Every misbehaving fixture is contained: the host survives, the session
//! is exactly as before the bad call, and the error names the cause.

use baton_runtime::{CallError, Limits, Session};

use crate::support::{misbehave, setup};

fn session(limits: Limits) -> Session {
    let mut s = Session::new(misbehave(), limits).unwrap();
    s.start(setup(&["p"], "", 1)).unwrap().unwrap();
    s.act("p", r#"{"add": 41}"#, 1).unwrap().unwrap();
    s.act("p", r#"{"ballast": 300000}"#, 2).unwrap().unwrap();
    s
}

/// Runs `action`, which must fail; checks the state is untouched and the
/// session still works; returns the error.
fn contained(limits: Limits, action: &str) -> CallError {
    let mut s = session(limits);
    let before = s.state_digest().unwrap();
    let position = s.position();
    let error = s.act("p", action, 3).expect_err("the call fails");
    assert_eq!(
        s.state_digest().unwrap(),
        before,
        "{action}: state after equals state before"
    );
    assert_eq!(s.position(), position, "{action}: nothing journaled");
    let after = s.act("p", r#"{"add": 1}"#, 4).unwrap().unwrap();
    assert_eq!(
        after.public()[0],
        baton_sdk::testing::json!("counter is 42"),
        "{action}: keeps working"
    );
    error
}

fn small() -> Limits {
    Limits {
        fuel_per_call: 20_000_000,
        memory_bytes: 16 << 20,
        ..Limits::default()
    }
}

#[test]
fn an_endless_loop_runs_out_of_fuel() {
    let e = contained(small(), r#""spin""#);
    assert_eq!(e, CallError::OutOfFuel { budget: 20_000_000 });
    assert!(e.to_string().contains("ran out of fuel"));
}

#[test]
fn a_memory_hog_hits_the_session_limit() {
    let e = contained(small(), r#""hog""#);
    assert!(
        matches!(e, CallError::MemoryLimit { limit, .. } if limit == 16 << 20),
        "{e}"
    );
    assert!(e.to_string().contains("limit is 16777216"), "{e}");
}

#[test]
fn a_panic_is_reported_as_one() {
    let e = contained(small(), r#""panic""#);
    assert!(matches!(e, CallError::Panicked { .. }), "{e}");
    assert!(e.to_string().contains("panicked"), "{e}");
}

#[test]
fn runaway_recursion_overflows_the_stack_and_is_contained() {
    let e = contained(small(), r#""recurse""#);
    let message = e.to_string();
    assert!(
        matches!(e, CallError::StackOverflow) || message.contains("stack overflowing"),
        "{message}"
    );
}

#[test]
fn an_enormous_event_list_is_refused() {
    let limits = Limits {
        fuel_per_call: 500_000_000,
        ..small()
    };
    let e = contained(limits, r#"{"flood": 2000}"#);
    assert!(
        matches!(e, CallError::OutputTooLarge { limit, .. } if limit == 1 << 20),
        "{e}"
    );
}

#[test]
fn the_wall_clock_backstop_stops_what_fuel_would_allow() {
    let limits = Limits {
        fuel_per_call: u64::MAX / 8,
        backstop_ms: 100,
        ..small()
    };
    let e = contained(limits, r#""spin""#);
    assert_eq!(e, CallError::Backstop { after_ms: 100 });
}

#[test]
fn a_refusal_after_a_change_is_journaled_and_replays() {
    // Rules that change state and then refuse are buggy, but deterministic:
    // the journal keeps the call, and a replay reproduces it.
    let mut s = session(small());
    let snapshot = s.snapshot().unwrap().encode();
    let (reply, entry) = s
        .call(
            baton_runtime::Call::Act {
                player: "p".into(),
                action: r#"{"scribble": 5}"#.into(),
                client_action_id: None,
            },
            9,
        )
        .unwrap();
    assert!(matches!(reply, baton_runtime::Reply::Outcome(Err(_))));
    let mut replayed = Session::restore(misbehave(), small(), &snapshot).unwrap();
    replayed.replay(&entry).unwrap();
    assert_eq!(replayed.state_digest().unwrap(), s.state_digest().unwrap());
}

#[test]
fn failures_between_checkpoints_roll_back_through_the_journal() {
    let mut s = session(small());
    s.checkpoint().unwrap();
    for i in 0..20 {
        s.act("p", &format!(r#"{{"add": {i}}}"#), 10 + i)
            .unwrap()
            .unwrap();
    }
    assert_eq!(s.since_checkpoint().len(), 20);
    let before = s.state_digest().unwrap();
    assert!(s.act("p", r#""panic""#, 40).is_err());
    assert_eq!(s.state_digest().unwrap(), before);
    assert_eq!(s.since_checkpoint().len(), 20);
}

#[test]
fn a_digest_right_after_a_capture_uses_its_hashes_and_equals_a_full_pass() {
    let mut s = session(small());
    let image = s.snapshot().unwrap();
    // No call since the capture: the digest comes from its page hashes.
    let after_capture = s.state_digest().unwrap();
    // A restored copy has never been captured: its digest reads memory.
    let mut restored =
        Session::restore_image(misbehave(), small(), std::sync::Arc::new(image)).unwrap();
    assert_eq!(restored.state_digest().unwrap(), after_capture);
    // A contained failure after the capture leaves the same bytes.
    s.act("p", r#""panic""#, 3).expect_err("the call traps");
    assert_eq!(s.state_digest().unwrap(), after_capture);
    // A call after the capture is seen.
    s.act("p", r#"{"add": 1}"#, 4).unwrap().unwrap();
    restored.act("p", r#"{"add": 1}"#, 4).unwrap().unwrap();
    let moved = s.state_digest().unwrap();
    assert_ne!(moved, after_capture);
    assert_eq!(moved, restored.state_digest().unwrap());
    // And so is a capture after that call.
    s.delta().unwrap();
    assert_eq!(s.state_digest().unwrap(), moved);
}
