//! The snapshot accessor: a load-time rewrite of a rule component that lets
//! the host read and write the guest's memories and mutable globals without
//! disturbing it.
//!
//! wasmtime's component API exposes no core memories or globals, so the
//! rewrite (once per module, at load time):
//!
//! 1. re-encodes the guest's core module with extra exports for each memory
//!    and mutable global (exports change no behaviour);
//! 2. appends an *accessor* core module with its own scratch memory, which
//!    imports those and copies between them with multi-memory `memory.copy`;
//! 3. lifts the accessor's functions, with the scratch memory as their
//!    canonical-ABI memory, and exports them as the component instance
//!    [`ACCESSOR_INTERFACE`], which only the host calls.
//!
//! Reading copies nothing and never grows or writes guest memory: the
//! component imports [`VIEW_INTERFACE`]'s `look(data: list<u8>)` from the
//! host, lowered once per guest memory with *that* memory as its
//! canonical-ABI memory, and `view-k(offset, len)` passes it guest memory
//! `k`'s bytes as they stand; the host keeps the lifted list and reads the
//! memory through it. Writes move through scratch memory. Per memory `k`
//! the accessor exports `size-k`, `grow-k`, `view-k`, `write-k` and
//! `write-pages-k`; `get-globals` and `set-globals` move all mutable
//! globals at once, packed in [`Layout`] order.

use std::borrow::Cow;

use wasm_encoder::reencode::Reencode;
use wasm_encoder::{
    Alias, CanonicalFunctionSection, CanonicalOption, CodeSection, ComponentAliasSection,
    ComponentExportKind, ComponentExportSection, ComponentImportSection, ComponentInstanceSection,
    ComponentTypeRef as TypeRef, ComponentTypeSection, ComponentValType, ConstExpr, EntityType,
    ExportKind, ExportSection, Function, FunctionSection, GlobalSection, ImportSection,
    InstanceSection, InstanceType, MemArg, MemorySection, MemoryType, ModuleArg, PrimitiveValType,
    RawSection, TypeSection, ValType,
};
use wasmparser::{
    CanonicalFunction, ComponentAlias, ComponentExternalKind, ComponentOuterAliasKind,
    ComponentTypeRef, ExternalKind, Instance as CoreInstance, Parser, Payload,
};

/// The component interface the accessor is exported as.
pub const ACCESSOR_INTERFACE: &str = "baton:snapshot/accessor@0.1.0";

/// The component interface the accessor imports from the host: its one
/// function, `look(data: list<u8>)`, receives a view of guest memory.
pub const VIEW_INTERFACE: &str = "baton:snapshot/view@0.1.0";

/// Scratch memory layout: the return area, then data.
const DATA_START: i32 = 16;

/// The mutable state of the guest, as the accessor exposes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The guest's memories, by index.
    pub memories: Vec<MemoryLayout>,
    /// The guest's mutable globals, in the order `get-globals` packs them.
    pub globals: Vec<GlobalLayout>,
}

/// One guest memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// Index in the guest module.
    pub index: u32,
    /// Declared initial size, in 64 KiB pages.
    pub min_pages: u64,
    /// Declared maximum, in 64 KiB pages.
    pub max_pages: Option<u64>,
}

/// One mutable guest global, identified by (module, index).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalLayout {
    /// The core module defining it (always 0: rule modules have one).
    pub module: u32,
    /// Index in that module.
    pub index: u32,
    /// Its type.
    pub ty: GlobalKind,
}

/// The value types a mutable global may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GlobalKind {
    /// 32-bit integer.
    I32,
    /// 64-bit integer.
    I64,
    /// 32-bit float, moved as its bits.
    F32,
    /// 64-bit float, moved as its bits.
    F64,
    /// 128-bit vector.
    V128,
}

impl GlobalKind {
    /// Bytes in the packed form.
    pub fn size(self) -> usize {
        match self {
            GlobalKind::I32 | GlobalKind::F32 => 4,
            GlobalKind::I64 | GlobalKind::F64 => 8,
            GlobalKind::V128 => 16,
        }
    }
}

impl Layout {
    /// Bytes of all mutable globals, packed.
    pub fn globals_size(&self) -> usize {
        self.globals.iter().map(|g| g.ty.size()).sum()
    }
}

