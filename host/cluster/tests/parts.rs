//! Membership and placement on their own.

use baton_cluster::NodeId;
use baton_cluster::membership::{Change, Membership, NodeInfo};
use baton_cluster::placement;

fn id(name: &str, boot: u64) -> NodeId {
    NodeId {
        name: name.into(),
        boot,
    }
}

fn info(version: u32, ready: bool) -> NodeInfo {
    NodeInfo {
        host_version: version,
        capacity: 100,
        load: 0,
        ready,
    }
}

#[test]
fn a_silent_node_is_down_after_the_detection_time_and_not_before() {
    let mut view = Membership::new(300);
    assert_eq!(
        view.heard(&id("a", 1), info(1, true), 1_000),
        vec![Change::Up(id("a", 1))]
    );
    assert!(view.tick(1_300).is_empty());
    assert_eq!(view.tick(1_301), vec![Change::Down(id("a", 1))]);
    assert_eq!(
        view.heard(&id("a", 1), info(1, true), 2_000),
        vec![Change::Up(id("a", 1))]
    );
}

#[test]
fn a_new_boot_replaces_the_old_one_at_once() {
    let mut view = Membership::new(300);
    view.heard(&id("a", 1), info(1, true), 0);
    let changes = view.heard(&id("a", 2), info(1, true), 10);
    assert_eq!(
        changes,
        vec![Change::Down(id("a", 1)), Change::Up(id("a", 2))]
    );
    assert_eq!(view.by_name("a"), Some(&id("a", 2)));
}

#[test]
fn placement_is_stable_when_nodes_join_and_prefers_the_newest_version() {
    let nodes: Vec<NodeId> = (0..4).map(|i| id(&format!("n{i}"), i)).collect();
    let refs: Vec<&NodeId> = nodes.iter().collect();
    let before: Vec<_> = (0..200)
        .map(|s| placement::place(&format!("s{s}"), &refs).map(|(o, _)| o.clone()))
        .collect();
    // A fifth node joins: a session moves only if the newcomer ranks first
    // for it (about a fifth of them), never between old nodes.
    let newcomer = id("n4", 4);
    let mut more = refs.clone();
    more.push(&newcomer);
    let mut moved = 0;
    for (s, old) in before.iter().enumerate() {
        let new = placement::place(&format!("s{s}"), &more).map(|(o, _)| o.clone());
        if new != *old {
            assert_eq!(new.as_ref(), Some(&newcomer));
            moved += 1;
        }
    }
    assert!(
        (20..=70).contains(&moved),
        "{moved} of 200 would go to the newcomer"
    );

    let infos = [info(1, true), info(2, true), info(2, false), info(1, true)];
    let newest = placement::newest_ready(nodes.iter().zip(infos.iter()));
    assert_eq!(
        newest,
        vec![&nodes[1]],
        "ready nodes of the newest version only"
    );
}
