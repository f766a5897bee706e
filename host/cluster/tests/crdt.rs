//! Properties of the delta-state map: join is a semilattice join, and
//! replicas converge whatever the delivery order, duplication and loss,
//! once anti-entropy has run.

use baton_cluster::crdt::{Delta, DeltaMap, Entry, Stamp};
use proptest::prelude::*;

type Map = DeltaMap<u8, u8, u8>;

fn entry() -> impl Strategy<Value = Entry<u8>> {
    (0u64..3, 0u64..3, 0u8..3, proptest::option::of(0u8..4)).prop_map(
        |(epoch, version, node, value)| Entry {
            stamp: Stamp {
                epoch,
                version,
                node: format!("n{node}"),
            },
            value,
        },
    )
}

fn delta() -> impl Strategy<Value = Delta<u8, u8>> {
    proptest::collection::btree_map(0u8..6, entry(), 0..6)
}

fn joined(parts: &[&Delta<u8, u8>]) -> Delta<u8, u8> {
    let mut map = Map::new();
    for part in parts {
        map.join((*part).clone(), 0);
    }
    map.entries()
}

proptest! {
    #[test]
    fn join_is_commutative(a in delta(), b in delta()) {
        prop_assert_eq!(joined(&[&a, &b]), joined(&[&b, &a]));
    }

    #[test]
    fn join_is_associative(a in delta(), b in delta(), c in delta()) {
        let ab = joined(&[&a, &b]);
        let bc = joined(&[&b, &c]);
        prop_assert_eq!(joined(&[&ab, &c]), joined(&[&a, &bc]));
    }

    #[test]
    fn join_is_idempotent(a in delta(), b in delta()) {
        let ab = joined(&[&a, &b]);
        prop_assert_eq!(joined(&[&ab, &ab]), ab.clone());
        prop_assert_eq!(joined(&[&ab, &a]), ab);
    }

    /// Three replicas write concurrently; their deltas are delivered in any
    /// order, some twice, some never; then anti-entropy (each sends each
    /// what it has not acknowledged) makes them equal.
    #[test]
    fn replicas_converge_under_any_delivery(
        ops in proptest::collection::vec((0u8..3, 0u8..6, 0u64..3, proptest::option::of(0u8..4)), 1..40),
        schedule in proptest::collection::vec((0usize..1000, 0u8..3, 0u8..10), 0..80),
    ) {
        let mut replicas: Vec<Map> = (0..3).map(|_| Map::new()).collect();
        for (r, replica) in replicas.iter_mut().enumerate() {
            for peer in 0..3u8 {
                if peer as usize != r {
                    replica.add_peer(peer);
                }
            }
        }
        let mut versions = [0u64; 3];
        let mut in_flight: Vec<(u8, Delta<u8, u8>)> = Vec::new();
        for (r, key, epoch, value) in ops {
            versions[r as usize] += 1;
            let stamp = Stamp { epoch, version: versions[r as usize], node: format!("n{r}") };
            let replica = &mut replicas[r as usize];
            let delta = match value {
                Some(v) => replica.insert(key, v, stamp, 0),
                None => replica.remove(key, stamp, 0),
            };
            for peer in 0..3u8 {
                if peer != r {
                    in_flight.push((peer, delta.clone()));
                }
            }
        }
        // Deliver in a scrambled order: lose some, duplicate some.
        for (pick, _, fate) in &schedule {
            if in_flight.is_empty() {
                break;
            }
            let i = pick % in_flight.len();
            let (to, delta) = in_flight[i].clone();
            match fate {
                0 => { in_flight.remove(i); }
                1 => { replicas[to as usize].join(delta, 0); }
                _ => { replicas[to as usize].join(delta, 0); in_flight.remove(i); }
            }
        }
        // Anti-entropy until quiet.
        for _round in 0..4 {
            for from in 0..3u8 {
                for to in 0..3u8 {
                    if from == to { continue; }
                    if let Some((delta, upto)) = replicas[from as usize].delta_for(&to) {
                        replicas[to as usize].join(delta, 0);
                        replicas[from as usize].ack(&to, upto);
                    }
                }
            }
        }
        prop_assert_eq!(replicas[0].entries(), replicas[1].entries());
        prop_assert_eq!(replicas[1].entries(), replicas[2].entries());
        for from in 0..3u8 {
            for to in 0..3u8 {
                if from != to {
                    prop_assert!(replicas[from as usize].delta_for(&to).is_none(), "still owes a delta after anti-entropy");
                }
            }
        }
    }
}

#[test]
fn a_new_peer_gets_everything_and_acks_stop_resending() {
    let mut a = Map::new();
    let stamp = |version| Stamp {
        epoch: 1,
        version,
        node: "a".into(),
    };
    a.insert(1, 10, stamp(1), 0);
    a.insert(2, 20, stamp(2), 0);
    a.add_peer(9);
    let (full, upto) = a.delta_for(&9).expect("a full sync for a new peer");
    assert_eq!(full.len(), 2);
    a.ack(&9, upto);
    assert!(a.delta_for(&9).is_none());
    a.insert(3, 30, stamp(3), 0);
    let (delta, _) = a.delta_for(&9).expect("only the change");
    assert_eq!(delta.keys().copied().collect::<Vec<_>>(), vec![3]);
}

#[test]
fn tombstones_go_once_every_peer_acknowledged_and_the_ttl_passed() {
    let mut a = Map::new();
    let stamp = |version| Stamp {
        epoch: 1,
        version,
        node: "a".into(),
    };
    a.add_peer(1);
    a.add_peer(2);
    a.insert(7, 1, stamp(1), 0);
    a.remove(7, stamp(2), 100);
    assert_eq!(a.tombstones(), 1);
    assert_eq!(a.gc(10_000, 1_000), 0, "no peer has acknowledged it");
    let (_, upto) = a.delta_for(&1).expect("delta");
    a.ack(&1, upto);
    assert_eq!(a.gc(10_000, 1_000), 0, "peer 2 has not acknowledged it");
    a.ack(&2, upto);
    assert_eq!(a.gc(500, 1_000), 0, "younger than the ttl");
    assert_eq!(a.gc(1_100, 1_000), 1);
    assert_eq!(a.tombstones(), 0);
    // A stale write cannot come back through a peer that saw the removal:
    // every peer acknowledged it before it went.
}

#[test]
fn adds_win_over_removes_with_the_same_stamp_and_higher_epochs_win() {
    let mut a = Map::new();
    let s = |epoch, version, node: &str| Stamp {
        epoch,
        version,
        node: node.into(),
    };
    a.remove(1, s(1, 1, "x"), 0);
    a.insert(1, 5, s(1, 1, "x"), 0);
    assert_eq!(a.get(&1), Some(&5));
    a.insert(1, 6, s(2, 0, "a"), 0);
    a.insert(1, 7, s(1, 9, "z"), 0);
    assert_eq!(
        a.get(&1),
        Some(&6),
        "the higher epoch wins over any version of a lower one"
    );
}
