//! Cluster scenarios, written as text (see `Sim::scenario` for the
//! statements). Each runs under the default lossy network of `SimConfig`,
//! with the checker's guarantees asserted after every step and the
//! expectations at the end.

use std::collections::BTreeSet;

use baton_cluster::node::NewSession;
use baton_cluster::sim::{Disk, Sim, SimConfig};
use baton_cluster::{ClusterNode, Config, Message, NodeId};

fn run(name: &str, text: &str) {
    for seed in 0..5 {
        let report = Sim::scenario(seed, SimConfig::default(), text)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(
            report.violations.is_empty(),
            "{name}, seed {seed}: {:#?}\n{}",
            report.violations,
            report.log.join("\n")
        );
        assert!(report.acked > 0, "{name}: no action was ever acknowledged");
    }
}

#[test]
fn rolling_replacement_of_every_node() {
    run(
        "rolling replacement",
        "
        nodes a b c
        sessions 12
        # each node in turn: a new-version node joins, then the old one drains
        at 1000 start a2 version 2
        at 1000 drain a
        at 3500 start b2 version 2
        at 3500 drain b
        at 6000 start c2 version 2
        at 6000 drain c
        run 10000
        expect gone a b c
        expect owned-by a2 b2 c2
        expect owned
        expect moves >= 12
        ",
    );
}

#[test]
fn a_drain_moves_a_few_sessions_at_a_time_and_hands_off_all() {
    run(
        "bounded drain",
        "
        config max_moves=2
        nodes a b
        sessions 16
        at 1000 start c version 2
        at 1000 drain a
        run 6000
        expect gone a
        expect handed-off a
        expect owned
        expect moves >= 6
        ",
    );
}

#[test]
fn crash_of_an_owner() {
    run(
        "owner crash",
        "
        nodes a b c
        sessions 9
        at 1500 crash a restart-after 3000
        run 8000
        expect owned
        expect moves >= 1
        ",
    );
}

#[test]
fn crash_of_a_target_mid_handoff() {
    run(
        "target crash mid-handoff",
        "
        nodes a b c d
        sessions 12
        at 1000 start e version 2
        at 1000 drain a
        # as soon as a picks its first target, that target dies (and restarts)
        at 1010 crash-handoff-target a
        run 9000
        expect gone a
        expect owned
        ",
    );
}

#[test]
fn drain_deadline_expiring() {
    run(
        "drain deadline",
        "
        config drain_deadline_ms=400
        nodes a b c d
        sessions 12
        # a is cut off from everyone, so it can hand nothing off: it exits at
        # its deadline; the sessions it owned fail over to their replicas,
        # and those it replicated get a new replica once the operator
        # declares it gone (until then their owners keep their journal but
        # cannot acknowledge)
        at 1000 partition a
        at 1000 drain a
        at 2500 heal
        at 3500 evict-gone
        run 8000
        expect gone a
        expect owned
        expect owns-nothing a
        ",
    );
}

#[test]
fn two_nodes_drained_at_once() {
    run(
        "two drains at once",
        "
        nodes a b c d
        sessions 12
        at 1000 start e version 2
        at 1000 start f version 2
        at 1200 drain a
        at 1200 drain b
        run 8000
        expect gone a b
        expect owned-by c d e f
        expect owned
        ",
    );
}

#[test]
fn a_paused_owner_resuming_after_promotion() {
    run(
        "paused owner",
        "
        nodes a b c
        sessions 9
        # frozen well past its lease: its replicas take over; when it wakes
        # it must apply and acknowledge nothing for the sessions that moved
        at 1500 pause a 3000
        run 8000
        expect owned
        expect owns-nothing a
        expect moves >= 1
        ",
    );
}

#[test]
fn a_scenario_with_a_typo_says_where() {
    let error = Sim::scenario(
        0,
        SimConfig::default(),
        "nodes a b\nat 10 explode a\nrun 100",
    )
    .expect_err("an unknown command");
    assert!(error.contains("line 2"), "{error}");
    assert!(error.contains("explode"), "{error}");
}

