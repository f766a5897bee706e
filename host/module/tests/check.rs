//! The checker refuses what would break Baton's snapshots or sandbox, and
//! says why in words that point at the fix.

use baton_module::{
    CheckError, GAME_INTERFACE, Report, check, check_component, componentize, inspect,
};

fn component(wat: &str) -> Vec<u8> {
    wat::parse_str(wat).expect("valid WAT")
}

#[test]
fn a_core_module_is_not_a_component() {
    let core = component("(module)");
    let err = check_component(&core).unwrap_err();
    assert_eq!(err, CheckError::NotAComponent);
    assert!(err.to_string().contains("baton module build"));
}

#[test]
fn garbage_is_invalid() {
    assert!(matches!(
        check_component(b"not wasm at all"),
        Err(CheckError::Invalid(_))
    ));
    // A component header followed by a truncated section.
    let mut bytes = component("(component (core module))");
    bytes.truncate(bytes.len() - 3);
    assert!(matches!(
        check_component(&bytes),
        Err(CheckError::Invalid(_))
    ));
}

#[test]
fn imports_are_refused_and_named() {
    let bytes = component(
        r#"(component
            (import "wasi:random/random@0.2.0" (instance))
            (core module))"#,
    );
    let err = check_component(&bytes).unwrap_err();
    assert_eq!(
        err,
        CheckError::Imports(vec!["wasi:random/random@0.2.0".into()])
    );
    assert!(err.to_string().contains("import nothing"));
}

#[test]
fn a_component_without_the_game_says_to_export_it() {
    let bytes = component("(component (core module (memory 1)))");
    let err = check_component(&bytes).unwrap_err();
    assert!(matches!(err, CheckError::MissingGame(_)));
    assert!(err.to_string().contains("export_game!"), "{err}");
}

#[test]
fn more_than_one_core_module_is_refused() {
    let bytes = component("(component (core module) (core module))");
    assert_eq!(
        check_component(&bytes).unwrap_err(),
        CheckError::CoreModules(2)
    );
}

#[test]
fn instructions_that_hide_state_outside_memory_are_refused() {
    for (body, instruction) in [
        ("(table.set $t (i32.const 0) (ref.null func))", "table.set"),
        (
            "(drop (table.grow $t (ref.null func) (i32.const 1)))",
            "table.grow",
        ),
        ("(data.drop $d)", "data.drop"),
        ("(elem.drop $e)", "elem.drop"),
    ] {
        let wat = format!(
            r#"(component
                (core module
                    (table $t 1 funcref)
                    (memory 1)
                    (data $d "x")
                    (elem $e func $f)
                    (func $f {body})))"#
        );
        let report = as_if_exporting_the_game(&component(&wat));
        let err = check(&report).unwrap_err();
        assert_eq!(
            err,
            CheckError::ForbiddenInstruction {
                instruction,
                function: 0
            }
        );
        assert!(err.to_string().contains("memories and globals"), "{err}");
    }
}

#[test]
fn shared_memories_are_refused() {
    let bytes = component("(component (core module (memory 1 1 shared)))");
    let report = as_if_exporting_the_game(&bytes);
    assert_eq!(check(&report).unwrap_err(), CheckError::Memory("shared"));
}

/// The report of `bytes`, pretending it exports the game, so that a test of
/// a later check need not build a whole rule module in WAT.
fn as_if_exporting_the_game(bytes: &[u8]) -> Report {
    let mut report = inspect(bytes).expect("valid");
    report.exports = vec![GAME_INTERFACE.to_owned()];
    report
}

#[test]
fn a_core_module_without_baton_types_encodes_to_a_component_without_the_game() {
    let core = component(r#"(module (memory (export "memory") 1))"#);
    let bytes = componentize("empty", &core).expect("wit-component encodes an empty world");
    let err = check_component(&bytes).unwrap_err();
    assert!(
        matches!(err, CheckError::MissingGame(ref e) if e.is_empty()),
        "{err}"
    );
}
