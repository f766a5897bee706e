//! The built components meet Baton's contract.

use baton_games::{ALL, MINOTAUR};
use baton_module::{GAME_INTERFACE, check_component};

#[test]
fn minotaur_is_one_core_module_exporting_the_game_and_importing_nothing() {
    let report = check_component(MINOTAUR.bytes).expect("minotaur passes the check");
    assert!(
        report.imports.is_empty(),
        "component imports: {:?}",
        report.imports
    );
    assert!(
        report.core_imports.is_empty(),
        "core imports: {:?}",
        report.core_imports
    );
    assert_eq!(report.core_modules, 1);
    assert_eq!(report.nested_core_modules, 0);
    assert_eq!(report.exports, [GAME_INTERFACE]);
    assert!(report.forbidden.is_empty(), "{:?}", report.forbidden);

    let [memory] = report.memories.as_slice() else {
        panic!("one memory expected, got {:?}", report.memories);
    };
    assert!(!memory.shared && !memory.memory64);
    // Rust's default 1 MiB stack would make this 17 pages.
    assert!(
        memory.min_pages <= 4,
        "minotaur starts at {} pages",
        memory.min_pages
    );
    // The stack pointer, at least; the whole mutable state is memory + these.
    assert!(report.mutable_globals >= 1);
}

#[test]
fn every_game_and_fixture_passes_the_check() {
    for component in ALL {
        let report = check_component(component.bytes)
            .unwrap_or_else(|e| panic!("{} fails the check: {e}", component.name));
        assert_eq!(report.core_modules, 1, "{}", component.name);
        let on_disk = std::fs::read(component.path).expect("the component file exists");
        assert_eq!(on_disk, component.bytes, "{}", component.name);
    }
}

#[test]
fn the_exported_interface_is_the_one_in_wit() {
    let mut resolve = wit_parser::Resolve::default();
    let wit = concat!(env!("CARGO_MANIFEST_DIR"), "/../../wit");
    let (package, _) = resolve.push_dir(wit).expect("wit/ parses");
    let package = &resolve.packages[package];
    let world = package.worlds.get("rules").expect("the `rules` world");
    let exports: Vec<String> = resolve.worlds[*world]
        .exports
        .keys()
        .map(|key| resolve.name_world_key(key))
        .collect();
    assert_eq!(exports, [GAME_INTERFACE]);
    assert!(
        resolve.worlds[*world].imports.is_empty(),
        "the world imports nothing"
    );
}