#[test]
fn a_module_published_on_one_node_is_listed_by_all() {
    let mut cluster = Cluster::new(&[1, 1, 1], baton_cluster::node::WIRE);
    (0..3).for_each(|i| cluster.start(i));
    let nodes = &mut cluster.nodes;
    nodes[0]
        .publish_module("minotaur@1.0.0", "ab12", 1, 0)
        .expect("publish");
    assert!(
        nodes[0]
            .publish_module("minotaur@1.0.0", "ff00", 1, 0)
            .is_err(),
        "other bytes under the same id"
    );
    // Deliver everything, in rounds, until quiet.
    for now in (0..2_000).step_by(50) {
        cluster.round(now, |_, _, _| false);
    }
    let nodes = &cluster.nodes;
    for node in nodes {
        assert_eq!(
            node.modules(),
            vec![("minotaur@1.0.0".to_owned(), "ab12".to_owned())]
        );
    }
}

#[test]
fn full_cluster_restart_after_a_crash_of_every_node() {
    run(
        "full restart after crashes",
        "
        nodes a b c
        sessions 12
        # every node dies at once (power cut) and comes back under its name
        at 1500 crash a restart-after 1000
        at 1500 crash b restart-after 1200
        at 1500 crash c restart-after 800
        run 9000
        expect owned
        expect owned-by a b c
        ",
    );
}

#[test]
fn full_cluster_restart_after_every_node_drained_at_once() {
    run(
        "full restart after drains",
        "
        config drain_deadline_ms=400
        nodes a b c
        sessions 12
        # every node told to stop at once: none is ready to take a session,
        # so each exits at its drain deadline; then all start again
        at 1500 drain a
        at 1500 drain b
        at 1500 drain c
        at 3000 restart a
        at 3000 restart b
        at 3000 restart c
        run 10000
        expect owned
        expect owned-by a b c
        ",
    );
}

#[test]
fn a_replica_restarted_from_its_store_takes_over_from_an_owner_gone_for_good() {
    run(
        "replica restarts while its owner is lost",
        "
        nodes a b c d
        sessions 16
        # a's machine is lost for good while b reboots: b must know from its
        # store alone which sessions it holds completely, and promote itself
        at 1500 crash a
        at 1500 crash b restart-after 400
        at 3500 evict-gone
        run 9000
        expect owned
        expect owned-by b c d
        ",
    );
}

#[test]
fn copies_that_lag_do_not_multiply_the_journal_messages() {
    // Slow disks (acks wait for writes) and players acting all the time:
    // the replica's and the handoff target's acks trail the journal, and
    // each ack must not resend what is still in flight (that doubled the
    // messages every round trip, and took seconds of a cutover).
    for seed in 0..3 {
        let report = Sim::scenario(
            seed,
            SimConfig::default(),
            "
            config max_write_ms=30 actions_per_step=1
            nodes a b
            sessions 2
            at 1000 start c version 2
            at 1000 drain a
            run 3000
            expect gone a
            expect owned
            ",
        )
        .expect("scenario");
        assert!(report.violations.is_empty(), "{:#?}", report.violations);
        // Each action goes once to the replica, and once to a handoff's
        // target while one is under way; renewals add a few per session.
        let bound = 2 * report.applied + 200;
        assert!(
            report.replicates <= bound,
            "seed {seed}: {} journal messages for {} actions (bound {bound})",
            report.replicates,
            report.applied
        );
    }
}

/// Nodes driven by hand, in rounds of 10 ms: every running node ticks,
/// then everything sent is delivered to the running nodes, unless the
/// test drops it.
struct Cluster {
    nodes: Vec<ClusterNode>,
    running: Vec<bool>,
    disks: Vec<Disk>,
    versions: Vec<u32>,
    wire: u32,
}

