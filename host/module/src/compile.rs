//! From a game's crate to a checked component: cargo, then wit-component.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::check::{CheckError, Report, check_component};

/// The Rust target rule modules are built for: no imports, one core module.
pub const TARGET: &str = "wasm32-unknown-unknown";

/// Guest stack size in bytes. Rust's default (1 MiB) would make every
/// session's memory start at 17 pages; 64 KiB keeps it at a few.
pub const STACK_SIZE: u32 = 64 * 1024;

/// What to build: one or more library packages of a cargo workspace.
#[derive(Clone, Debug)]
pub struct Build {
    /// The `Cargo.toml` of the game's crate or of its workspace.
    pub manifest_path: PathBuf,
    /// Packages to build; empty means the manifest's own package.
    pub packages: Vec<String>,
    /// Cargo features to turn on (`--features`).
    pub features: Vec<String>,
    /// Where cargo puts its output; cargo's default if `None`.
    pub target_dir: Option<PathBuf>,
    /// Guest stack size in bytes.
    pub stack_size: u32,
    /// Pass `--locked` to cargo.
    pub locked: bool,
    /// Silence cargo's progress output.
    pub quiet: bool,
}

/// One built rule module.
#[derive(Clone, Debug)]
pub struct Built {
    /// The package it was built from.
    pub package: String,
    /// The component's bytes.
    pub component: Vec<u8>,
    /// Its structure, already checked.
    pub report: Report,
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// The Wasm target's standard library is missing.
    #[error(
        "the Rust target `{TARGET}` is not installed: run `rustup target add {TARGET}` \
         (the project's scripts/setup does this)"
    )]
    MissingTarget,
    /// cargo could not be started.
    #[error("could not run cargo: {0}")]
    Cargo(#[source] std::io::Error),
    /// cargo reported an error.
    #[error("cargo failed to build {manifest} for {TARGET} (its errors are above)")]
    CargoFailed {
        /// The manifest being built.
        manifest: String,
    },
    /// cargo built no `.wasm` for a package.
    #[error(
        "cargo built no Wasm library for `{package}`: its Cargo.toml needs \
         `crate-type = [\"cdylib\", \"rlib\"]` under `[lib]`"
    )]
    NoArtifact {
        /// The package.
        package: String,
    },
    /// Reading the built core module failed.
    #[error("could not read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// wit-component could not encode the component.
    #[error("could not encode `{package}` as a component: {reason}")]
    Encode {
        /// The package.
        package: String,
        /// wit-component's explanation.
        reason: String,
    },
    /// The component does not meet Baton's contract.
    #[error("`{package}` is not a valid Baton rule module: {source}")]
    Check {
        /// The package.
        package: String,
        /// What is wrong.
        #[source]
        source: CheckError,
    },
}

impl Build {
    /// Builds the package whose `Cargo.toml` is `manifest_path`.
    pub fn new(manifest_path: impl Into<PathBuf>) -> Self {
        Build {
            manifest_path: manifest_path.into(),
            packages: Vec::new(),
            features: Vec::new(),
            target_dir: None,
            stack_size: STACK_SIZE,
            locked: false,
            quiet: false,
        }
    }

    /// Runs cargo, encodes each package's core module as a component and
    /// checks it.
    pub fn run(&self) -> Result<Vec<Built>, BuildError> {
        check_target_installed()?;
        let mut cargo = self.cargo_command();
        let mut child = cargo.spawn().map_err(BuildError::Cargo)?;
        let Some(stdout) = child.stdout.take() else {
            return Err(BuildError::Cargo(std::io::Error::other(
                "cargo's output was not captured",
            )));
        };
        let mut artifacts = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.map_err(BuildError::Cargo)?;
            if let Some(artifact) = wasm_artifact(&line) {
                artifacts.push(artifact);
            }
        }
        let status = child.wait().map_err(BuildError::Cargo)?;
        if !status.success() {
            return Err(BuildError::CargoFailed {
                manifest: self.manifest_path.display().to_string(),
            });
        }
        let wanted = if self.packages.is_empty() {
            artifacts.iter().map(|(p, _)| p.clone()).collect()
        } else {
            self.packages.clone()
        };
        wanted
            .into_iter()
            .map(|package| {
                let path = artifacts
                    .iter()
                    .find(|(p, _)| p.replace('-', "_") == package.replace('-', "_"))
                    .map(|(_, path)| path.clone())
                    .ok_or_else(|| BuildError::NoArtifact {
                        package: package.clone(),
                    })?;
                let core = std::fs::read(&path).map_err(|source| BuildError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                let component = componentize(&package, &core)?;
                let report = check_component(&component).map_err(|source| BuildError::Check {
                    package: package.clone(),
                    source,
                })?;
                Ok(Built {
                    package,
                    component,
                    report,
                })
            })
            .collect()
    }

