//! Seeded simulations of whole clusters under faults, checked after every step.

use baton_cluster::sim::{Sim, SimConfig};

fn run(seed: u64) -> baton_cluster::sim::Report {
    Sim::random(seed, SimConfig::default(), 4, 8, 6_000, 5_000)
}

/// Mixed versions, as in a rolling deploy: the nodes started first speak
/// the previous wire version (their promotions take the next epoch, so a
/// handoff to or from them waits for the handover's acknowledgement).
fn run_mixed(seed: u64) -> baton_cluster::sim::Report {
    let config = SimConfig {
        older_wire_below: 2,
        ..SimConfig::default()
    };
    Sim::random(seed, config, 4, 8, 6_000, 5_000)
}

/// `BATON_SIM_SEEDS`, or `default`.
fn seed_count(default: u64) -> u64 {
    std::env::var("BATON_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Fails with the first few `(seed, violation)` pairs, if any.
fn assert_none_failing(failing: &[(u64, String)], rerun: &str) {
    assert!(
        failing.is_empty(),
        "{} failing seeds (rerun one with {rerun}): {:#?}",
        failing.len(),
        &failing[..failing.len().min(10)]
    );
}

/// `BATON_SIM_SEED=<n>` reruns one seed and prints its log.
#[test]
fn one_seed_from_the_environment() {
    let Some(seed) = std::env::var("BATON_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let mixed = std::env::var_os("BATON_SIM_MIXED").is_some();
    let report = if mixed { run_mixed(seed) } else { run(seed) };
    for line in &report.log {
        println!("{line}");
    }
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn many_seeds_keep_every_guarantee() {
    let seeds = seed_count(1000);
    let (mut applied, mut acked, mut moves) = (0, 0, 0);
    let mut failing = Vec::new();
    let mut stranded = Vec::new();
    for seed in 0..seeds {
        let report = run(seed);
        applied += report.applied;
        acked += report.acked;
        moves += report.moves;
        if !report.violations.is_empty() {
            failing.push((seed, report.violations[0].clone()));
        }
        if !report.stranded.is_empty() {
            stranded.push(seed);
        }
    }
    println!(
        "{seeds} seeds: {applied} actions applied, {acked} acknowledged, {moves} ownership moves; \
         seeds where a session lost both its holders (the one-replica limit): {stranded:?}"
    );
    // The limit needs a node to drain away or crash for good while its
    // session's other holder is down: rare, and rarer it must stay.
    assert!(
        stranded.len() as u64 * 200 <= seeds.max(200),
        "too many seeds lost both holders of a session: {stranded:?}"
    );
    assert_none_failing(&failing, "BATON_SIM_SEED=<seed>");
}

/// Seed 19195 of a 20,000-seed run: an owner crashes in the middle of
/// replacing its replica; the operator then evicts both the old replica
/// and the learner, and the owner's next boot, holding every entry its
/// previous one acknowledged, must take the session back (it waited for
/// the evicted learner forever).
#[test]
fn a_restarted_owner_whose_replica_and_learner_were_evicted_takes_its_session_back() {
    let report = run(19195);
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
}

#[test]
fn many_seeds_of_mixed_versions_keep_every_guarantee() {
    // A quarter as many as the other test runs (300 by default).
    let seeds = seed_count(1200) / 4;
    let failing: Vec<(u64, String)> = (0..seeds)
        .filter_map(|seed| {
            let report = run_mixed(seed);
            report.violations.first().map(|v| (seed, v.clone()))
        })
        .collect();
    assert_none_failing(&failing, "BATON_SIM_MIXED=1 BATON_SIM_SEED=<seed>");
}

/// The checker bites: with the lease and epoch checks switched off, the
/// same simulation finds a double owner (a paused owner resuming after its
/// replica took over, and applying again).
#[test]
fn without_fencing_the_checker_finds_a_double_owner() {
    let mut config = SimConfig::default();
    config.node.unsafe_ignore_fencing = true;
    let found = (0..300).find_map(|seed| {
        let report = Sim::random(seed, config.clone(), 4, 8, 6_000, 5_000);
        report
            .violations
            .iter()
            .find(|v| v.contains("two owners") || v.contains("after epoch"))
            .map(|v| (seed, v.clone()))
    });
    let (seed, violation) = found.expect("no double owner found with fencing disabled");
    println!("seed {seed}: {violation}");
}