/// Why a component could not be instrumented.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InstrumentError {
    /// The bytes did not parse.
    #[error("the component could not be parsed: {0}")]
    Parse(String),
    /// Not the single-core-module shape the check admits.
    #[error("the component's structure is not supported: {0}")]
    Unsupported(String),
}

fn parse_err(e: impl std::fmt::Display) -> InstrumentError {
    InstrumentError::Parse(e.to_string())
}

/// Counts of each index space of a component, as sections add to them.
#[derive(Clone, Copy, Debug, Default)]
struct Spaces {
    core_modules: u32,
    core_instances: u32,
    core_funcs: u32,
    core_memories: u32,
    core_globals: u32,
    core_tables: u32,
    core_tags: u32,
    core_types: u32,
    types: u32,
    funcs: u32,
    instances: u32,
    components: u32,
    values: u32,
}

impl Spaces {
    fn add_component_kind(&mut self, kind: ComponentExternalKind) {
        match kind {
            ComponentExternalKind::Module => self.core_modules += 1,
            ComponentExternalKind::Func => self.funcs += 1,
            ComponentExternalKind::Value => self.values += 1,
            ComponentExternalKind::Type => self.types += 1,
            ComponentExternalKind::Instance => self.instances += 1,
            ComponentExternalKind::Component => self.components += 1,
        }
    }

    fn add_core_kind(&mut self, kind: ExternalKind) {
        match kind {
            ExternalKind::Func | ExternalKind::FuncExact => self.core_funcs += 1,
            ExternalKind::Table => self.core_tables += 1,
            ExternalKind::Memory => self.core_memories += 1,
            ExternalKind::Global => self.core_globals += 1,
            ExternalKind::Tag => self.core_tags += 1,
        }
    }
}

