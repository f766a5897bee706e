//! `baton module build|inspect`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

pub(crate) fn build(
    path: &Path,
    out: Option<PathBuf>,
    package: Option<String>,
    features: Vec<String>,
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
        features,
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

pub(crate) fn inspect(file: &Path, json: bool) -> anyhow::Result<()> {
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
