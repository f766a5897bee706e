//! `baton serve`: one node, configured from defaults, a TOML file,
//! `BATON_*` environment variables and flags (later ones win).

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use baton_node::{Node, NodeConfig};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How `baton serve` is configured. Everything is optional.
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A TOML file with any `NodeConfig` fields (see the operator guide).
    #[arg(long, short, env = "BATON_CONFIG")]
    config: Option<PathBuf>,
    /// Address for players (HTTP + WebSocket) [default: 127.0.0.1:7400].
    #[arg(long, env = "BATON_LISTEN")]
    listen: Option<SocketAddr>,
    /// Separate address for management calls [default: same as --listen].
    #[arg(long, env = "BATON_ADMIN_LISTEN")]
    admin_listen: Option<SocketAddr>,
    /// Data directory: the store and compiled-module cache [default: ./baton-data].
    #[arg(long, env = "BATON_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Bearer token for management calls [default: generated into <data-dir>/operator-token].
    #[arg(long, env = "BATON_OPERATOR_TOKEN", hide_env_values = true)]
    operator_token: Option<String>,
    /// Do not publish the example games at startup.
    #[arg(long)]
    no_example_games: bool,
    /// Log lines as JSON (one object per line) instead of for humans.
    #[arg(long, env = "BATON_LOG_JSON")]
    log_json: bool,
    /// What to log: a level (`error`, `warn`, `info`, `debug`, `trace`) or
    /// per-crate directives, e.g. `baton_node=debug,info`.
    #[arg(long, env = "BATON_LOG", default_value = "info")]
    log: Targets,
    /// Join a cluster, known by this name (the DNS name in its certificate).
    #[arg(long, env = "BATON_NODE_NAME")]
    node_name: Option<String>,
    /// UDP address for the other nodes (QUIC, mutual TLS) [default: 127.0.0.1:7500].
    #[arg(long, env = "BATON_CLUSTER_LISTEN")]
    cluster_listen: Option<SocketAddr>,
    /// A node to dial, `host:port` (repeat, or comma-separate in the
    /// variable); a DNS name may resolve to many nodes.
    #[arg(long = "seed", env = "BATON_SEEDS", value_delimiter = ',')]
    seeds: Vec<String>,
    /// Directory with ca.pem, <node-name>.pem and <node-name>.key, as
    /// `baton certs` writes them [default: ./certs].
    #[arg(long, env = "BATON_CERTS_DIR")]
    certs_dir: Option<PathBuf>,
    /// When an action is acknowledged: `replicated` (also on the replica's
    /// disk) or `local` (on this node's disk) [default: replicated].
    #[arg(long, env = "BATON_REPLICATION", value_parser = ["replicated", "local"])]
    replication: Option<String>,
}

fn config(args: &ServeArgs) -> anyhow::Result<NodeConfig> {
    let mut config = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("could not read {}", path.display()))?;
            toml::from_str(&text)
                .with_context(|| format!("{} is not a valid node configuration", path.display()))?
        }
        None => NodeConfig::default(),
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.admin_listen.is_some() {
        config.admin_listen = args.admin_listen;
    }
    if let Some(dir) = &args.data_dir {
        config.data_dir.clone_from(dir);
    }
    if args.operator_token.is_some() {
        config.operator_token.clone_from(&args.operator_token);
    }
    if args.no_example_games {
        config.example_games = false;
    }
    let clustered = args.node_name.is_some()
        || args.cluster_listen.is_some()
        || !args.seeds.is_empty()
        || args.certs_dir.is_some()
        || args.replication.is_some();
    if clustered {
        let mut cluster = config.cluster.take().unwrap_or_default();
        if let Some(name) = &args.node_name {
            cluster.name.clone_from(name);
        }
        if cluster.name.is_empty() {
            anyhow::bail!(
                "a cluster node needs a name: --node-name (the DNS name in its certificate)"
            );
        }
        if let Some(listen) = args.cluster_listen {
            cluster.listen = listen;
        }
        if !args.seeds.is_empty() {
            cluster.seeds.clone_from(&args.seeds);
        }
        if let Some(dir) = &args.certs_dir {
            cluster.ca = dir.join("ca.pem");
            cluster.cert = dir.join(format!("{}.pem", cluster.name));
            cluster.key = dir.join(format!("{}.key", cluster.name));
        }
        match args.replication.as_deref() {
            Some("local") => cluster.replication = baton_node::Replication::Local,
            Some(_) => cluster.replication = baton_node::Replication::Replicated,
            None => {}
        }
        config.cluster = Some(cluster);
    }
    Ok(config)
}

