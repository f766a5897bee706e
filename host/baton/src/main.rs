//! `baton`: the node host and its command-line tool.
#![warn(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};

/// Baton runs live game sessions as sandboxed Wasm instances that survive deploys.
#[derive(Debug, Parser)]
#[command(name = "baton", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build, inspect and check rule modules.
    #[command(subcommand)]
    Module(ModuleCommand),
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
        /// Cargo's target directory [default: cargo's].
        #[arg(long)]
        target_dir: Option<PathBuf>,
    },
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
            target_dir,
        }) => build(&path, out, package, target_dir),
        Command::Module(ModuleCommand::Inspect { file, json }) => inspect(&file, json),
    }
}

fn build(
    path: &Path,
    out: Option<PathBuf>,
    package: Option<String>,
    target_dir: Option<PathBuf>,
) -> anyhow::Result<()> {
    let manifest = if path.is_dir() {
        path.join("Cargo.toml")
    } else {
        path.to_owned()
    };
    if !manifest.is_file() {
        bail!("{} is not a crate: no Cargo.toml there", path.display());
    }
    let build = baton_module::Build {
        packages: package.into_iter().collect(),
        target_dir,
        ..baton_module::Build::new(&manifest)
    };
    eprintln!(
        "building {} for {} ...",
        manifest.display(),
        baton_module::TARGET
    );
    let built = build.run()?;
    let [module] = built.as_slice() else {
        bail!(
            "{} built {} rule modules; choose one with --package",
            manifest.display(),
            built.len()
        );
    };
    let out =
        out.unwrap_or_else(|| PathBuf::from(format!("{}.wasm", module.package.replace('_', "-"))));
    std::fs::write(&out, &module.component)
        .with_context(|| format!("could not write {}", out.display()))?;
    let pages: Vec<String> = module
        .report
        .memories
        .iter()
        .map(|m| m.min_pages.to_string())
        .collect();
    eprintln!(
        "built {} ({} KiB; memory starts at {} pages of 64 KiB; imports nothing; one core module)",
        out.display(),
        module.component.len().div_ceil(1024),
        pages.join("+"),
    );
    Ok(())
}

fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(file).with_context(|| format!("could not read {}", file.display()))?;
    let report = baton_module::inspect(&bytes)?;
    let verdict = baton_module::check(&report);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}: {} bytes", file.display(), report.size);
        println!("  exports:       {}", list(&report.exports));
        println!("  imports:       {}", list(&report.imports));
        println!("  core modules:  {}", report.core_modules);
        println!("  core imports:  {}", list(&report.core_imports));
        for m in &report.memories {
            println!(
                "  memory:        {} pages at start, max {:?}",
                m.min_pages, m.max_pages
            );
        }
        println!("  mut. globals:  {}", report.mutable_globals);
    }
    verdict.with_context(|| format!("{} cannot run on Baton", file.display()))?;
    if !json {
        println!("  ok: Baton can run it");
    }
    Ok(())
}

fn list(items: &[String]) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(", ")
    }
}