/// Adds the accessor to a checked rule component. Returns the rewritten
/// component and the layout of the guest state it exposes.
pub fn instrument(component: &[u8]) -> Result<(Vec<u8>, Layout), InstrumentError> {
    // Pass 1: the top-level sections, the index spaces, the guest module.
    let mut spaces = Spaces::default();
    let mut sections: Vec<(u8, std::ops::Range<usize>)> = Vec::new();
    let mut guest: Option<(usize, std::ops::Range<usize>)> = None; // (section position, bytes)
    let mut guest_instance = None;
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(component) {
        let payload = payload.map_err(parse_err)?;
        match &payload {
            Payload::Version { .. } => {
                depth += 1;
                continue;
            }
            Payload::End(_) => {
                depth -= 1;
                continue;
            }
            _ if depth != 1 => continue,
            _ => {}
        }
        match &payload {
            Payload::ModuleSection {
                unchecked_range, ..
            } => {
                if guest.is_some() {
                    return Err(InstrumentError::Unsupported(
                        "more than one core module".into(),
                    ));
                }
                guest = Some((sections.len(), unchecked_range.clone()));
                spaces.core_modules += 1;
            }
            Payload::ComponentSection { .. } => spaces.components += 1,
            Payload::InstanceSection(reader) => {
                for instance in reader.clone() {
                    if let CoreInstance::Instantiate {
                        module_index: 0, ..
                    } = instance.map_err(parse_err)?
                    {
                        if guest_instance.is_some() {
                            return Err(InstrumentError::Unsupported(
                                "the core module is instantiated twice".into(),
                            ));
                        }
                        guest_instance = Some(spaces.core_instances);
                    }
                    spaces.core_instances += 1;
                }
            }
            Payload::CoreTypeSection(reader) => spaces.core_types += reader.count(),
            Payload::ComponentInstanceSection(reader) => spaces.instances += reader.count(),
            Payload::ComponentTypeSection(reader) => spaces.types += reader.count(),
            Payload::ComponentImportSection(reader) => {
                for import in reader.clone() {
                    let kind = match import.map_err(parse_err)?.ty {
                        ComponentTypeRef::Module(_) => ComponentExternalKind::Module,
                        ComponentTypeRef::Func(_) => ComponentExternalKind::Func,
                        ComponentTypeRef::Value(_) => ComponentExternalKind::Value,
                        ComponentTypeRef::Type(_) => ComponentExternalKind::Type,
                        ComponentTypeRef::Instance(_) => ComponentExternalKind::Instance,
                        ComponentTypeRef::Component(_) => ComponentExternalKind::Component,
                    };
                    spaces.add_component_kind(kind);
                }
            }
            Payload::ComponentExportSection(reader) => {
                for export in reader.clone() {
                    spaces.add_component_kind(export.map_err(parse_err)?.kind);
                }
            }
            Payload::ComponentAliasSection(reader) => {
                for alias in reader.clone() {
                    match alias.map_err(parse_err)? {
                        ComponentAlias::InstanceExport { kind, .. } => {
                            spaces.add_component_kind(kind)
                        }
                        ComponentAlias::CoreInstanceExport { kind, .. } => {
                            spaces.add_core_kind(kind)
                        }
                        ComponentAlias::Outer { kind, .. } => match kind {
                            ComponentOuterAliasKind::CoreModule => spaces.core_modules += 1,
                            ComponentOuterAliasKind::CoreType => spaces.core_types += 1,
                            ComponentOuterAliasKind::Type => spaces.types += 1,
                            ComponentOuterAliasKind::Component => spaces.components += 1,
                        },
                    }
                }
            }
            Payload::ComponentCanonicalSection(reader) => {
                for canon in reader.clone() {
                    match canon.map_err(parse_err)? {
                        CanonicalFunction::Lift { .. } => spaces.funcs += 1,
                        _ => spaces.core_funcs += 1,
                    }
                }
            }
            Payload::ComponentStartSection { start, .. } => spaces.values += start.results,
            _ => {}
        }
        if let Some((id, range)) = payload.as_section() {
            sections.push((id, range));
        }
    }
    let (guest_position, guest_range) =
        guest.ok_or_else(|| InstrumentError::Unsupported("no core module".into()))?;
    let guest_instance = guest_instance.ok_or_else(|| {
        InstrumentError::Unsupported("the core module is never instantiated".into())
    })?;

    // Pass 2: the guest module's memories and mutable globals.
    let guest_bytes = &component[guest_range];
    let layout = guest_layout(guest_bytes)?;
    let mut extra_exports = Vec::new();
    for m in &layout.memories {
        extra_exports.push((memory_export(m.index), ExportKind::Memory, m.index));
    }
    for g in &layout.globals {
        extra_exports.push((global_export(g.index), ExportKind::Global, g.index));
    }
    let rewritten_guest = add_exports(guest_bytes, &extra_exports)?;

    // Reassemble: every section verbatim but the guest module, then the accessor.
    let mut out = wasm_encoder::Component::new();
    for (position, (id, range)) in sections.iter().enumerate() {
        if position == guest_position {
            out.section(&module_section(&rewritten_guest));
        } else {
            out.section(&RawSection {
                id: *id,
                data: &component[range.clone()],
            });
        }
    }
    append_accessor(&mut out, &spaces, guest_instance, &layout);
    Ok((out.finish(), layout))
}

fn memory_export(index: u32) -> String {
    format!("baton-snapshot:memory-{index}")
}

fn global_export(index: u32) -> String {
    format!("baton-snapshot:global-{index}")
}