pub(crate) fn run(args: ServeArgs) -> anyhow::Result<()> {
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_target(false);
    if args.log_json {
        subscriber.json().finish().with(args.log.clone()).init();
    } else {
        subscriber.finish().with(args.log.clone()).init();
    }
    let config = config(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: NodeConfig) -> anyhow::Result<()> {
    let players = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| {
            format!(
                "could not listen on {} (is another node running?)",
                config.listen
            )
        })?;
    let admin = match config.admin_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("could not listen on {addr}"))?,
        ),
        None => None,
    };
    let data_dir = config.data_dir.clone();
    let example_games = config.example_games;
    let operator_token = config.operator_token.clone();
    let node_cluster = config.cluster.clone();
    let opened = tokio::task::spawn_blocking(move || Node::open(config)).await?;
    let node = opened.context("could not open the node")?;
    let mut published = Vec::new();
    if example_games {
        for game in [baton_games::MINOTAUR, baton_games::CONNECT_FOUR] {
            let (module, _) = node
                .publish(game.bytes.to_vec())
                .await
                .with_context(|| format!("could not publish the example game {}", game.name))?;
            published.push(module.id);
        }
    }
    node.join_cluster()
        .await
        .context("could not join the cluster")?;
    let players_addr = players.local_addr()?;
    let admin_addr = match &admin {
        Some(listener) => listener.local_addr()?,
        None => players_addr,
    };
    // The one line scripts and tests wait for.
    println!("baton node ready: players http://{players_addr} management http://{admin_addr}");
    println!("  data: {}", data_dir.display());
    println!(
        "  operator token: in {} (or --operator-token)",
        data_dir.join("operator-token").display()
    );
    if !published.is_empty() {
        println!("  example games: {}", published.join(", "));
    }
    if let Some(cluster) = &node_cluster {
        println!(
            "  cluster: {} on quic://{} ({} mode), seeds: {}",
            cluster.name,
            node.cluster_addr().unwrap_or(cluster.listen),
            match cluster.replication {
                baton_node::Replication::Local => "local",
                baton_node::Replication::Replicated => "replicated",
            },
            if cluster.seeds.is_empty() {
                "none".to_owned()
            } else {
                cluster.seeds.join(", ")
            }
        );
    }
    let token = operator_token.or_else(|| {
        std::fs::read_to_string(data_dir.join("operator-token"))
            .ok()
            .map(|t| t.trim().to_owned())
    });
    println!(
        "  play in a browser: {}",
        lobby_link(token.as_deref(), players_addr, admin.is_none())
    );
    match baton_node::serve(node, players, admin, shutdown_signal()).await? {
        baton_node::Stopped::Clean => {
            tracing::info!("stopped cleanly");
            Ok(())
        }
        baton_node::Stopped::DrainExpired(left) => anyhow::bail!(
            "the drain deadline passed with {left} sessions not handed off; \
             they fail over to their replicas (raise drain_deadline_ms if this recurs)"
        ),
    }
}

/// The lobby's address. On loopback with management on the same address, the
/// link carries the operator token in its fragment (never sent over the
/// network, like a notebook server's login link) so that the page can create
/// games; anywhere else the page asks for the token.
fn lobby_link(token: Option<&str>, players: SocketAddr, management_here: bool) -> String {
    let base = format!("http://{players}/");
    match token {
        Some(token) if management_here && players.ip().is_loopback() => {
            format!("{base}#operator={token}")
        }
        _ => base,
    }
}

/// SIGTERM (a deploy) or SIGINT (Ctrl-C).
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
