//! Loading refuses what is not a rule module, caches compiled code safely,
//! and the snapshot rewrite keeps its shape.

use baton_runtime::{LoadError, Runtime, RuntimeConfig, RuntimeError};

use crate::support::runtime;

#[test]
fn garbage_and_core_modules_are_refused_with_a_reason() {
    let err = runtime().load(b"\0asm garbage").unwrap_err();
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
    let core = wat::parse_str("(module)").unwrap();
    let err = runtime().load(&core).unwrap_err();
    assert!(err.to_string().contains("not a component"), "{err}");
    let mut damaged = baton_games::MINOTAUR.bytes.to_vec();
    let middle = damaged.len() / 2;
    damaged[middle..middle + 64].fill(0xff);
    assert!(runtime().load(&damaged).is_err());
}

#[test]
fn a_component_that_imports_is_refused() {
    let component = wat::parse_str(
        r#"(component
            (import "wasi:clocks/wall-clock@0.2.0" (instance))
            (core module (memory 1)))"#,
    )
    .unwrap();
    let err = runtime().load(&component).unwrap_err();
    assert!(
        err.to_string()
            .contains("imports wasi:clocks/wall-clock@0.2.0"),
        "{err}"
    );
}

#[test]
fn compiled_modules_are_cached_checked_and_recompiled_when_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let config = RuntimeConfig {
        cache_dir: Some(cache.clone()),
        max_live_instances: 16,
        ..RuntimeConfig::default()
    };
    let rt = Runtime::new(config.clone()).unwrap();
    let first = rt.load(baton_games::CONNECT_FOUR.bytes).unwrap();
    let files: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&cache).unwrap().permissions().mode() & 0o777,
        0o700
    );

    // A second load uses the artifact...
    let again = Runtime::new(config.clone())
        .unwrap()
        .load(baton_games::CONNECT_FOUR.bytes)
        .unwrap();
    assert_eq!(again.hash(), first.hash());

    // ...and a damaged one is never loaded: it is compiled afresh.
    let mut artifact = std::fs::read(&files[0]).unwrap();
    let last = artifact.len() - 100;
    artifact[last] ^= 0xff;
    std::fs::write(&files[0], &artifact).unwrap();
    let repaired = Runtime::new(config)
        .unwrap()
        .load(baton_games::CONNECT_FOUR.bytes)
        .unwrap();
    assert_eq!(repaired.info().name, "connect-four");
    assert_ne!(
        std::fs::read(&files[0]).unwrap(),
        artifact,
        "the artifact was rewritten"
    );
}

#[test]
fn a_cache_directory_others_can_write_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = Runtime::new(RuntimeConfig {
        cache_dir: Some(dir.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .unwrap_err();
    assert!(matches!(err, RuntimeError::CacheDir { .. }), "{err}");
    assert!(err.to_string().contains("chmod 700"), "{err}");
}

#[test]
fn modules_describe_themselves() {
    let m = crate::support::minotaur();
    assert_eq!(m.name_version(), "minotaur@1.0.0");
    assert_eq!(m.info().state_schema, 1);
    assert!(
        m.fresh_memory_bytes() <= 4 * 65536,
        "{} bytes",
        m.fresh_memory_bytes()
    );
}

/// The rewritten component's structure, as text: checked against a golden
/// file so that a change in wit-component, wasm-encoder or our rewrite is
/// seen. Set BATON_BLESS=1 to accept a new shape.
#[test]
fn the_instrumented_component_keeps_its_shape() {
    let (instrumented, layout) =
        baton_runtime::instrument::instrument(baton_games::MINOTAUR.bytes).unwrap();
    let report = baton_module::inspect(&instrumented).unwrap();
    let mut shape = String::new();
    shape.push_str(&format!("core modules: {}\n", report.core_modules));
    shape.push_str(&format!("exports: {}\n", report.exports.join(", ")));
    shape.push_str(&format!(
        "memories: {:?}\n",
        layout.memories.iter().map(|m| m.index).collect::<Vec<_>>()
    ));
    shape.push_str(&format!("mutable globals: {:?}\n", layout.globals));
    // The accessor module, and what the outer component does with it.
    let mut depth = 0;
    let mut modules = 0;
    for payload in wasmparser::Parser::new(0).parse_all(&instrumented) {
        match payload.unwrap() {
            wasmparser::Payload::Version { .. } => depth += 1,
            wasmparser::Payload::End(_) => depth -= 1,
            wasmparser::Payload::ModuleSection { .. } if depth == 1 => modules += 1,
            wasmparser::Payload::ImportSection(imports) if depth == 2 && modules == 2 => {
                for i in imports.into_imports() {
                    let i = i.unwrap();
                    shape.push_str(&format!(
                        "accessor imports {}.{}: {:?}\n",
                        i.module, i.name, i.ty
                    ));
                }
            }
            wasmparser::Payload::ExportSection(exports) if depth == 2 && modules == 2 => {
                for e in exports {
                    let e = e.unwrap();
                    shape.push_str(&format!("accessor exports {} ({:?})\n", e.name, e.kind));
                }
            }
            wasmparser::Payload::ExportSection(exports) if depth == 2 && modules == 1 => {
                for e in exports {
                    let e = e.unwrap();
                    if e.name.starts_with("baton-snapshot:") {
                        shape.push_str(&format!(
                            "guest exports {} ({:?} {})\n",
                            e.name, e.kind, e.index
                        ));
                    }
                }
            }
            wasmparser::Payload::ComponentCanonicalSection(canon) if depth == 1 => {
                for c in canon {
                    if let wasmparser::CanonicalFunction::Lift { options, .. } = c.unwrap() {
                        shape.push_str(&format!("lift with {} options\n", options.len()));
                    }
                }
            }
            _ => {}
        }
    }
    let golden = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/all/golden/minotaur-instrumented.txt"
    );
    if std::env::var_os("BATON_BLESS").is_some() {
        std::fs::write(golden, &shape).unwrap();
    }
    let expected = std::fs::read_to_string(golden).unwrap_or_default();
    assert_eq!(
        shape, expected,
        "the instrumented shape changed; if intended, rerun with BATON_BLESS=1"
    );
}
