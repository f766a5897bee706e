//! `baton session …` and `baton module publish|list`: a node's API from the
//! terminal, and `replay` to reproduce a production session locally.

use std::time::Duration;

use anyhow::{Context, bail};
use baton_runtime::{Call, JournalEntry, Limits, Reply, Runtime, RuntimeConfig, Session};
use serde_json::{Value, json};

use crate::client::Client;

/// Sessions on a node.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SessionCommand {
    /// Create and start a session; prints its id and each player's token.
    Create {
        /// `name@version`, or a game name for its newest version.
        module: String,
        /// A player: `id` or `id:Display Name`. Repeat for each.
        #[arg(long = "player", short, required = true)]
        players: Vec<String>,
        /// Game options as JSON, e.g. '{"radius":3}'.
        #[arg(long)]
        options: Option<String>,
        /// The session's seed [default: random].
        #[arg(long)]
        seed: Option<u64>,
    },
    /// List the node's sessions.
    List,
    /// One session: module, players, position, status, result.
    Show {
        /// The session id.
        id: String,
    },
    /// What a player (with --token) or a spectator sees.
    View {
        /// The session id.
        id: String,
        /// A player's token [default: spectator].
        #[arg(long, env = "BATON_PLAYER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Send one action as a player.
    Act {
        /// The session id.
        id: String,
        /// The action as JSON, e.g. '{"type":"move","dq":1,"dr":0}'.
        action: String,
        /// The player's token.
        #[arg(long, env = "BATON_PLAYER_TOKEN", hide_env_values = true)]
        token: String,
        /// An id for the action: retrying with the same id applies it once.
        #[arg(long)]
        action_id: Option<String>,
    },
    /// Follow a session's events live (one JSON message per line), resuming
    /// by position across reconnects (a deploy, a dropped connection).
    Watch {
        /// The session id.
        id: String,
        /// A player's token [default: spectator].
        #[arg(long, env = "BATON_PLAYER_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Move live sessions to another version of their rules: one session,
    /// or with --from every session of a module on every node (--canary
    /// for a share of them). Each switches between two actions with its
    /// state migrated, or stays on its version with the reason printed; a
    /// new version that fails on trial takes the session back.
    Upgrade {
        /// The session to upgrade (or use --from).
        #[arg(required_unless_present = "from", conflicts_with = "from")]
        id: Option<String>,
        /// The version to move to: `name@version`.
        #[arg(long)]
        to: String,
        /// Every session of this module (`name@version`, or a game name for
        /// all its versions).
        #[arg(long)]
        from: Option<String>,
        /// Upgrade only this share of the sessions --from names, e.g. 0.1:
        /// a stable choice by session id, so a larger share later keeps them.
        #[arg(long, requires = "from")]
        canary: Option<f64>,
        /// When each session switches: `now` (between its next two calls)
        /// or `next-tick` (right after its next tick, e.g. a round's end).
        #[arg(long, default_value = "now", value_parser = ["now", "next-tick"])]
        at: String,
    },
    /// Download a session's snapshot and journal and replay them locally,
    /// step by step: the same rules, the same bytes as on the node.
    Replay {
        /// The session id.
        id: String,
        /// Print every journal entry and what the rules answered.
        #[arg(long)]
        steps: bool,
    },
}

/// Browser links for a created session: one per player (the token rides in
/// the fragment, which browsers never send to a server) and one to watch.
fn play_links(base: &str, created: &Value) -> Value {
    let id = created["id"].as_str().unwrap_or_default();
    let mut links = serde_json::Map::new();
    for (player, token) in created["tokens"].as_object().into_iter().flatten() {
        let token = token.as_str().unwrap_or_default();
        links.insert(
            player.clone(),
            json!(format!("{base}/play#session={id}&token={token}")),
        );
    }
    links.insert(
        "spectator".into(),
        json!(format!("{base}/play#session={id}")),
    );
    Value::Object(links)
}

pub(crate) fn run(client: &Client, command: SessionCommand) -> anyhow::Result<()> {
    match command {
        SessionCommand::Create {
            module,
            players,
            options,
            seed,
        } => {
            let players: Vec<Value> = players
                .iter()
                .map(|p| {
                    let (id, name) = p.split_once(':').unwrap_or((p, p));
                    json!({"id": id, "name": name})
                })
                .collect();
            let options = match options {
                Some(text) => Some(
                    serde_json::from_str::<Value>(&text).context("--options is not valid JSON")?,
                ),
                None => None,
            };
            let request =
                json!({"module": module, "players": players, "options": options, "seed": seed});
            let mut created =
                client.admin("POST", "/v1/sessions", Some(request.to_string().as_bytes()))?;
            created["play"] = play_links(client.base(), &created);
            print_json(&created)
        }
        SessionCommand::List => {
            let sessions = client.admin("GET", "/v1/sessions", None)?;
            let sessions = sessions.as_array().map(Vec::as_slice).unwrap_or_default();
            println!(
                "{:<18} {:<22} {:>8} {:<9} {:<5} {:<12} players",
                "id", "module", "position", "status", "live", "upgrade"
            );
            let mut by_version = std::collections::BTreeMap::<&str, usize>::new();
            for s in sessions {
                let module = s["module"].as_str().unwrap_or("");
                *by_version.entry(module).or_default() += 1;
                println!(
                    "{:<18} {:<22} {:>8} {:<9} {:<5} {:<12} {}",
                    s["id"].as_str().unwrap_or(""),
                    module,
                    s["position"].as_u64().unwrap_or(0),
                    s["status"].as_str().unwrap_or(""),
                    s["live"].as_bool().unwrap_or(false),
                    s["upgrade"]["state"].as_str().unwrap_or("-"),
                    s["players"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect::<Vec<_>>()
                        .join(",")
                );
            }
            let versions: Vec<String> = by_version
                .iter()
                .map(|(module, n)| format!("{n} on {module}"))
                .collect();
            println!("{} sessions: {}", sessions.len(), versions.join(", "));
            Ok(())
        }
        SessionCommand::Upgrade {
            id,
            to,
            from,
            canary,
            at,
        } => upgrade(client, id, to, from, canary, at),
        SessionCommand::Show { id } => {
            print_json(&client.admin("GET", &format!("/v1/sessions/{id}"), None)?)
        }
        SessionCommand::View { id, token } => print_json(&client.call(
            "GET",
            &format!("/v1/sessions/{id}/view"),
            token.as_deref(),
            None,
        )?),
        SessionCommand::Act {
            id,
            action,
            token,
            action_id,
        } => {
            let action: Value =
                serde_json::from_str(&action).context("the action is not valid JSON")?;
            let body = json!({"id": action_id, "action": action});
            let outcome = client.call(
                "POST",
                &format!("/v1/sessions/{id}/actions"),
                Some(&token),
                Some(body.to_string().as_bytes()),
            )?;
            print_json(&outcome)?;
            if outcome["result"] == "rejected" {
                bail!(
                    "the rules refused: {}",
                    outcome["reason"].as_str().unwrap_or("no reason given")
                );
            }
            Ok(())
        }
        SessionCommand::Watch { id, token } => watch(client, &id, token),
        SessionCommand::Replay { id, steps } => replay(client, &id, steps),
    }
}

fn upgrade(
    client: &Client,
    id: Option<String>,
    to: String,
    from: Option<String>,
    canary: Option<f64>,
    at: String,
) -> anyhow::Result<()> {
    let request = json!({"session": id, "from": from, "to": to, "fraction": canary, "at": at});
    let report = client.admin("POST", "/v1/upgrades", Some(request.to_string().as_bytes()))?;
    for s in report["sessions"].as_array().into_iter().flatten() {
        println!(
            "{:<18} {:<10} {:<8} {} -> {to}{}",
            s["session"].as_str().unwrap_or(""),
            s["node"].as_str().unwrap_or(""),
            s["result"].as_str().unwrap_or(""),
            s["from"].as_str().unwrap_or(""),
            s["reason"]
                .as_str()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        );
    }
    println!(
        "{} moved, {} stayed, {} outside the canary",
        report["moved"], report["stayed"], report["skipped"]
    );
    if let Some(nodes) = report["unreachable"].as_array().filter(|n| !n.is_empty()) {
        bail!("some nodes could not be asked, their sessions are not counted: {nodes:?}");
    }
    if report["stayed"].as_u64().unwrap_or(0) > 0 {
        bail!("not every session moved: see the reasons above");
    }
    Ok(())
}

/// Modules on a node.
pub(crate) fn publish(client: &Client, file: &std::path::Path) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
    eprintln!(
        "publishing {} ({} KiB) ...",
        file.display(),
        bytes.len().div_ceil(1024)
    );
    let module = client.admin("POST", "/v1/modules", Some(&bytes))?;
    println!(
        "published {} ({})",
        module["id"].as_str().unwrap_or("?"),
        module["hash"].as_str().unwrap_or("?")
    );
    Ok(())
}

pub(crate) fn list_modules(client: &Client) -> anyhow::Result<()> {
    let modules = client.call("GET", "/v1/modules", None, None)?;
    println!("{:<28} {:>6} {:>8}  hash", "module", "schema", "KiB");
    for m in modules.as_array().into_iter().flatten() {
        println!(
            "{:<28} {:>6} {:>8}  {}",
            m["id"].as_str().unwrap_or(""),
            m["state_schema"].as_u64().unwrap_or(0),
            m["size"].as_u64().unwrap_or(0).div_ceil(1024),
            m["hash"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn unhex(s: &str) -> anyhow::Result<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        bail!("the node sent malformed hex");
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).context("the node sent malformed hex"))
        .collect()
}

fn replay(client: &Client, id: &str, steps: bool) -> anyhow::Result<()> {
    let export = client.admin("GET", &format!("/v1/sessions/{id}/export"), None)?;
    let runtime = Runtime::new(RuntimeConfig {
        max_live_instances: 4,
        ..RuntimeConfig::default()
    })?;
    // Every module the replay runs, by hash: the one it starts on and each
    // one a switch (an upgrade, or the way back) moves to.
    let journal = export["journal"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|e| {
            JournalEntry::decode(&unhex(e["entry"].as_str().unwrap_or_default())?)
                .context("a journal entry is unreadable")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let start = export["module_hash"]
        .as_str()
        .context("the export names no module")?
        .to_owned();
    let mut modules = std::collections::BTreeMap::new();
    let wanted =
        std::iter::once(start.clone()).chain(journal.iter().filter_map(|e| match &e.call {
            Call::Switch(switch) => Some(switch.module_hash().to_hex()),
            _ => None,
        }));
    for hash in wanted {
        if modules.contains_key(&hash) {
            continue;
        }
        let component = client.get_bytes(&format!("/v1/modules/{hash}/component"))?;
        let module = runtime
            .load(&component)
            .with_context(|| format!("loading module {hash}"))?;
        if module.hash().to_hex() != hash {
            bail!("the node served other bytes for module {hash}");
        }
        modules.insert(hash, module);
    }
    let module = modules[&start].clone();
    let module_id = module.name_version();
    let mut session = match export["snapshot"].as_object() {
        Some(snapshot) => {
            let bytes = unhex(snapshot["bytes"].as_str().unwrap_or_default())?;
            eprintln!(
                "replaying {id} ({module_id}): snapshot at {} + {} journal entries",
                snapshot["position"],
                journal.len()
            );
            Session::restore(module, Limits::default(), &bytes)?
        }
        None => {
            eprintln!(
                "replaying {id} ({module_id}): {} journal entries from the start",
                journal.len()
            );
            Session::new(module, Limits::default())?
        }
    };
    for entry in journal {
        let reply = session
            .replay_with(&entry, |hash| modules.get(&hash.to_hex()).cloned())
            .with_context(|| format!("entry {} failed to replay", entry.position))?;
        if steps {
            println!(
                "#{:<6} @{} {} -> {}",
                entry.position,
                entry.now,
                describe(&entry.call),
                summarize(&reply)
            );
        }
    }
    let digest: String = session
        .state_digest()?
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    if Some(digest.as_str()) == export["digest"].as_str() {
        println!(
            "replayed to position {}: state identical to the node's (sha256 {digest})",
            session.position()
        );
        Ok(())
    } else {
        bail!(
            "replayed state differs from the node's: {digest} here, {} there",
            export["digest"]
        )
    }
}

fn describe(call: &Call) -> String {
    match call {
        Call::Act {
            player,
            action,
            client_action_id,
        } => format!(
            "act {player} {action}{}",
            client_action_id
                .as_ref()
                .map(|i| format!(" (id {i})"))
                .unwrap_or_default()
        ),
        Call::Start(setup) => format!("start {} players seed {}", setup.players.len(), setup.seed),
        Call::View(viewer) => format!("view {viewer:?}"),
        other => other.name().to_owned(),
    }
}

fn summarize(reply: &Reply) -> String {
    match reply {
        Reply::Outcome(Ok(o)) | Reply::Ticked(o) => {
            format!("{} events, next tick {:?}", o.events.len(), o.next_tick)
        }
        Reply::Outcome(Err(r)) => format!("refused: {}", r.reason),
        Reply::View(Ok(v)) => format!("{} bytes of view", v.len()),
        Reply::Status(s) => format!("{s:?}"),
        other => format!("{other:?}"),
    }
}

fn watch(client: &Client, id: &str, token: Option<String>) -> anyhow::Result<()> {
    let url = format!(
        "{}/v1/sessions/{id}/play",
        client
            .base()
            .replacen("http://", "ws://", 1)
            .replacen("https://", "wss://", 1)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;
        let mut after: Option<Value> = None;
        let mut failures = 0;
        loop {
            let (mut socket, _) = match tokio_tungstenite::connect_async(url.as_str()).await {
                Ok(connected) => connected,
                Err(e) if failures < 10 => {
                    failures += 1;
                    eprintln!("connecting failed ({e}); retrying");
                    // Backoff between reconnect attempts: the delay is the point.
                    tokio::time::sleep(Duration::from_millis(500 * failures)).await;
                    continue;
                }
                Err(e) => bail!("could not connect to {url}: {e}"),
            };
            let join = json!({"type": "join", "token": token, "after": after});
            socket.send(Message::Text(join.to_string().into())).await?;
            while let Some(message) = socket.next().await {
                match message? {
                    Message::Text(text) => {
                        println!("{text}");
                        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
                        let seq = value["seq"]
                            .as_u64()
                            .or_else(|| value["position"]["seq"].as_u64());
                        if let Some(seq) = seq {
                            after = Some(
                                json!({"epoch": value["epoch"].as_u64().unwrap_or(1), "seq": seq}),
                            );
                            failures = 0;
                        }
                    }
                    Message::Close(frame) => {
                        let (code, reason) = frame
                            .map(|f| (u16::from(f.code), f.reason.to_string()))
                            .unwrap_or((1005, String::new()));
                        eprintln!("closed ({code}): {reason}");
                        match code {
                            1001 | 4408 => break,
                            _ => return Ok(()),
                        }
                    }
                    _ => {}
                }
            }
            eprintln!("reconnecting from {after:?}");
        }
    })
}