/// A message sent in a round: from, to, what, and whether it went at once.
type Sent = (NodeId, NodeId, Message, bool);

/// The index of node `name` (`n3` → 3).
fn index(name: &str) -> usize {
    name[1..].parse().expect("a node name")
}

impl Cluster {
    /// Nodes n0, n1, … of the host versions given, all speaking wire
    /// `wire`, none running yet.
    fn new(versions: &[u32], wire: u32) -> Cluster {
        let mut cluster = Cluster {
            nodes: Vec::new(),
            running: vec![false; versions.len()],
            disks: versions.iter().map(|_| Disk::default()).collect(),
            versions: versions.to_vec(),
            wire,
        };
        cluster.nodes = (0..versions.len()).map(|i| cluster.boot(i, 0, 0)).collect();
        cluster
    }

    /// Boot `boot` of node `i` at `now`, from its disk.
    fn boot(&self, i: usize, boot: u64, now: u64) -> ClusterNode {
        let config = Config {
            wire: self.wire,
            ..Config::default()
        };
        let id = NodeId {
            name: format!("n{i}"),
            boot: ((i as u64) << 8) | boot,
        };
        ClusterNode::new(id, config, self.versions[i], 100, self.disks[i].load(), now)
    }

    /// Node `i` restarts at `now` from its disk, as a new boot.
    fn restart(&mut self, i: usize, now: u64) {
        let boot = (self.nodes[i].id().boot & 0xff) + 1;
        self.nodes[i] = self.boot(i, boot, now);
        self.start(i);
    }

    /// Starts node `i`: it and the running nodes learn of each other.
    fn start(&mut self, i: usize) {
        self.running[i] = true;
        let running: Vec<NodeId> = self.running_ids();
        for (node, _) in self
            .nodes
            .iter_mut()
            .zip(&self.running)
            .filter(|(_, r)| **r)
        {
            for id in &running {
                node.add_peer(id.clone());
                node.peer_wire(&id.name, self.wire);
            }
        }
    }

    /// Node `i`'s process is gone for good.
    fn stop(&mut self, i: usize) {
        self.running[i] = false;
    }

    /// n0 creates session `s`; returns the index of its replica.
    fn create_s(&mut self, now: u64) -> usize {
        let record = self.nodes[0]
            .create_here("s", NewSession::default(), now)
            .expect("create");
        index(&record.replica)
    }

    fn running_ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .zip(&self.running)
            .filter(|(_, r)| **r)
            .map(|(n, _)| n.id().clone())
            .collect()
    }

    /// One round at `now`; returns what was sent, dropped or not.
    fn round(&mut self, now: u64, drop: impl Fn(&NodeId, &NodeId, &Message) -> bool) -> Vec<Sent> {
        let mut sent = Vec::new();
        let running = self
            .nodes
            .iter_mut()
            .zip(&mut self.disks)
            .zip(&self.running);
        for ((node, disk), _) in running.filter(|(_, r)| **r) {
            node.tick(now);
            // Written before anything is sent, as a host does.
            disk.write(node.take_changes());
            let from = node.id().clone();
            let transmit = node.poll_transmit();
            let at_once = transmit.at_once.into_iter().map(|m| (m, true));
            for ((to, message), first) in
                at_once.chain(transmit.ordered.into_iter().map(|m| (m, false)))
            {
                sent.push((from.clone(), to, message, first));
            }
        }
        for (from, to, message, _) in &sent {
            if drop(from, to, message) {
                continue;
            }
            if let Some((node, _)) = self
                .nodes
                .iter_mut()
                .zip(&self.running)
                .find(|(n, r)| **r && n.id() == to)
            {
                node.handle(from.clone(), message.clone(), now);
            }
        }
        sent
    }
}

