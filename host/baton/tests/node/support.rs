//! A real `baton serve` process, and a tiny HTTP client for talking to it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

/// A running node. Killed with SIGKILL when dropped.
pub(crate) struct Node {
    child: Child,
    pub(crate) addr: SocketAddr,
    /// The management address (the same unless `--admin-listen` was given).
    pub(crate) admin_addr: SocketAddr,
    pub(crate) token: String,
}

impl Node {
    /// Starts `baton serve` on port 0 with `data_dir`; waits for its ready line.
    pub(crate) fn start(data_dir: &Path, extra: &[&str]) -> Node {
        let mut child = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("BATON_TEST_LOGS").is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("baton serve starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (addr, admin_addr) = loop {
            let line = lines
                .next()
                .expect("the node prints its ready line")
                .expect("utf-8");
            if let Some(rest) = line.strip_prefix("baton node ready: players http://") {
                let mut words = rest.split_whitespace();
                let players = words
                    .next()
                    .expect("an address")
                    .parse()
                    .expect("a socket address");
                let admin = words
                    .nth(1)
                    .and_then(|a| a.strip_prefix("http://"))
                    .expect("a management address");
                break (players, admin.parse().expect("a socket address"));
            }
        };
        // Keep draining stdout so the node never blocks on it (and show
        // its log with BATON_TEST_LOGS set).
        let show = std::env::var_os("BATON_TEST_LOGS").is_some();
        let port = SocketAddr::port(&addr);
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                if show {
                    eprintln!("[{port}] {line}");
                }
            }
        });
        let token =
            std::fs::read_to_string(data_dir.join("operator-token")).expect("an operator token");
        Node {
            child,
            addr,
            admin_addr,
            token: token.trim().to_owned(),
        }
    }

    /// The process id, for signals.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, no warning.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn terminate(self) -> std::process::ExitStatus {
        self.signal_term();
        self.wait()
    }

    /// SIGTERM, without waiting.
    pub(crate) fn signal_term(&self) {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill runs");
    }

    /// The exit status, once the process exits.
    pub(crate) fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("the node exits")
    }

    pub(crate) fn http(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Value) {
        http(self.addr, method, path, token, body)
    }

    pub(crate) fn admin(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        let body = if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        };
        http(self.admin_addr, method, path, Some(&self.token), &body)
    }

    /// Publishes a rule module built from `games/` (recorded for the whole
    /// cluster, if there is one).
    pub(crate) fn publish(&self, component: &baton_games::Component) {
        let (status, body) = self.http("POST", "/v1/modules", Some(&self.token), component.bytes);
        assert!(
            status == 200 || status == 201,
            "publishing {}: {status} {body}",
            component.name
        );
    }

    /// `baton session replay` of session `id` against this node: the journal
    /// replayed locally must give the node's state.
    pub(crate) fn assert_replay_agrees(&self, id: &str) {
        let out = Command::new(env!("CARGO_BIN_EXE_baton"))
            .args(["session", "replay", id, "--node"])
            .arg(format!("http://{}", self.admin_addr))
            .env("BATON_OPERATOR_TOKEN", &self.token)
            .output()
            .expect("baton runs");
        assert!(
            out.status.success(),
            "replay of {id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Creates a minotaur session for `players` at fixed cells; returns its
    /// id and the players' tokens.
    pub(crate) fn minotaur(&self, players: &[&str]) -> (String, Vec<String>) {
        let positions: Vec<Value> = (0..players.len())
            .map(|i| serde_json::json!({"q": i as i32 - 1, "r": 0}))
            .collect();
        let request = serde_json::json!({
            "module": "minotaur",
            "players": players.iter().map(|p| serde_json::json!({"id": p, "name": p})).collect::<Vec<_>>(),
            "options": {"radius": 4, "hit_points": 99, "max_rounds": 100000, "round_ms": 600000, "positions": positions},
            "seed": 7,
        });
        let (status, created) = self.admin("POST", "/v1/sessions", &request);
        assert_eq!(status, 201, "{created}");
        let id = created["id"].as_str().expect("id").to_owned();
        let tokens = players
            .iter()
            .map(|p| created["tokens"][p].as_str().expect("token").to_owned())
            .collect();
        (id, tokens)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One HTTP/1.1 request; the status and the JSON body (or the text as a
/// JSON string).
pub(crate) fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> (u16, Value) {
    try_http(addr, method, path, token, body).expect("the node answers")
}

pub(crate) fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &[u8],
) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(20)))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(body)?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    let body = serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned()));
    Ok((status, body))
}

/// A player's WebSocket.
pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens a player WebSocket to session `id` through `node`.
pub(crate) async fn connect(node: &Node, id: &str) -> Socket {
    let url = format!("ws://{}/v1/sessions/{id}/play", node.addr);
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connects")
        .0
}

/// Sends one JSON message.
pub(crate) async fn send(socket: &mut Socket, value: Value) {
    use futures_util::SinkExt;
    let text = tokio_tungstenite::tungstenite::Message::Text(value.to_string().into());
    socket.send(text).await.expect("sends");
}
