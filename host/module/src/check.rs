//! What a component is made of, and whether Baton can run it.

use serde::Serialize;
use wasmparser::{
    ComponentExternalKind, Operator, Parser, Payload, TypeRef, Validator, WasmFeatures,
};

/// The interface every rule module exports (`wit/rules.wit`).
pub const GAME_INTERFACE: &str = "baton:rules/game@0.1.0";

/// The structure of a component, as far as Baton cares.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Report {
    /// Size in bytes.
    pub size: usize,
    /// Core modules at the component's top level.
    pub core_modules: usize,
    /// Core modules inside nested components (which wit-component uses to
    /// name exported types; they must hold no code).
    pub nested_core_modules: usize,
    /// Components nested inside it.
    pub nested_components: usize,
    /// What the component imports (must be nothing).
    pub imports: Vec<String>,
    /// What it exports.
    pub exports: Vec<String>,
    /// What its core modules import, as `module.name` (must be nothing).
    pub core_imports: Vec<String>,
    /// Its core modules' memories.
    pub memories: Vec<Memory>,
    /// Mutable globals defined by its core modules.
    pub mutable_globals: usize,
    /// Instructions that could put state outside memories and globals, with
    /// the first function that uses each.
    pub forbidden: Vec<Forbidden>,
}

/// One linear memory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Memory {
    /// Initial size in 64 KiB pages.
    pub min_pages: u64,
    /// Maximum size in pages, if declared.
    pub max_pages: Option<u64>,
    /// Shared between threads.
    pub shared: bool,
    /// 64-bit addressed.
    pub memory64: bool,
}

/// A use of an instruction Baton refuses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Forbidden {
    /// The instruction, e.g. `table.set`.
    pub instruction: &'static str,
    /// The index of the first function using it.
    pub function: u32,
}

/// Why a component cannot be a Baton rule module.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// The bytes are not valid Wasm.
    #[error("not a valid Wasm component: {0}")]
    Invalid(String),
    /// A core module where a component was expected.
    #[error(
        "this is a core Wasm module, not a component: build rule modules with \
         `baton module build`, which encodes the component"
    )]
    NotAComponent,
    /// The component imports something.
    #[error(
        "the module imports {}: Baton rule modules import nothing (time, randomness and \
         log lines are passed in and out), so a dependency is reaching for the host \
         (getrandom, wasm-bindgen, std::time, WASI)",
        .0.join(", ")
    )]
    Imports(Vec<String>),
    /// Not exactly one core module.
    #[error(
        "the component holds {0} core modules where Baton needs exactly one: build for \
         wasm32-unknown-unknown (a wasm32-wasip2 build adds WASI adapters)"
    )]
    CoreModules(usize),
    /// Core modules inside nested components.
    #[error(
        "the component nests {0} core modules inside inner components; Baton needs its \
         single core module at the top level"
    )]
    NestedCoreModules(usize),
    /// The Baton world is not exported.
    #[error(
        "the module does not export `{GAME_INTERFACE}` (it exports: {}): call \
         `baton_sdk::export_game!(YourGame)` once in the game's crate",
        if .0.is_empty() { "nothing".to_owned() } else { .0.join(", ") }
    )]
    MissingGame(Vec<String>),
    /// A shared or 64-bit memory.
    #[error("the module declares a {0} memory, which Baton does not run")]
    Memory(&'static str),
    /// An instruction that could put state outside memories and globals.
    #[error(
        "the module uses `{instruction}` (first in function {function}): rule modules may \
         not change tables or drop segments at run time, since a session's state must be \
         exactly its memories and globals"
    )]
    ForbiddenInstruction {
        /// The instruction.
        instruction: &'static str,
        /// Where it is first used.
        function: u32,
    },
}