/// Where in a drain's handoff each step happened: the round (10 ms of
/// ticks and one delivery of everything sent) of the owner's first
/// learner copy to the target, first handover and first transfer, of the
/// replica's acknowledgement of the handover, and the messages the target
/// sent at once on owning.
struct HandoffRounds {
    learner_copy: usize,
    handover: usize,
    handover_ack: Option<usize>,
    transfer: usize,
    at_once: Vec<(NodeId, Message)>,
}

/// n0 owns a session replicated on n1, and applies a few actions; n2, of a
/// newer host version, joins and n0 drains. Every node speaks wire `wire`.
fn handoff_rounds(wire: u32) -> HandoffRounds {
    let mut cluster = Cluster::new(&[1, 1, 2], wire);
    cluster.start(0);
    cluster.start(1);
    let mut rounds = HandoffRounds {
        learner_copy: 0,
        handover: 0,
        handover_ack: None,
        transfer: 0,
        at_once: Vec::new(),
    };
    for round in 0..400 {
        let now = round as u64 * 10;
        match round {
            30 => {
                cluster.nodes[0]
                    .create_here("s", NewSession::default(), now)
                    .expect("create");
            }
            100 => cluster.start(2),
            150..160 => cluster.nodes[0].act("s", vec![round as u8], now),
            200 => cluster.nodes[0].drain(now),
            _ => {}
        }
        let sent = cluster.round(now, |_, _, _| false);
        if rounds.at_once.is_empty() {
            rounds.at_once = sent
                .iter()
                .filter(|(from, _, _, at_once)| from.name == "n2" && *at_once)
                .map(|(_, to, message, _)| (to.clone(), message.clone()))
                .collect();
        }
        for (from, to, message, _) in sent {
            match (&message, from.name.as_str()) {
                (Message::Replicate { replica: false, .. }, "n0")
                    if to.name == "n2" && rounds.learner_copy == 0 =>
                {
                    rounds.learner_copy = round;
                }
                (Message::Handover { .. }, "n0") if rounds.handover == 0 => {
                    rounds.handover = round;
                }
                (Message::Transfer { .. }, "n0") if rounds.transfer == 0 => {
                    rounds.transfer = round;
                }
                (Message::HandoverAck { .. }, "n1") if rounds.handover_ack.is_none() => {
                    rounds.handover_ack = Some(round);
                }
                _ => {}
            }
        }
    }
    assert!(
        cluster.nodes[2].owned().iter().any(|(s, _)| s == "s"),
        "n2 never took the session over"
    );
    rounds
}

#[test]
fn the_transfer_goes_with_the_copy_and_the_handover_and_the_new_owner_asks_for_a_lease_at_once() {
    let rounds = handoff_rounds(baton_cluster::node::WIRE);
    assert!(rounds.transfer > 0, "no transfer");
    assert_eq!(
        rounds.transfer, rounds.handover,
        "the transfer should go out with the handover"
    );
    // A quiet moment (the replica holds every entry, the target was sent
    // them all): the transfer follows the learner copy on the same ordered
    // stream at once, instead of waiting a round trip for the target's ack.
    assert_eq!(
        rounds.transfer, rounds.learner_copy,
        "the transfer should go out with the learner copy"
    );
    // Owning, the target asks its replica (n1) for its first lease at once,
    // ahead of its own write of the transfer.
    assert!(
        matches!(
            rounds.at_once.as_slice(),
            [(to, Message::Replicate { epoch: 2, replica: true, .. })] if to.name == "n1"
        ),
        "{:?}",
        rounds.at_once
    );
    // Between nodes of wire 2 it waits for the replica's acknowledgement.
    let older = handoff_rounds(2);
    let acked = older.handover_ack.expect("the replica acknowledged");
    assert!(
        older.transfer > acked && acked >= older.handover,
        "wire 2: handover in round {}, its ack in {acked}, transfer in {}",
        older.handover,
        older.transfer
    );
}

