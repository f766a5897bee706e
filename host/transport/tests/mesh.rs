//! Meshes on loopback driving the cluster core over QUIC.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baton_cluster::membership::Change;
use baton_cluster::node::{Durable, Event};
use baton_transport::certs::Authority;
use baton_transport::{Identity, Mesh, MeshConfig, Stamped, Unpersisted};
use tokio::sync::broadcast;

fn identity(ca: &Authority, trusted: &Authority, name: &str) -> Identity {
    let issued = ca.issue(name).expect("issue");
    Identity::from_pem(
        name,
        &issued.cert_pem,
        &issued.key_pem,
        &trusted.files().cert_pem,
    )
    .expect("identity")
}

async fn mesh(ca: &Authority, name: &str, seeds: Vec<std::net::SocketAddr>) -> Mesh {
    let config = MeshConfig::new("127.0.0.1:0".parse().expect("addr"), seeds);
    Mesh::start(
        ca.identity(name).expect("identity"),
        config,
        Durable::default(),
        Arc::new(Unpersisted),
    )
    .await
    .expect("start")
}

/// Waits until `done` holds for the events seen so far, or panics after `limit`.
async fn until(
    receivers: &mut [broadcast::Receiver<Stamped>],
    seen: &mut Vec<Event>,
    limit: Duration,
    what: &str,
    mut done: impl FnMut(&[Event]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(seen) {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        for rx in receivers.iter_mut() {
            while let Ok(stamped) = rx.try_recv() {
                seen.push(stamped.event);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_forms_from_one_seed_places_sessions_and_fails_over() {
    let ca = Authority::generate("test cluster").expect("ca");
    let a = mesh(&ca, "node-a", vec![]).await;
    let seed = a.addr();
    let b = mesh(&ca, "node-b", vec![seed]).await;
    let c = mesh(&ca, "node-c", vec![seed]).await;
    let mut receivers = vec![a.events(), b.events(), c.events()];
    let mut seen = Vec::new();

    // Everyone learns everyone, though b and c only knew a's address.
    for (mesh, rx) in [&a, &b, &c].into_iter().zip(receivers.iter_mut()) {
        let mut ups = BTreeSet::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while ups.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "{} sees only {ups:?}",
                mesh.name()
            );
            match tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                Ok(Ok(Stamped {
                    event: Event::Membership(Change::Up(id)),
                    ..
                })) => {
                    ups.insert(id.name);
                }
                Ok(Ok(stamped)) => seen.push(stamped.event),
                _ => {}
            }
        }
    }
    let started = Instant::now();
    // c's membership sees b (learnt from a's hello) before c can place on it.
    let meshes = [&a, &b, &c];
    for i in 0..9 {
        let through = meshes[i % 3];
        let session = format!("s{i}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match through.create(&session, "minotaur@1.0.0").await {
                Ok(_) => break,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "create {session} through {}: {e}",
                        through.name()
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    until(
        &mut receivers,
        &mut seen,
        Duration::from_secs(10),
        "every session started",
        |events| {
            events
                .iter()
                .filter(|e| matches!(e, Event::Started { .. }))
                .count()
                >= 9
        },
    )
    .await;
    println!("9 sessions placed and started in {:?}", started.elapsed());

    // Placed across nodes, and every node agrees where.
    let mut owners = BTreeMap::new();
    for i in 0..9 {
        let session = format!("s{i}");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let records = [
                a.record(&session).await,
                b.record(&session).await,
                c.record(&session).await,
            ];
            if records.iter().all(|r| r.is_some() && *r == records[0]) {
                owners.insert(session, records[0].clone().expect("record").owner.name);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "records of {session} disagree: {records:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let distinct: BTreeSet<&String> = owners.values().collect();
    assert!(distinct.len() >= 2, "all sessions on one node: {owners:?}");

    // Actions through any node reach the owner and are acknowledged once
    // the replica holds them.
    for (n, session) in owners.keys().enumerate() {
        meshes[n % 3].act(session, vec![n as u8]).await;
    }
    until(
        &mut receivers,
        &mut seen,
        Duration::from_secs(10),
        "every action acknowledged",
        |events| {
            events
                .iter()
                .filter(|e| matches!(e, Event::Acked { .. }))
                .count()
                >= 9
        },
    )
    .await;

    // node-a goes away: its sessions move to their replicas, in bounded time.
    let on_a: Vec<String> = owners
        .iter()
        .filter(|(_, o)| *o == "node-a")
        .map(|(s, _)| s.clone())
        .collect();
    let lost_at = Instant::now();
    a.shutdown().await;
    let mut receivers = [b.events(), c.events()];
    let mut after = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for rx in receivers.iter_mut() {
            while let Ok(stamped) = rx.try_recv() {
                after.push(stamped.event);
            }
        }
        let moved = |s: &String| {
            after
                .iter()
                .any(|e| matches!(e, Event::Owner { session, epoch } if session == s && *epoch > 1))
        };
        let waiting: Vec<&String> = on_a.iter().filter(|s| !moved(s)).collect();
        if waiting.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            let mut states = Vec::new();
            for session in &waiting {
                states.push((
                    session.to_string(),
                    b.describe(session).await,
                    c.describe(session).await,
                ));
            }
            panic!(
                "not taken over: {states:#?}\nb owns {:?}, c owns {:?}",
                b.owned().await,
                c.owned().await
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{} sessions of node-a taken over in {:?}",
        on_a.len(),
        lost_at.elapsed()
    );
    // Clients retry until their action is acknowledged (the new owner may
    // still be getting its lease, or a node's records may still name a).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut action = 5000u64;
    loop {
        for rx in receivers.iter_mut() {
            while let Ok(stamped) = rx.try_recv() {
                after.push(stamped.event);
            }
        }
        let acked = |s: &String| {
            after
                .iter()
                .any(|e| matches!(e, Event::Acked { session, .. } if session == s))
        };
        let waiting: Vec<&String> = on_a.iter().filter(|s| !acked(s)).collect();
        if waiting.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no acknowledgement after failover for {waiting:?}"
        );
        for (n, session) in waiting.into_iter().enumerate() {
            action += 1;
            [&b, &c][n % 2]
                .act(session, action.to_le_bytes().to_vec())
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.shutdown().await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_cannot_join() {
    let ca = Authority::generate("test cluster").expect("ca");
    let stranger = Authority::generate("someone else").expect("ca");
    let a = mesh(&ca, "node-a", vec![]).await;
    let b = mesh(&ca, "node-b", vec![a.addr()]).await;
    // Trusts our CA, but its own certificate is from another one.
    let x = Mesh::start(
        identity(&stranger, &ca, "node-x"),
        MeshConfig::new(
            "127.0.0.1:0".parse().expect("addr"),
            vec![a.addr(), b.addr()],
        ),
        Durable::default(),
        Arc::new(Unpersisted),
    )
    .await
    .expect("start");
    let mut receivers = vec![a.events(), b.events()];
    let mut seen = Vec::new();
    until(
        &mut receivers,
        &mut seen,
        Duration::from_secs(10),
        "a and b to meet",
        |events| {
            events
                .iter()
                .any(|e| matches!(e, Event::Membership(Change::Up(id)) if id.name == "node-b"))
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for rx in receivers.iter_mut() {
        while let Ok(stamped) = rx.try_recv() {
            seen.push(stamped.event);
        }
    }
    assert!(
        !seen
            .iter()
            .any(|e| matches!(e, Event::Membership(Change::Up(id)) if id.name == "node-x")),
        "node-x joined"
    );
    let refused = x.create("s", "minotaur@1.0.0").await;
    assert!(
        refused.is_err(),
        "node-x placed a session: it sees the cluster"
    );
    for m in [&a, &b, &x] {
        m.shutdown().await;
    }
}
