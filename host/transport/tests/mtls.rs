//! Real QUIC endpoints on loopback with mutual TLS.

use std::time::Duration;

use baton_transport::certs::Authority;
use baton_transport::{Identity, Transport, TransportError};

fn bind(identity: Identity) -> Transport {
    Transport::bind("127.0.0.1:0".parse().expect("addr"), identity).expect("bind")
}

#[tokio::test]
async fn nodes_of_one_ca_connect_and_know_each_other_by_name() {
    let ca = Authority::generate("test cluster").expect("ca");
    let a = bind(ca.identity("node-a").expect("identity"));
    let b = bind(ca.identity("node-b").expect("identity"));
    let b_addr = b.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let peer = b.accept().await.expect("a peer");
        let (mut send, mut recv) = peer.connection.accept_bi().await.expect("stream");
        let hello = recv.read_to_end(64).await.expect("read");
        send.write_all(&hello).await.expect("echo");
        send.finish().expect("finish");
        let _ = peer.connection.closed().await;
        (peer.name, peer.version)
    });
    let peer = a.connect(b_addr, "node-b").await.expect("connect");
    assert_eq!(peer.name, "node-b");
    assert_eq!(peer.version, baton_transport::WIRE_VERSIONS[0]);
    let (mut send, mut recv) = peer.connection.open_bi().await.expect("stream");
    send.write_all(b"hello").await.expect("write");
    send.finish().expect("finish");
    assert_eq!(recv.read_to_end(64).await.expect("read"), b"hello");
    peer.connection.close(0u32.into(), b"done");
    let (name, version) = server.await.expect("server");
    assert_eq!(
        name, "node-a",
        "the server knows the client by its certificate"
    );
    assert_eq!(version, baton_transport::WIRE_VERSIONS[0]);
}