/// n0 owns s, replicated on one of n1 and n2, and acknowledges actions;
/// then it is lost for good. Its replica (`promoted`) promotes itself,
/// naming the other (`never_called`) its replica; that boot's journal
/// messages to it never arrive. Runs until the promotion; n3, of a newer
/// version, is not started.
struct NeverCalled {
    cluster: Cluster,
    acked: Vec<Vec<u8>>,
    promoted: usize,
    never_called: usize,
    /// The first round after the promotion.
    round: u64,
}

impl NeverCalled {
    fn new() -> NeverCalled {
        let mut cluster = Cluster::new(&[1, 1, 1, 2], baton_cluster::node::WIRE);
        (0..3).for_each(|i| cluster.start(i));
        let mut acked = Vec::new();
        let mut roles = (0, 0);
        for round in 0.. {
            let now = round * 10;
            match round {
                30 => {
                    let promoted = cluster.create_s(now);
                    roles = (promoted, 3 - promoted);
                }
                40..100 => cluster.nodes[0].act("s", vec![round as u8], now),
                100 => {
                    acked = cluster.nodes[0]
                        .poll_events()
                        .into_iter()
                        .filter_map(|e| match e {
                            baton_cluster::Event::Acked { action, .. } => Some(action),
                            _ => None,
                        })
                        .collect();
                    cluster.stop(0);
                }
                _ => {}
            }
            let mut test = NeverCalled {
                cluster,
                acked,
                promoted: roles.0,
                never_called: roles.1,
                round,
            };
            test.round(now);
            if round > 100 && test.owns(test.promoted) {
                test.round += 1;
                return test;
            }
            assert!(round < 1_000, "no promotion");
            (cluster, acked) = (test.cluster, test.acked);
        }
        unreachable!()
    }

    /// One round, the promoted node's first boot cut off from its replica.
    fn round(&mut self, now: u64) {
        let first_boot = self.cluster.nodes[self.promoted].id().boot & 0xff == 0;
        let (cut_from, cut_to) = (
            format!("n{}", self.promoted),
            format!("n{}", self.never_called),
        );
        self.cluster.round(now, |from, to, message| {
            first_boot
                && from.name == cut_from
                && to.name == cut_to
                && matches!(message, Message::Replicate { .. })
        });
    }

    fn owns(&self, i: usize) -> bool {
        self.cluster.running[i] && self.cluster.nodes[i].owned().iter().any(|(s, _)| s == "s")
    }

    /// The replica never called owns the session, with every acknowledged
    /// action.
    fn assert_taken_over(&self) {
        assert!(
            self.acked.len() >= 50,
            "only {} actions acknowledged",
            self.acked.len()
        );
        let owner = &self.cluster.nodes[self.never_called];
        assert!(
            self.owns(self.never_called),
            "the replica never took over: {}",
            owner.describe("s")
        );
        let journal: Vec<Vec<u8>> = owner
            .journal("s")
            .unwrap_or_default()
            .iter()
            .map(|e| e.action.clone())
            .collect();
        assert!(
            journal.starts_with(&self.acked),
            "the new owner lost acknowledged actions: {journal:?} vs {:?}",
            self.acked
        );
    }
}

#[test]
fn a_replica_never_called_takes_over_from_a_handoff_targets_copy() {
    // The promoted owner drains to n3 (a learner copy of the whole journal,
    // but no transfer: the replica never acknowledged) and is lost too.
    // Only n3's copy holds what n0 acknowledged.
    let mut test = NeverCalled::new();
    let promoted = test.promoted;
    test.cluster.start(3);
    for round in test.round..test.round + 500 {
        let now = round * 10;
        if round == test.round + 20 {
            // n3's heartbeats say it is ready by now.
            test.cluster.nodes[promoted].drain(now);
        }
        let learned = test.cluster.nodes[3].journal("s").map_or(0, <[_]>::len);
        if test.cluster.running[promoted] && learned >= test.acked.len() {
            test.cluster.stop(promoted);
        }
        test.round(now);
    }
    assert!(
        !test.cluster.running[promoted],
        "no learner copy reached n3"
    );
    test.assert_taken_over();
}