/// The memories and mutable globals a core module defines.
fn guest_layout(module: &[u8]) -> Result<Layout, InstrumentError> {
    let mut layout = Layout {
        memories: Vec::new(),
        globals: Vec::new(),
    };
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(parse_err)? {
            Payload::ImportSection(reader) => {
                // The check refuses every import; memories and globals
                // would also shift the indices below.
                if let Some(import) = reader.into_imports().next() {
                    let import = import.map_err(parse_err)?;
                    return Err(InstrumentError::Unsupported(format!(
                        "the core module imports `{}.{}`",
                        import.module, import.name
                    )));
                }
            }
            Payload::MemorySection(reader) => {
                for m in reader {
                    let m = m.map_err(parse_err)?;
                    if m.memory64 || m.shared || m.page_size_log2.is_some() {
                        return Err(InstrumentError::Unsupported(
                            "a shared, 64-bit or custom-page-size memory".into(),
                        ));
                    }
                    layout.memories.push(MemoryLayout {
                        index: layout.memories.len() as u32,
                        min_pages: m.initial,
                        max_pages: m.maximum,
                    });
                }
            }
            Payload::GlobalSection(reader) => {
                for (i, g) in reader.into_iter().enumerate() {
                    let g = g.map_err(parse_err)?;
                    if !g.ty.mutable {
                        continue;
                    }
                    let ty = match g.ty.content_type {
                        wasmparser::ValType::I32 => GlobalKind::I32,
                        wasmparser::ValType::I64 => GlobalKind::I64,
                        wasmparser::ValType::F32 => GlobalKind::F32,
                        wasmparser::ValType::F64 => GlobalKind::F64,
                        wasmparser::ValType::V128 => GlobalKind::V128,
                        wasmparser::ValType::Ref(_) => {
                            return Err(InstrumentError::Unsupported(format!(
                                "global {i} is a mutable reference, which no snapshot can hold"
                            )));
                        }
                    };
                    layout.globals.push(GlobalLayout {
                        module: 0,
                        index: i as u32,
                        ty,
                    });
                }
            }
            _ => {}
        }
    }
    Ok(layout)
}

/// A core module's bytes as a component's module section.
fn module_section(module: &[u8]) -> RawSection<'_> {
    RawSection {
        id: wasm_encoder::ComponentSectionId::CoreModule.into(),
        data: module,
    }
}

/// Re-encodes `module` with extra exports appended to its export section.
fn add_exports(
    module: &[u8],
    extra: &[(String, ExportKind, u32)],
) -> Result<Vec<u8>, InstrumentError> {
    struct AddExports<'a> {
        extra: &'a [(String, ExportKind, u32)],
        added: bool,
    }
    impl Reencode for AddExports<'_> {
        type Error = std::convert::Infallible;

        fn parse_export_section(
            &mut self,
            exports: &mut ExportSection,
            section: wasmparser::ExportSectionReader<'_>,
        ) -> Result<(), wasm_encoder::reencode::Error<Self::Error>> {
            wasm_encoder::reencode::utils::parse_export_section(self, exports, section)?;
            for (name, kind, index) in self.extra {
                exports.export(name, *kind, *index);
            }
            self.added = true;
            Ok(())
        }
    }
    let mut reencoder = AddExports {
        extra,
        added: false,
    };
    let mut out = wasm_encoder::Module::new();
    reencoder
        .parse_core_module(&mut out, Parser::new(0), module)
        .map_err(|e| InstrumentError::Parse(format!("re-encoding the core module failed: {e}")))?;
    if !reencoder.added {
        return Err(InstrumentError::Unsupported(
            "the core module exports nothing".into(),
        ));
    }
    Ok(out.finish())
}

/// The accessor's functions, in the order the accessor module defines them
/// after `realloc` and `ensure`, each with its component-level signature.
#[derive(Clone, Copy)]
enum Sig {
    Size,
    Grow,
    View,
    Write,
    WritePages,
    GetGlobals,
    SetGlobals,
}

/// `(name, signature, guest memory)` of every accessor function.
fn accessor_functions(layout: &Layout) -> Vec<(String, Sig, u32)> {
    let mut fns = Vec::new();
    for m in &layout.memories {
        let k = m.index;
        for sig in [Sig::Size, Sig::Grow, Sig::View, Sig::Write, Sig::WritePages] {
            fns.push((sig.name(Some(k)), sig, k));
        }
    }
    fns.push((Sig::GetGlobals.name(None), Sig::GetGlobals, 0));
    fns.push((Sig::SetGlobals.name(None), Sig::SetGlobals, 0));
    fns
}

impl Sig {
    /// The exported name: per memory `k` for memory functions.
    fn name(self, memory: Option<u32>) -> String {
        let base = match self {
            Sig::Size => "size",
            Sig::Grow => "grow",
            Sig::View => "view",
            Sig::Write => "write",
            Sig::WritePages => "write-pages",
            Sig::GetGlobals => return "get-globals".into(),
            Sig::SetGlobals => return "set-globals".into(),
        };
        format!("{base}-{}", memory.unwrap_or(0))
    }
}

