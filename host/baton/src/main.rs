//! `baton`: the node host and its command-line tool.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod certs_cmd;
mod client;
mod module_cmd;
mod serve;
mod session_cmd;

/// Baton runs live game sessions as sandboxed Wasm instances that survive deploys.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    node: client::NodeArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node: players connect over WebSocket, operators over HTTP.
    Serve(serve::ServeArgs),
    /// Build, inspect, check, publish and list rule modules.
    #[command(subcommand)]
    Module(ModuleCommand),
    /// Create, list, show, view, play, watch and replay sessions on a node.
    #[command(subcommand)]
    Session(session_cmd::SessionCommand),
    /// Create a cluster CA and node certificates (development and tests).
    #[command(subcommand)]
    Certs(certs_cmd::CertsCommand),
    /// See a node's cluster, and evict a node that is gone for good.
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// The node's name and the peers it sees up.
    Status,
    /// Declare a crashed node gone for good, so that the sessions it
    /// replicated get a new replica (in `replicated` mode they cannot
    /// acknowledge actions until then). Refused while the node is up.
    /// Only for a node that will not run again under that name: one that
    /// is only cut off could still take over a session it replicates.
    Evict {
        /// The node's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum ModuleCommand {
    /// Build a game crate into a checked rule component.
    ///
    /// Compiles the crate for wasm32-unknown-unknown with a 64 KiB stack and
    /// panic = "abort", encodes it as a component, and checks that it
    /// exports the Baton world, imports nothing and is one core module.
    Build {
        /// The game's crate: a directory holding Cargo.toml, or the file.
        #[arg(default_value = ".")]
        path: PathBuf,
        /// Where to write the component [default: ./<package>.wasm].
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// The package to build, if the manifest is a workspace.
        #[arg(short, long)]
        package: Option<String>,
        /// Cargo features to turn on (comma-separated, or repeated).
        #[arg(short = 'F', long, value_delimiter = ',')]
        features: Vec<String>,
        /// Cargo's target directory [default: cargo's].
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
    /// Publish a component to a node (idempotent for the same bytes).
    Publish {
        /// The component file.
        file: PathBuf,
    },
    /// List the modules published on a node.
    List,
    /// Show a component's structure and whether Baton can run it.
    Inspect {
        /// The component file.
        file: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Module(ModuleCommand::Build {
            path,
            out,
            package,
            features,
            target_dir,
        }) => module_cmd::build(&path, out, package, features, target_dir),
        Command::Module(ModuleCommand::Inspect { file, json }) => module_cmd::inspect(&file, json),
        Command::Serve(args) => serve::run(args),
        Command::Module(ModuleCommand::Publish { file }) => {
            session_cmd::publish(&client::Client::new(&cli.node), &file)
        }
        Command::Module(ModuleCommand::List) => {
            session_cmd::list_modules(&client::Client::new(&cli.node))
        }
        Command::Session(command) => session_cmd::run(&client::Client::new(&cli.node), command),
        Command::Certs(command) => certs_cmd::run(command),
        Command::Cluster(ClusterCommand::Status) => {
            let status = client::Client::new(&cli.node).admin("GET", "/v1/cluster", None)?;
            println!("{}", serde_json::to_string_pretty(&status)?);
            Ok(())
        }
        Command::Cluster(ClusterCommand::Evict { name }) => {
            let path = format!("/v1/cluster/nodes/{name}/evict");
            client::Client::new(&cli.node).admin("POST", &path, Some(b""))?;
            println!("evicted {name}: the sessions it replicated get new replicas");
            Ok(())
        }
    }
}