#[test]
fn a_restarted_owner_drains_only_once_its_journal_was_taken_over() {
    // The promoted owner restarts and is drained at once (n3 replacing
    // it): it owns nothing now, but its store holds the only copy of what
    // n0 acknowledged. It must not finish draining before the replica took
    // that copy over.
    let mut test = NeverCalled::new();
    let promoted = test.promoted;
    let now = test.round * 10;
    test.cluster.start(3);
    test.cluster.restart(promoted, now);
    test.cluster.nodes[promoted].drain(now);
    for round in test.round..test.round + 500 {
        let now = round * 10;
        if test.cluster.running[promoted] && test.cluster.nodes[promoted].drained() {
            test.cluster.stop(promoted);
        }
        test.round(now);
    }
    assert!(!test.cluster.running[promoted], "the drain never finished");
    test.assert_taken_over();
}

#[test]
fn a_draining_replica_offers_a_session_to_one_node_only() {
    // n0 owns s and is lost for good; its replica drains, so it passes the
    // session on: a learner copy, then a transfer. The target takes it and
    // picks a replica, but the two are cut off from the others from then
    // on: the draining replica hears neither the acknowledgement nor the
    // records. Offered to a second node, the session would have two owners,
    // each acknowledging what the other never saw.
    let mut cluster = Cluster::new(&[1, 1, 1, 2, 2], baton_cluster::node::WIRE);
    (0..5).for_each(|i| cluster.start(i));
    let mut replica = 0;
    let mut cut_off: BTreeSet<String> = BTreeSet::new();
    let mut offers = BTreeSet::new();
    for round in 0..800u64 {
        let now = round * 10;
        match round {
            30 => replica = cluster.create_s(now),
            40..100 => cluster.nodes[0].act("s", vec![round as u8], now),
            100 => {
                cluster.stop(0);
                cluster.nodes[replica].drain(now);
            }
            _ => {}
        }
        if cut_off.is_empty() {
            let new_owner = cluster.nodes[1..]
                .iter()
                .find(|n| n.owned().iter().any(|(s, _)| s == "s"));
            if let Some(owner) = new_owner {
                let record = owner.record("s").expect("a record");
                cut_off = BTreeSet::from([owner.id().name.clone(), record.replica.clone()]);
            }
        }
        let sent = cluster.round(now, |from, to, message| {
            cut_off.contains(&from.name) != cut_off.contains(&to.name)
                || (to.name == format!("n{replica}")
                    && matches!(message, Message::TransferAck { .. }))
        });
        for (from, to, message, _) in sent {
            if from.name == format!("n{replica}") && matches!(message, Message::Transfer { .. }) {
                offers.insert(to.name);
            }
        }
    }
    assert_eq!(offers.len(), 1, "the session was offered to {offers:?}");
    let owners: Vec<&NodeId> = cluster
        .nodes
        .iter()
        .zip(&cluster.running)
        .filter(|(n, running)| **running && n.owned().iter().any(|(s, _)| s == "s"))
        .map(|(n, _)| n.id())
        .collect();
    assert_eq!(owners.len(), 1, "owners: {owners:?}");
}