/// The accessor's import of `look` lowered over guest memory `k`.
fn look_import(k: u32) -> String {
    format!("look-{k}")
}

/// The accessor's export names for memory `k`.
pub(crate) fn memory_function(base: &str, k: u32) -> String {
    format!("{base}-{k}")
}

/// The accessor core module: imports the guest's memories and mutable
/// globals and, per memory `k`, the host's `look` lowered over it
/// (`look-k`); owns a scratch memory; exports `realloc`, `scratch` and one
/// function per entry of [`accessor_functions`].
fn accessor_module(layout: &Layout) -> Vec<u8> {
    let i32_ = ValType::I32;
    let mut types = TypeSection::new();
    types.ty().function([i32_, i32_, i32_, i32_], [i32_]); // 0 realloc
    types.ty().function([i32_], []); // 1 ensure
    types.ty().function([], [i32_]); // 2 size, get-globals
    types.ty().function([i32_], [i32_]); // 3 grow
    types.ty().function([i32_, i32_], [i32_]); // 4 read
    types.ty().function([i32_, i32_, i32_], []); // 5 write
    types.ty().function([i32_, i32_, i32_, i32_], []); // 6 write-pages
    types.ty().function([i32_, i32_], []); // 7 set-globals, view, look

    let mut imports = ImportSection::new();
    for m in &layout.memories {
        let ty = MemoryType {
            minimum: m.min_pages,
            maximum: m.max_pages,
            memory64: false,
            shared: false,
            page_size_log2: None,
        };
        imports.import("guest", &memory_export(m.index), EntityType::Memory(ty));
    }
    for g in &layout.globals {
        let ty = wasm_encoder::GlobalType {
            val_type: val_type(g.ty),
            mutable: true,
            shared: false,
        };
        imports.import("guest", &global_export(g.index), EntityType::Global(ty));
    }
    // Imported functions come first in the function index space: memory
    // `k`'s `look` is function `k`, as memory `k` is the accessor's memory `k`.
    for m in &layout.memories {
        imports.import("guest", &look_import(m.index), EntityType::Function(7));
    }
    let realloc = layout.memories.len() as u32;
    let ensure = realloc + 1;
    let scratch = layout.memories.len() as u32;
    let bump = layout.globals.len() as u32;

    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: 1,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut globals = GlobalSection::new();
    globals.global(
        wasm_encoder::GlobalType {
            val_type: i32_,
            mutable: true,
            shared: false,
        },
        &ConstExpr::i32_const(DATA_START),
    );

    let mut functions = FunctionSection::new();
    let mut code = CodeSection::new();
    let mut exports = ExportSection::new();
    exports.export("scratch", ExportKind::Memory, scratch);
    let arg = |offset: u64| MemArg {
        offset,
        align: 0,
        memory_index: scratch,
    };

    // 0: realloc(old_ptr, old_size, align, new_size) -> ptr, a bump allocator
    // reset by every accessor call.
    {
        let mut f = Function::new([(1, i32_)]);
        let ptr = 4;
        let mut s = f.instructions();
        s.global_get(bump)
            .local_get(2)
            .i32_add()
            .i32_const(1)
            .i32_sub();
        s.i32_const(0)
            .local_get(2)
            .i32_sub()
            .i32_and()
            .local_set(ptr);
        // end = ptr + new_size must not wrap
        s.local_get(ptr)
            .local_get(3)
            .i32_add()
            .local_get(ptr)
            .i32_lt_u();
        s.if_(wasm_encoder::BlockType::Empty).unreachable().end();
        s.local_get(ptr).local_get(3).i32_add().call(ensure);
        s.local_get(ptr).local_get(3).i32_add().global_set(bump);
        s.local_get(ptr).end();
        functions.function(0);
        code.function(&f);
        exports.export("realloc", ExportKind::Func, realloc);
    }
    // 1: ensure(end): grows scratch memory so `end` bytes fit.
    {
        let mut f = Function::new([]);
        let mut s = f.instructions();
        s.local_get(0)
            .memory_size(scratch)
            .i32_const(16)
            .i32_shl()
            .i32_gt_u();
        s.if_(wasm_encoder::BlockType::Empty);
        s.local_get(0)
            .memory_size(scratch)
            .i32_const(16)
            .i32_shl()
            .i32_sub();
        s.i32_const(65535).i32_add().i32_const(16).i32_shr_u();
        s.memory_grow(scratch).i32_const(-1).i32_eq();
        s.if_(wasm_encoder::BlockType::Empty).unreachable().end();
        s.end();
        s.end();
        functions.function(1);
        code.function(&f);
    }

    let total_globals = layout.globals_size() as i32;
    // After the imports come `realloc` and `ensure`.
    for (index, (name, sig, mem)) in (ensure + 1..).zip(accessor_functions(layout)) {
        let mut f;
        let ty;
        match sig {
            Sig::Size | Sig::Grow | Sig::View | Sig::Write | Sig::WritePages => {
                match sig {
                    Sig::Size => {
                        ty = 2;
                        f = Function::new([]);
                        f.instructions().memory_size(mem).end();
                    }
                    Sig::Grow => {
                        ty = 3;
                        f = Function::new([]);
                        f.instructions().local_get(0).memory_grow(mem).end();
                    }
                    Sig::View => {
                        // view(offset, len): look(guest[offset..+len]), in place
                        ty = 7;
                        f = Function::new([]);
                        f.instructions().local_get(0).local_get(1).call(mem).end();
                    }
                    Sig::Write => {
                        // write(offset, ptr, len): scratch[ptr..+len] -> guest[offset..]
                        ty = 5;
                        f = Function::new([]);
                        let mut s = f.instructions();
                        s.local_get(0)
                            .local_get(1)
                            .local_get(2)
                            .memory_copy(mem, scratch);
                        s.i32_const(DATA_START).global_set(bump).end();
                    }
                    _ => {
                        // write-pages(pages_ptr, pages_len, data_ptr, data_len):
                        // data page j -> guest page pages[j], 4 KiB each.
                        ty = 6;
                        f = Function::new([(1, i32_)]);
                        let j = 4;
                        let mut s = f.instructions();
                        s.local_get(3).local_get(1).i32_const(12).i32_shl().i32_ne();
                        s.if_(wasm_encoder::BlockType::Empty).unreachable().end();
                        s.block(wasm_encoder::BlockType::Empty)
                            .loop_(wasm_encoder::BlockType::Empty);
                        s.local_get(j).local_get(1).i32_ge_u().br_if(1);
                        s.local_get(0)
                            .local_get(j)
                            .i32_const(2)
                            .i32_shl()
                            .i32_add()
                            .i32_load(arg(0));
                        s.i32_const(12).i32_shl();
                        s.local_get(2)
                            .local_get(j)
                            .i32_const(12)
                            .i32_shl()
                            .i32_add();
                        s.i32_const(4096).memory_copy(mem, scratch);
                        s.local_get(j).i32_const(1).i32_add().local_set(j).br(0);
                        s.end().end();
                        s.i32_const(DATA_START).global_set(bump).end();
                    }
                }
            }
            Sig::GetGlobals => {
                ty = 2;
                f = Function::new([]);
                let mut s = f.instructions();
                s.i32_const(DATA_START + total_globals).call(ensure);
                let mut offset = DATA_START as u64;
                for (g, global) in layout.globals.iter().enumerate() {
                    s.i32_const(0).global_get(g as u32);
                    match global.ty {
                        GlobalKind::I32 => s.i32_store(arg(offset)),
                        GlobalKind::I64 => s.i64_store(arg(offset)),
                        GlobalKind::F32 => s.i32_reinterpret_f32().i32_store(arg(offset)),
                        GlobalKind::F64 => s.i64_reinterpret_f64().i64_store(arg(offset)),
                        GlobalKind::V128 => s.v128_store(arg(offset)),
                    };
                    offset += global.ty.size() as u64;
                }
                s.i32_const(0).i32_const(DATA_START).i32_store(arg(0));
                s.i32_const(0).i32_const(total_globals).i32_store(arg(4));
                s.i32_const(0).end();
            }
            Sig::SetGlobals => {
                // set-globals(ptr, len)
                ty = 7;
                f = Function::new([]);
                let mut s = f.instructions();
                s.local_get(1).i32_const(total_globals).i32_ne();
                s.if_(wasm_encoder::BlockType::Empty).unreachable().end();
                let mut offset = 0u64;
                for (g, global) in layout.globals.iter().enumerate() {
                    s.local_get(0);
                    match global.ty {
                        GlobalKind::I32 => s.i32_load(arg(offset)),
                        GlobalKind::I64 => s.i64_load(arg(offset)),
                        GlobalKind::F32 => s.i32_load(arg(offset)).f32_reinterpret_i32(),
                        GlobalKind::F64 => s.i64_load(arg(offset)).f64_reinterpret_i64(),
                        GlobalKind::V128 => s.v128_load(arg(offset)),
                    };
                    s.global_set(g as u32);
                    offset += global.ty.size() as u64;
                }
                s.i32_const(DATA_START).global_set(bump).end();
            }
        }
        functions.function(ty);
        code.function(&f);
        exports.export(&name, ExportKind::Func, index);
    }

    let mut module = wasm_encoder::Module::new();
    module
        .section(&types)
        .section(&imports)
        .section(&functions)
        .section(&memories)
        .section(&globals)
        .section(&exports)
        .section(&code);
    module.finish()
}