#[tokio::test]
async fn a_node_one_wire_version_behind_connects_and_one_with_none_in_common_does_not() {
    let ca = Authority::generate("test cluster").expect("ca");
    let new = bind(ca.identity("node-new").expect("identity"));
    let new_addr = new.local_addr().expect("addr");
    let (versions, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let server = tokio::spawn(async move {
        while let Some(peer) = new.accept().await {
            let _ = versions.send(peer.version);
        }
    });
    // The previous release offers only the previous version.
    let previous = baton_transport::WIRE_VERSIONS[1];
    let old = bind(
        ca.identity("node-old")
            .expect("identity")
            .with_wire_versions(&[previous]),
    );
    let peer = old.connect(new_addr, "node-new").await.expect("connect");
    assert_eq!(peer.version, previous);
    assert_eq!(
        baton_transport::wire_version_number(&peer.version),
        baton_transport::wire_version_number(baton_transport::WIRE_VERSIONS[0]) - 1
    );
    assert_eq!(accepted.recv().await.as_deref(), Some(previous));
    // A host whose versions are all unknown here is refused at the handshake.
    let far = bind(
        ca.identity("node-far")
            .expect("identity")
            .with_wire_versions(&["baton/99"]),
    );
    let refused = far.connect(new_addr, "node-new").await;
    assert!(
        refused.is_err(),
        "a peer with no common wire version connected"
    );
    server.abort();
}

#[tokio::test]
async fn a_node_of_another_ca_can_neither_join_nor_send_anything() {
    let ca = Authority::generate("test cluster").expect("ca");
    let stranger_ca = Authority::generate("someone else").expect("ca");
    let b = bind(ca.identity("node-b").expect("identity"));
    let b_addr = b.local_addr().expect("addr");
    // Its own view trusts our CA, but its certificate is from another one.
    let issued = stranger_ca.issue("node-x").expect("issue");
    let stranger = Identity::from_pem(
        "node-x",
        &issued.cert_pem,
        &issued.key_pem,
        &ca.files().cert_pem,
    )
    .expect("identity");
    let x = bind(stranger);
    let accepted = tokio::spawn(async move { b.accept().await.map(|p| p.name) });
    let result = x.connect(b_addr, "node-b").await;
    // With TLS 1.3 the client may finish its side before the server rejects
    // its certificate; then its first stream fails. Either way nothing it
    // sends reaches the node.
    if let Ok(peer) = result {
        let opened = async {
            let (mut send, mut recv) = peer.connection.open_bi().await?;
            send.write_all(b"let me in").await?;
            send.finish()?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(recv.read_to_end(64).await?)
        };
        assert!(
            opened.await.is_err(),
            "a stream through a refused handshake"
        );
    }
    let outcome = tokio::time::timeout(Duration::from_millis(1500), accepted).await;
    assert!(
        outcome.is_err(),
        "the node accepted a peer from another CA: {outcome:?}"
    );
}

#[tokio::test]
async fn a_peer_with_another_nodes_name_is_refused() {
    let ca = Authority::generate("test cluster").expect("ca");
    let a = bind(ca.identity("node-a").expect("identity"));
    let b = bind(ca.identity("node-b").expect("identity"));
    let b_addr = b.local_addr().expect("addr");
    tokio::spawn(async move { b.accept().await });
    let error = a
        .connect(b_addr, "node-c")
        .await
        .expect_err("node-b is not node-c");
    assert!(matches!(error, TransportError::Connection(_)), "{error}");
}

#[tokio::test]
async fn an_identity_reloads_without_a_restart() {
    let ca = Authority::generate("old ca").expect("ca");
    let new_ca = Authority::generate("new ca").expect("ca");
    let a = bind(ca.identity("node-a").expect("identity"));
    let b = bind(ca.identity("node-b").expect("identity"));
    let b_addr = b.local_addr().expect("addr");
    let b = std::sync::Arc::new(b);
    let acceptor = {
        let b = b.clone();
        tokio::spawn(async move {
            // Connections close when their last handle goes: keep them.
            let mut peers = Vec::new();
            while let Some(peer) = b.accept().await {
                peers.push(peer);
                if peers.len() == 2 {
                    break;
                }
            }
            peers.into_iter().map(|p| p.name).collect::<Vec<_>>()
        })
    };
    let first = a
        .connect(b_addr, "node-b")
        .await
        .expect("connect before the rotation");
    // Rotate both to the new CA, in place.
    b.reload(new_ca.identity("node-b").expect("identity"))
        .expect("reload b");
    let old_a = a.connect(b_addr, "node-b").await;
    assert!(
        old_a.is_err(),
        "node-b still trusts the old CA after reloading"
    );
    a.reload(new_ca.identity("node-a").expect("identity"))
        .expect("reload a");
    let second = a
        .connect(b_addr, "node-b")
        .await
        .expect("connect after the rotation");
    assert_eq!(second.name, "node-b");
    assert!(
        first.connection.close_reason().is_none(),
        "open connections keep going"
    );
    let names = tokio::time::timeout(Duration::from_secs(5), acceptor)
        .await
        .expect("accepted")
        .expect("task");
    assert_eq!(names, vec!["node-a", "node-a"]);
}

#[test]
fn identities_refuse_wrong_names_and_mismatched_keys() {
    let ca = Authority::generate("test cluster").expect("ca");
    let a = ca.issue("node-a").expect("issue");
    let b = ca.issue("node-b").expect("issue");
    let error = Identity::from_pem("node-b", &a.cert_pem, &a.key_pem, &ca.files().cert_pem)
        .expect_err("name");
    assert!(
        error.to_string().contains("not for node `node-b`"),
        "{error}"
    );
    let error = Identity::from_pem("node-a", &a.cert_pem, &b.key_pem, &ca.files().cert_pem)
        .expect_err("key");
    assert!(
        error.to_string().contains("TLS") || error.to_string().contains("key"),
        "{error}"
    );
    let error = ca.issue("Node_A").expect_err("bad name");
    assert!(
        error.to_string().contains("not a valid node name"),
        "{error}"
    );
    // A CA written out and loaded back issues certificates that still verify.
    let files = ca.files().clone();
    let reloaded = Authority::load(&files.cert_pem, &files.key_pem).expect("load");
    let c = reloaded.issue("node-c").expect("issue");
    Identity::from_pem("node-c", &c.cert_pem, &c.key_pem, &files.cert_pem)
        .expect("a certificate from the reloaded CA");
}

#[tokio::test]
async fn a_seed_address_is_dialed_without_knowing_its_name() {
    let ca = Authority::generate("test cluster").expect("ca");
    let stranger_ca = Authority::generate("someone else").expect("ca");
    let a = bind(ca.identity("node-a").expect("identity"));
    let b = bind(ca.identity("node-b").expect("identity"));
    let b_addr = b.local_addr().expect("addr");
    let server = tokio::spawn(async move {
        let peer = b.accept().await.expect("peer");
        let name = peer.name.clone();
        let _ = peer.connection.closed().await;
        name
    });
    let peer = a.dial(b_addr).await.expect("dial");
    assert_eq!(peer.name, "node-b", "named by its certificate");
    peer.connection.close(0u32.into(), b"done");
    assert_eq!(server.await.expect("server"), "node-a");
    // A server from another CA is not taken for a cluster node.
    let issued = stranger_ca.issue("node-x").expect("issue");
    let x = bind(
        Identity::from_pem(
            "node-x",
            &issued.cert_pem,
            &issued.key_pem,
            &stranger_ca.files().cert_pem,
        )
        .expect("identity"),
    );
    let x_addr = x.local_addr().expect("addr");
    tokio::spawn(async move { x.accept().await });
    assert!(a.dial(x_addr).await.is_err(), "dialed a node of another CA");
}