/// Reads the structure of `bytes`, which must be a valid component.
pub fn inspect(bytes: &[u8]) -> Result<Report, CheckError> {
    if wasmparser::Parser::is_core_wasm(bytes) {
        return Err(CheckError::NotAComponent);
    }
    if !wasmparser::Parser::is_component(bytes) {
        return Err(CheckError::Invalid(
            "the bytes do not start with a Wasm component header".into(),
        ));
    }
    Validator::new_with_features(WasmFeatures::all())
        .validate_all(bytes)
        .map_err(|e| CheckError::Invalid(e.to_string()))?;

    let mut report = Report {
        size: bytes.len(),
        ..Report::default()
    };
    // Depth 1 is the outer component, depth 2 anything directly inside it.
    let mut depth = 0usize;
    let mut in_core_module = false;
    // Function indices count imported functions first, then code entries.
    let mut next_function = 0u32;
    for payload in Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| CheckError::Invalid(e.to_string()))?;
        match payload {
            Payload::Version { encoding, .. } => {
                depth += 1;
                in_core_module = depth == 2 && encoding == wasmparser::Encoding::Module;
                next_function = 0;
            }
            Payload::End(_) => {
                depth = depth.saturating_sub(1);
                in_core_module = false;
            }
            Payload::ModuleSection { .. } if depth == 1 => report.core_modules += 1,
            Payload::ModuleSection { .. } => report.nested_core_modules += 1,
            Payload::ComponentSection { .. } => report.nested_components += 1,
            Payload::ComponentImportSection(imports) if depth == 1 => {
                for import in imports {
                    let import = import.map_err(|e| CheckError::Invalid(e.to_string()))?;
                    report.imports.push(import.name.name.to_owned());
                }
            }
            Payload::ComponentExportSection(exports) if depth == 1 => {
                for export in exports {
                    let export = export.map_err(|e| CheckError::Invalid(e.to_string()))?;
                    if export.kind == ComponentExternalKind::Instance {
                        report.exports.push(export.name.name.to_owned());
                    } else {
                        report.exports.push(format!("{} (func)", export.name.name));
                    }
                }
            }
            Payload::ImportSection(imports) if in_core_module => {
                for import in imports.into_imports() {
                    let import = import.map_err(|e| CheckError::Invalid(e.to_string()))?;
                    report
                        .core_imports
                        .push(format!("{}.{}", import.module, import.name));
                    match import.ty {
                        TypeRef::Memory(m) => report.memories.push(memory(&m)),
                        TypeRef::Func(_) => next_function += 1,
                        _ => {}
                    }
                }
            }
            Payload::MemorySection(memories) if in_core_module => {
                for m in memories {
                    let m = m.map_err(|e| CheckError::Invalid(e.to_string()))?;
                    report.memories.push(memory(&m));
                }
            }
            Payload::GlobalSection(globals) if in_core_module => {
                for g in globals {
                    let g = g.map_err(|e| CheckError::Invalid(e.to_string()))?;
                    report.mutable_globals += usize::from(g.ty.mutable);
                }
            }
            Payload::CodeSectionEntry(body) if in_core_module => {
                scan_body(&body, next_function, &mut report)?;
                next_function += 1;
            }
            _ => {}
        }
    }
    Ok(report)
}

/// Checks that a report describes a module Baton can run.
pub fn check(report: &Report) -> Result<(), CheckError> {
    let mut imports = report.imports.clone();
    imports.extend(report.core_imports.iter().map(|i| format!("`{i}` (core)")));
    if !imports.is_empty() {
        return Err(CheckError::Imports(imports));
    }
    if report.nested_core_modules > 0 {
        return Err(CheckError::NestedCoreModules(report.nested_core_modules));
    }
    if report.core_modules != 1 {
        return Err(CheckError::CoreModules(report.core_modules));
    }
    if !report.exports.iter().any(|e| e == GAME_INTERFACE) {
        return Err(CheckError::MissingGame(report.exports.clone()));
    }
    if let Some(m) = report.memories.iter().find(|m| m.shared || m.memory64) {
        return Err(CheckError::Memory(if m.shared {
            "shared"
        } else {
            "64-bit"
        }));
    }
    if let Some(f) = report.forbidden.first() {
        return Err(CheckError::ForbiddenInstruction {
            instruction: f.instruction,
            function: f.function,
        });
    }
    Ok(())
}

/// [`inspect`], then [`check`]: the report of a module Baton can run.
pub fn check_component(bytes: &[u8]) -> Result<Report, CheckError> {
    let report = inspect(bytes)?;
    check(&report)?;
    Ok(report)
}

fn memory(m: &wasmparser::MemoryType) -> Memory {
    Memory {
        min_pages: m.initial,
        max_pages: m.maximum,
        shared: m.shared,
        memory64: m.memory64,
    }
}

/// Records the instructions in one function body that could put state
/// outside memories and globals.
fn scan_body(
    body: &wasmparser::FunctionBody<'_>,
    function: u32,
    report: &mut Report,
) -> Result<(), CheckError> {
    let mut ops = body
        .get_operators_reader()
        .map_err(|e| CheckError::Invalid(e.to_string()))?;
    while !ops.eof() {
        let op = ops.read().map_err(|e| CheckError::Invalid(e.to_string()))?;
        let instruction = match op {
            Operator::TableSet { .. } => "table.set",
            Operator::TableGrow { .. } => "table.grow",
            Operator::TableFill { .. } => "table.fill",
            Operator::TableCopy { .. } => "table.copy",
            Operator::TableInit { .. } => "table.init",
            Operator::DataDrop { .. } => "data.drop",
            Operator::ElemDrop { .. } => "elem.drop",
            _ => continue,
        };
        if !report
            .forbidden
            .iter()
            .any(|f| f.instruction == instruction)
        {
            report.forbidden.push(Forbidden {
                instruction,
                function,
            });
        }
    }
    Ok(())
}
