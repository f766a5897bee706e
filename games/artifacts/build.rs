//! Builds every game and fixture in `games/` into a component in OUT_DIR,
//! with the same builder as `baton module build`, and writes their paths
//! into `components.rs`.

use std::path::{Path, PathBuf};

/// (package, features, constant) for each module built.
const GAMES: &[(&str, &[&str], &str)] = &[
    ("minotaur", &[], "MINOTAUR"),
    ("connect-four", &[], "CONNECT_FOUR"),
    ("misbehave", &[], "MISBEHAVE"),
    ("minotaur", &["v2"], "MINOTAUR_V2"),
    ("minotaur", &["v2-broken"], "MINOTAUR_V2_BROKEN"),
    ("minotaur", &["v2-trap"], "MINOTAUR_V2_TRAP"),
];

fn main() {
    let manifest_dir = PathBuf::from(env("CARGO_MANIFEST_DIR"));
    let root = manifest_dir.join("../..");
    let out_dir = PathBuf::from(env("OUT_DIR"));
    for watched in [
        "wit",
        "guest-sdk",
        "games/minotaur",
        "games/connect-four",
        "games/misbehave",
        "Cargo.lock",
    ] {
        println!("cargo::rerun-if-changed={}", root.join(watched).display());
    }

    // A separate target directory: the cargo running this script holds the
    // lock on the main one.
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("rules");
    let mut rust = String::new();
    // One cargo run per feature set (one cargo run builds a package once);
    // they share the target directory, so only the game itself rebuilds.
    let mut feature_sets: Vec<&[&str]> = Vec::new();
    for (_, features, _) in GAMES {
        if !feature_sets.contains(features) {
            feature_sets.push(features);
        }
    }
    for features in feature_sets {
        let games: Vec<_> = GAMES.iter().filter(|(_, f, _)| *f == features).collect();
        let build = baton_module::Build {
            packages: games
                .iter()
                .map(|(package, _, _)| (*package).to_owned())
                .collect(),
            features: features.iter().map(|f| (*f).to_owned()).collect(),
            target_dir: Some(target_dir.clone()),
            ..baton_module::Build::new(root.join("Cargo.toml"))
        };
        let built = match build.run() {
            Ok(built) => built,
            Err(e) => {
                println!("cargo::error=building the games in games/ failed: {e}");
                std::process::exit(1);
            }
        };
        for module in &built {
            let (package, _, constant) = games
                .iter()
                .find(|(package, _, _)| *package == module.package)
                .expect("the builder returns the packages it was given");
            let file = match features {
                [] => package.to_string(),
                _ => format!("{package}-{}", features.join("-")),
            };
            let path = out_dir.join(format!("{file}.wasm"));
            write(&path, &module.component);
            rust.push_str(&format!(
                "/// `games/{package}` (features: {features:?}), built into a component.\n\
                 pub const {constant}: Component = Component {{ name: {file:?}, path: {path:?}, bytes: include_bytes!({path:?}) }};\n",
                path = path.display().to_string(),
            ));
        }
    }
    let all: Vec<&str> = GAMES.iter().map(|(_, _, c)| *c).collect();
    rust.push_str(&format!(
        "/// Every module built.\npub const ALL: &[Component] = &[{}];\n",
        all.join(", ")
    ));
    write(&out_dir.join("components.rs"), rust.as_bytes());
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("cargo sets {name} for build scripts"))
}

fn write(path: &Path, bytes: &[u8]) {
    if let Err(e) = std::fs::write(path, bytes) {
        panic!("could not write {}: {e}", path.display());
    }
}