#[test]
fn a_replica_change_whose_learner_went_away_returns_to_the_old_replica() {
    // n0 owns s; its replica drains, so n0 copies s to a learner and
    // releases the old replica. Then the learner and n0 drain too, before
    // the learner is named, and the old replica is back (a new boot) by
    // the time it lets go: n0 calls it again instead of keeping no
    // replica, so that its drain can hand s off (a transfer needs the
    // replica to hold every entry).
    let mut cluster = Cluster::new(&[1, 1, 1, 1, 1], baton_cluster::node::WIRE);
    (0..5).for_each(|i| cluster.start(i));
    let (mut replica, mut learner) = (0, None::<usize>);
    let mut swapped_at = None;
    let mut acked = 0;
    for round in 0..900u64 {
        let now = round * 10;
        match round {
            30 => replica = cluster.create_s(now),
            40..100 => cluster.nodes[0].act("s", vec![round as u8], now),
            100 => cluster.nodes[replica].drain(now),
            _ => {}
        }
        acked += cluster.nodes[0]
            .poll_events()
            .iter()
            .filter(|e| matches!(e, baton_cluster::Event::Acked { .. }))
            .count();
        let replica_name = format!("n{replica}");
        // Held until n0 has heard that the learner drains.
        let hold = swapped_at.is_none_or(|at| round < at + 10);
        let sent = cluster.round(now, |_, to, message| {
            hold && to.name == replica_name && matches!(message, Message::Release { .. })
        });
        for (from, to, message, _) in &sent {
            match message {
                Message::Replicate { replica: false, .. }
                    if from.name == "n0" && learner.is_none() =>
                {
                    learner = Some(index(&to.name));
                }
                Message::Release { .. } if swapped_at.is_none() && from.name == "n0" => {
                    // The learner drains, n0 too; the old replica comes back.
                    cluster.nodes[learner.expect("a learner")].drain(now);
                    cluster.nodes[0].drain(now);
                    cluster.restart(replica, now);
                    swapped_at = Some(round);
                }
                _ => {}
            }
        }
    }
    assert!(swapped_at.is_some(), "no replica change");
    assert!(acked >= 50, "only {acked} actions acknowledged");
    assert!(
        cluster.nodes[0].drained(),
        "n0's drain never finished: {}",
        cluster.nodes[0].describe("s")
    );
    let owner = cluster.nodes[1..]
        .iter()
        .find(|n| n.owned().iter().any(|(s, _)| s == "s"));
    assert!(owner.is_some(), "nobody took s over");
}

#[test]
fn a_transfer_counts_only_a_copy_of_the_senders_epoch() {
    // n2 keeps a learner copy from epoch 1 as long as the journal that
    // epoch 3's owner transfers, but different; that owner's own copy to
    // n2 was lost. The transfer must not make n2 the owner of the wrong
    // history; once the copy of epoch 3 arrived, it does.
    use baton_cluster::node::{JournalEntry, SessionRecord};
    let id = |i: u64| NodeId {
        name: format!("n{i}"),
        boot: i,
    };
    let mut target = ClusterNode::new(id(2), Config::default(), 2, 100, Default::default(), 0);
    let entries = |epoch: u64| -> Vec<JournalEntry> {
        (0..5u8)
            .map(|i| JournalEntry {
                epoch,
                action: vec![epoch as u8, i],
            })
            .collect()
    };
    let copy = |epoch: u64| Message::Replicate {
        session: "s".into(),
        epoch,
        from: 0,
        entries: entries(epoch),
        len: 5,
        replica: false,
        sent_at: 0,
    };
    let transfer = Message::Transfer {
        session: "s".into(),
        epoch: 4,
        len: 5,
        replica: "n1".into(),
        record: SessionRecord {
            owner: id(3),
            epoch: 3,
            replica: "n1".into(),
            module: String::new(),
            module_hash: String::new(),
            meta: Vec::new(),
            format: 1,
            snapshot_seq: 0,
        },
    };
    target.handle(id(0), copy(1), 10);
    target.handle(id(3), transfer.clone(), 20);
    assert!(target.owned().is_empty(), "took over an older epoch's copy");
    target.handle(id(3), copy(3), 30);
    target.handle(id(3), transfer, 40);
    assert_eq!(target.owned(), vec![("s".to_owned(), 4)]);
    assert_eq!(target.journal("s"), Some(&entries(3)[..]));
}