    fn cargo_command(&self) -> Command {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.arg("build")
            .arg("--lib")
            .arg("--release")
            .args(["--target", TARGET])
            .arg("--manifest-path")
            .arg(&self.manifest_path)
            .arg("--message-format=json-render-diagnostics")
            // Rules abort on panic (the host turns the trap into an error),
            // and are optimized as one unit: small and fast.
            .args(["--config", "profile.release.panic=\"abort\""])
            .args(["--config", "profile.release.lto=true"])
            .args(["--config", "profile.release.codegen-units=1"])
            .args(["--config", "profile.release.debug=0"]);
        for package in &self.packages {
            cmd.args(["--package", package]);
        }
        if !self.features.is_empty() {
            cmd.args(["--features", &self.features.join(",")]);
        }
        if let Some(dir) = &self.target_dir {
            cmd.arg("--target-dir").arg(dir);
        }
        if self.locked {
            cmd.arg("--locked");
        }
        if self.quiet {
            cmd.arg("--quiet");
        }
        // Our flags replace any the environment carries for the host build,
        // and a cargo started from a build script or clippy must not inherit
        // their wrappers or target settings.
        let link_arg = format!("-Clink-arg=-zstack-size={}", self.stack_size);
        cmd.env("CARGO_ENCODED_RUSTFLAGS", link_arg)
            .env_remove("RUSTFLAGS")
            .env_remove("RUSTC_WORKSPACE_WRAPPER")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_MAKEFLAGS")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd
    }
}

/// Encodes a core module that carries the Baton world's type information
/// (as `wit_bindgen` embeds it) as a component.
pub fn componentize(package: &str, core: &[u8]) -> Result<Vec<u8>, BuildError> {
    let encode = || {
        wit_component::ComponentEncoder::default()
            .validate(true)
            .module(core)?
            .encode()
    };
    encode().map_err(|e| BuildError::Encode {
        package: package.to_owned(),
        reason: format!("{e:#}"),
    })
}

/// `(package, path)` if a cargo JSON message reports a built `.wasm` library.
fn wasm_artifact(line: &str) -> Option<(String, PathBuf)> {
    #[derive(serde::Deserialize)]
    struct Message {
        reason: String,
        target: Option<Target>,
        #[serde(default)]
        filenames: Vec<PathBuf>,
    }
    #[derive(serde::Deserialize)]
    struct Target {
        name: String,
    }
    let message: Message = serde_json::from_str(line).ok()?;
    if message.reason != "compiler-artifact" {
        return None;
    }
    let wasm = message
        .filenames
        .into_iter()
        .find(|f| f.extension().is_some_and(|e| e == "wasm"))?;
    Some((message.target?.name, wasm))
}

fn check_target_installed() -> Result<(), BuildError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let output = Command::new(rustc)
        .args(["--print", "target-libdir", "--target", TARGET])
        .output()
        .map_err(BuildError::Cargo)?;
    let libdir = String::from_utf8_lossy(&output.stdout);
    let libdir = Path::new(libdir.trim());
    let has_core = std::fs::read_dir(libdir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("libcore-"))
        })
        .unwrap_or(false);
    if output.status.success() && has_core {
        Ok(())
    } else {
        Err(BuildError::MissingTarget)
    }
}
