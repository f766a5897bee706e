//! Wire benchmark: `cargo bench -p baton-transport --bench wire [-- ITERATIONS]`.
//!
//! Sends a 2 MiB snapshot-sized payload and waits for a one-byte ack, over
//! loopback, the way a handoff streams a snapshot: first over QUIC with
//! mutual TLS (quinn + rustls/ring, a fresh stream per transfer on one
//! connection), then over plain TCP (tokio, one connection) in the same run.
//! Prints round-trip p50/p99 and the CPU time per transfer of this process
//! (both ends run in it).

use std::time::{Duration, Instant};

use baton_transport::Transport;
use baton_transport::certs::Authority;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PAYLOAD: usize = 2 << 20;

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn report(label: &str, mut times: Vec<Duration>, cpu: f64) {
    times.sort_unstable();
    let pct = |q: f64| times[((times.len() as f64 - 1.0) * q) as usize].as_secs_f64() * 1e3;
    println!(
        "  {label:<28} p50 {:>6.2} ms   p99 {:>6.2} ms   CPU {:>6.2} ms per transfer   {:>6.0} MiB/s",
        pct(0.5),
        pct(0.99),
        cpu * 1e3 / times.len() as f64,
        2.0 / (pct(0.5) / 1e3)
    );
}

async fn quic(iterations: usize, payload: &[u8]) -> (Vec<Duration>, f64) {
    let ca = Authority::generate("bench").expect("ca");
    let a = Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        ca.identity("node-a").expect("identity"),
    )
    .expect("bind");
    let b = Transport::bind(
        "127.0.0.1:0".parse().expect("addr"),
        ca.identity("node-b").expect("identity"),
    )
    .expect("bind");
    let addr = b.local_addr().expect("addr");
    tokio::spawn(async move {
        let peer = b.accept().await.expect("peer");
        while let Ok((mut send, mut recv)) = peer.connection.accept_bi().await {
            let _ = recv.read_to_end(PAYLOAD + 16).await;
            let _ = send.write_all(&[1]).await;
            let _ = send.finish();
        }
    });
    let peer = a.connect(addr, "node-b").await.expect("connect");
    let mut times = Vec::with_capacity(iterations);
    let cpu = cpu_seconds();
    for _ in 0..iterations {
        let started = Instant::now();
        let (mut send, mut recv) = peer.connection.open_bi().await.expect("stream");
        send.write_all(payload).await.expect("write");
        send.finish().expect("finish");
        recv.read_to_end(1).await.expect("ack");
        times.push(started.elapsed());
    }
    (times, cpu_seconds() - cpu)
}

async fn tcp(iterations: usize, payload: &[u8]) -> (Vec<Duration>, f64) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.expect("accept");
        let mut buffer = vec![0u8; PAYLOAD];
        while socket.read_exact(&mut buffer).await.is_ok() {
            if socket.write_all(&[1]).await.is_err() {
                return;
            }
        }
    });
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect");
    socket.set_nodelay(true).expect("nodelay");
    let mut ack = [0u8; 1];
    let mut times = Vec::with_capacity(iterations);
    let cpu = cpu_seconds();
    for _ in 0..iterations {
        let started = Instant::now();
        socket.write_all(payload).await.expect("write");
        socket.read_exact(&mut ack).await.expect("ack");
        times.push(started.elapsed());
    }
    (times, cpu_seconds() - cpu)
}

fn main() {
    let iterations: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with("--"))
        .and_then(|a| a.parse().ok())
        .unwrap_or(200);
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| (i * 31 % 251) as u8).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!(
        "wire benchmark: 2 MiB + 1-byte ack over loopback, {iterations} transfers each, both ends in this process"
    );
    let (times, cpu) = runtime.block_on(quic(iterations, &payload));
    report("QUIC + mutual TLS (quinn)", times, cpu);
    let (times, cpu) = runtime.block_on(tcp(iterations, &payload));
    report("plain TCP (tokio)", times, cpu);
}