fn val_type(kind: GlobalKind) -> ValType {
    match kind {
        GlobalKind::I32 => ValType::I32,
        GlobalKind::I64 => ValType::I64,
        GlobalKind::F32 => ValType::F32,
        GlobalKind::F64 => ValType::F64,
        GlobalKind::V128 => ValType::V128,
    }
}

/// Appends the accessor module, its instantiation against the guest
/// instance's new exports, the lifted functions and their export.
fn append_accessor(
    out: &mut wasm_encoder::Component,
    spaces: &Spaces,
    guest_instance: u32,
    layout: &Layout,
) {
    let mut s = *spaces;
    let accessor = accessor_module(layout);
    out.section(&module_section(&accessor));
    let accessor_module_index = s.core_modules;
    s.core_modules += 1;

    // The guest instance's memories and mutable globals, as a core instance
    // to instantiate the accessor with.
    let mut aliases = ComponentAliasSection::new();
    let mut items: Vec<(String, ExportKind, u32)> = Vec::new();
    let mut guest_memories = Vec::with_capacity(layout.memories.len());
    for m in &layout.memories {
        let name = memory_export(m.index);
        aliases.alias(Alias::CoreInstanceExport {
            instance: guest_instance,
            kind: ExportKind::Memory,
            name: &name,
        });
        guest_memories.push((m.index, s.core_memories));
        items.push((name, ExportKind::Memory, s.core_memories));
        s.core_memories += 1;
    }
    for g in &layout.globals {
        let name = global_export(g.index);
        aliases.alias(Alias::CoreInstanceExport {
            instance: guest_instance,
            kind: ExportKind::Global,
            name: &name,
        });
        items.push((name, ExportKind::Global, s.core_globals));
        s.core_globals += 1;
    }
    out.section(&aliases);

    // The host's `look`, imported, then lowered once per guest memory with
    // that memory as the one its list argument is lifted from.
    let mut types = ComponentTypeSection::new();
    let mut view = InstanceType::new();
    view.ty().defined_type().list(PrimitiveValType::U8);
    view.ty()
        .function()
        .params([("data", ComponentValType::Type(0))])
        .result(None);
    view.export("look", TypeRef::Func(1));
    types.instance(&view);
    let view_type = s.types;
    s.types += 1;
    out.section(&types);
    let mut imports = ComponentImportSection::new();
    imports.import(VIEW_INTERFACE, TypeRef::Instance(view_type));
    let view_instance = s.instances;
    s.instances += 1;
    out.section(&imports);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::InstanceExport {
        instance: view_instance,
        kind: ComponentExportKind::Func,
        name: "look",
    });
    let look = s.funcs;
    s.funcs += 1;
    out.section(&aliases);
    let mut canon = CanonicalFunctionSection::new();
    for (k, memory) in guest_memories {
        canon.lower(look, [CanonicalOption::Memory(memory)]);
        items.push((look_import(k), ExportKind::Func, s.core_funcs));
        s.core_funcs += 1;
    }
    out.section(&canon);

    let mut instances = InstanceSection::new();
    instances.export_items(items.iter().map(|(n, k, i)| (n.as_str(), *k, *i)));
    let args_instance = s.core_instances;
    instances.instantiate(
        accessor_module_index,
        [("guest", ModuleArg::Instance(args_instance))],
    );
    let accessor_instance = args_instance + 1;
    s.core_instances += 2;
    out.section(&instances);

    // The accessor's exports, as core items of the component.
    let functions = accessor_functions(layout);
    let mut aliases = ComponentAliasSection::new();
    aliases.alias(Alias::CoreInstanceExport {
        instance: accessor_instance,
        kind: ExportKind::Memory,
        name: "scratch",
    });
    let scratch = s.core_memories;
    s.core_memories += 1;
    aliases.alias(Alias::CoreInstanceExport {
        instance: accessor_instance,
        kind: ExportKind::Func,
        name: "realloc",
    });
    let realloc = s.core_funcs;
    s.core_funcs += 1;
    let first_core_func = s.core_funcs;
    for (name, _, _) in &functions {
        aliases.alias(Alias::CoreInstanceExport {
            instance: accessor_instance,
            kind: ExportKind::Func,
            name,
        });
    }
    s.core_funcs += functions.len() as u32;
    out.section(&aliases);

    // Component types: list<u8>, list<u32>, then one function type per signature.
    let mut types = ComponentTypeSection::new();
    let u32_ = ComponentValType::Primitive(PrimitiveValType::U32);
    let list_u8 = s.types;
    types.defined_type().list(PrimitiveValType::U8);
    let list_u32 = s.types + 1;
    types.defined_type().list(PrimitiveValType::U32);
    let bytes = ComponentValType::Type(list_u8);
    let first_type = s.types;
    let sig_type = |sig: Sig| -> u32 {
        first_type
            + 2
            + match sig {
                Sig::Size => 0,
                Sig::Grow => 1,
                Sig::View => 2,
                Sig::Write => 3,
                Sig::WritePages => 4,
                Sig::GetGlobals => 5,
                Sig::SetGlobals => 6,
            }
    };
    types
        .function()
        .params(Vec::<(&str, ComponentValType)>::new())
        .result(Some(u32_));
    types
        .function()
        .params([("pages", u32_)])
        .result(Some(ComponentValType::Primitive(PrimitiveValType::S32)));
    types
        .function()
        .params([("offset", u32_), ("len", u32_)])
        .result(None);
    types
        .function()
        .params([("offset", u32_), ("data", bytes)])
        .result(None);
    types
        .function()
        .params([("pages", ComponentValType::Type(list_u32)), ("data", bytes)])
        .result(None);
    types
        .function()
        .params(Vec::<(&str, ComponentValType)>::new())
        .result(Some(bytes));
    types.function().params([("data", bytes)]).result(None);
    s.types += 9;
    out.section(&types);

    let mut canon = CanonicalFunctionSection::new();
    for (i, (_, sig, _)) in functions.iter().enumerate() {
        let options: Cow<'_, [CanonicalOption]> = match sig {
            Sig::Size | Sig::Grow | Sig::View => Cow::Borrowed(&[]),
            Sig::GetGlobals => Cow::Owned(vec![CanonicalOption::Memory(scratch)]),
            Sig::Write | Sig::WritePages | Sig::SetGlobals => Cow::Owned(vec![
                CanonicalOption::Memory(scratch),
                CanonicalOption::Realloc(realloc),
            ]),
        };
        canon.lift(
            first_core_func + i as u32,
            sig_type(*sig),
            options.iter().copied(),
        );
    }
    let first_func = s.funcs;
    s.funcs += functions.len() as u32;
    out.section(&canon);

    let mut instance = ComponentInstanceSection::new();
    instance.export_items(functions.iter().enumerate().map(|(i, (name, _, _))| {
        (
            name.as_str(),
            ComponentExportKind::Func,
            first_func + i as u32,
        )
    }));
    let accessor_component_instance = s.instances;
    out.section(&instance);

    let mut exports = ComponentExportSection::new();
    exports.export(
        ACCESSOR_INTERFACE,
        ComponentExportKind::Instance,
        accessor_component_instance,
        None,
    );
    out.section(&exports);
}
