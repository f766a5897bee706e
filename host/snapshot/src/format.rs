//! Snapshots and deltas of a session's state, and their binary format.
//!
//! An [`Image`] is a session's whole mutable state at one journal position:
//! the packed mutable globals, and for each memory its size plus the 4 KiB
//! pages that differ from the module's fresh image. A [`Delta`] holds the
//! pages changed since the previous capture; [`Image::apply`] folds deltas in
//! order into the same bytes a full capture would give.
//!
//! Both encode to one versioned format:
//!
//! ```text
//! magic "BATNSNAP" | format u16 | kind u8 (1 full, 2 delta) | module sha-256 [32]
//! base u64 | position u64 | now u64 | globals: len u32, bytes
//! memories: count u32, then per memory:
//!     size in 64 KiB pages u32 | page count u32 | page indices u32 × count (ascending)
//!     payload len u32 | zstd(pages, 4 KiB each, in index order)
//! checksum: xxh3-64 of everything before it, u64
//! ```
//!
//! Everything is little-endian. Decoding checks the checksum first and
//! bounds every count against the input, so hostile bytes give an error,
//! never a panic or a huge allocation (the decoders are fuzzed).

use std::cell::RefCell;
use std::collections::BTreeMap;

use crate::ModuleHash;

/// Bytes in a snapshot page.
pub const PAGE: usize = 4096;
/// Snapshot pages in a 64 KiB Wasm page.
pub const PAGES_PER_WASM_PAGE: usize = 65536 / PAGE;
/// The format version this host writes and reads.
pub const FORMAT_VERSION: u16 = 1;

const MAGIC: &[u8; 8] = b"BATNSNAP";
const KIND_FULL: u8 = 1;
const KIND_DELTA: u8 = 2;
/// zstd level: fast; snapshot pages are mostly sparse heaps and compress well.
const ZSTD_LEVEL: i32 = 1;
/// 32-bit memories hold at most 65536 Wasm pages.
const MAX_WASM_PAGES: u32 = 65536;

/// One 4 KiB page of memory.
pub type Page = Box<[u8]>;

/// Per memory: its size and its pages by index, borrowed for encoding.
type MemoryRefs<'a> = Vec<(u32, Vec<(u32, &'a [u8])>)>;

/// A session's whole mutable state at one journal position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// The module whose instance this is.
    pub module: ModuleHash,
    /// Journal entries applied.
    pub position: u64,
    /// The session clock at capture, in milliseconds.
    pub now: u64,
    /// The mutable globals, packed in the module's layout order.
    pub globals: Vec<u8>,
    /// Each memory, by index.
    pub memories: Vec<MemoryImage>,
}

/// One memory of an [`Image`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryImage {
    /// Size in 64 KiB Wasm pages.
    pub size: u32,
    /// The 4 KiB pages that differ from the fresh instance, by index.
    pub pages: BTreeMap<u32, Page>,
}

/// The pages and globals changed between two captures.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The module whose instance this is.
    pub module: ModuleHash,
    /// The position of the capture this delta applies on.
    pub base: u64,
    /// The position it brings the image to.
    pub position: u64,
    /// The session clock at capture.
    pub now: u64,
    /// All mutable globals (a few bytes: always whole).
    pub globals: Vec<u8>,
    /// Per memory: its new size and the pages written since the base.
    pub memories: Vec<MemoryDelta>,
}

/// One memory of a [`Delta`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryDelta {
    /// Size in 64 KiB Wasm pages.
    pub size: u32,
    /// Changed pages, ascending by index.
    pub pages: Vec<(u32, Page)>,
}

/// Why snapshot bytes could not be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// Not a Baton snapshot at all.
    #[error("not a Baton snapshot (bad magic bytes)")]
    NotASnapshot,
    /// Written by a format this host does not know.
    #[error("unknown snapshot format version {0}; this host reads version {FORMAT_VERSION}")]
    UnknownVersion(u16),
    /// The checksum does not match: the bytes were damaged.
    #[error("the snapshot's checksum does not match: it is damaged or truncated")]
    BadChecksum,
    /// A full snapshot where a delta was expected, or the reverse.
    #[error("expected a {expected} but found a {found}")]
    WrongKind {
        /// What the caller asked for.
        expected: &'static str,
        /// What the bytes hold.
        found: &'static str,
    },
    /// Structurally invalid content behind a valid checksum.
    #[error("the snapshot is malformed: {0}")]
    Malformed(String),
    /// A snapshot of another module.
    #[error("the snapshot is of module {found}, not {expected}")]
    WrongModule {
        /// The module at hand.
        expected: ModuleHash,
        /// The snapshot's.
        found: ModuleHash,
    },
    /// A delta that does not follow the image it is applied to.
    #[error("the delta applies on position {base}, but the image is at {position}")]
    OutOfOrder {
        /// The delta's base.
        base: u64,
        /// The image's position.
        position: u64,
    },
}

impl Image {
    /// The state of a fresh instance: no pages differ.
    pub fn fresh(
        module: ModuleHash,
        globals: Vec<u8>,
        sizes: impl IntoIterator<Item = u32>,
    ) -> Self {
        Image {
            module,
            position: 0,
            now: 0,
            globals,
            memories: sizes
                .into_iter()
                .map(|size| MemoryImage {
                    size,
                    pages: BTreeMap::new(),
                })
                .collect(),
        }
    }

    /// Folds a delta into this image.
    pub fn apply(&mut self, delta: &Delta) -> Result<(), SnapshotError> {
        check_follows(&self.module, self.position, self.memories.len(), delta)?;
        for (memory, changes) in self.memories.iter_mut().zip(&delta.memories) {
            memory.size = memory.size.max(changes.size);
            for (index, page) in &changes.pages {
                memory.pages.insert(*index, page.clone());
            }
        }
        self.globals.clone_from(&delta.globals);
        self.position = delta.position;
        self.now = delta.now;
        Ok(())
    }

    /// Encodes the image as a full snapshot.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Appends the image, encoded as a full snapshot, to `out`: behind a
    /// header of the caller's, without copying megabytes once more.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let memories: MemoryRefs<'_> = self
            .memories
            .iter()
            .map(|m| (m.size, m.pages.iter().map(|(i, p)| (*i, &p[..])).collect()))
            .collect();
        let header = Header {
            kind: KIND_FULL,
            module: &self.module,
            base: 0,
            position: self.position,
            now: self.now,
            globals: &self.globals,
        };
        encode_into(out, header, &memories);
    }

    /// Decodes a full snapshot.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let raw = decode(bytes, KIND_FULL)?;
        Ok(Image {
            module: raw.module,
            position: raw.position,
            now: raw.now,
            globals: raw.globals,
            memories: raw
                .memories
                .into_iter()
                .map(|(size, pages)| MemoryImage {
                    size,
                    pages: pages.into_iter().collect(),
                })
                .collect(),
        })
    }

    /// Bytes of memory this image holds beyond the fresh instance.
    pub fn dirty_bytes(&self) -> usize {
        self.memories.iter().map(|m| m.pages.len() * PAGE).sum()
    }
}

impl Delta {
    /// Encodes the delta.
    pub fn encode(&self) -> Vec<u8> {
        let memories: MemoryRefs<'_> = self
            .memories
            .iter()
            .map(|m| (m.size, m.pages.iter().map(|(i, p)| (*i, &p[..])).collect()))
            .collect();
        let header = Header {
            kind: KIND_DELTA,
            module: &self.module,
            base: self.base,
            position: self.position,
            now: self.now,
            globals: &self.globals,
        };
        let mut out = Vec::new();
        encode_into(&mut out, header, &memories);
        out
    }

    /// Decodes a delta.
    pub fn decode(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let raw = decode(bytes, KIND_DELTA)?;
        Ok(Delta {
            module: raw.module,
            base: raw.base,
            position: raw.position,
            now: raw.now,
            globals: raw.globals,
            memories: raw
                .memories
                .into_iter()
                .map(|(size, pages)| MemoryDelta { size, pages })
                .collect(),
        })
    }

    /// Folds the delta that follows this one into it, so that the result
    /// takes an image from this delta's base straight to `later`'s
    /// position (a page written twice keeps its later contents).
    pub fn then(&mut self, later: Delta) -> Result<(), SnapshotError> {
        check_follows(&self.module, self.position, self.memories.len(), &later)?;
        for (memory, changes) in self.memories.iter_mut().zip(later.memories) {
            memory.size = memory.size.max(changes.size);
            let mut pages: BTreeMap<u32, Page> =
                std::mem::take(&mut memory.pages).into_iter().collect();
            pages.extend(changes.pages);
            memory.pages = pages.into_iter().collect();
        }
        self.globals = later.globals;
        self.position = later.position;
        self.now = later.now;
        Ok(())
    }

    /// Number of pages the delta carries.
    pub fn page_count(&self) -> usize {
        self.memories.iter().map(|m| m.pages.len()).sum()
    }
}

/// Checks that `delta` applies to a capture of `module` at `position`
/// with `memories` memories.
fn check_follows(
    module: &ModuleHash,
    position: u64,
    memories: usize,
    delta: &Delta,
) -> Result<(), SnapshotError> {
    if delta.module != *module {
        return Err(SnapshotError::WrongModule {
            expected: *module,
            found: delta.module,
        });
    }
    if delta.base != position {
        return Err(SnapshotError::OutOfOrder {
            base: delta.base,
            position,
        });
    }
    if delta.memories.len() != memories {
        return Err(SnapshotError::Malformed(format!(
            "the delta has {} memories, what it applies to {memories}",
            delta.memories.len(),
        )));
    }
    Ok(())
}

/// What precedes the memories in an encoding.
struct Header<'a> {
    kind: u8,
    module: &'a ModuleHash,
    base: u64,
    position: u64,
    now: u64,
    globals: &'a [u8],
}

/// Appends the encoding to `out`, sized once up front: a multi-megabyte
/// snapshot grown by doubling was copied and faulted in several times over.
fn encode_into(out: &mut Vec<u8>, header: Header<'_>, memories: &MemoryRefs<'_>) {
    let Header {
        kind,
        module,
        base,
        position,
        now,
        globals,
    } = header;
    // Magic, format, kind, module, base, position, now, globals' length,
    // memory count, checksum.
    const FIXED: usize = MAGIC.len() + 2 + 1 + 32 + 3 * 8 + 4 + 4 + 8;
    let start = out.len();
    let bound = FIXED
        + globals.len()
        + memories
            .iter()
            .map(|(_, pages)| 12 + 4 * pages.len() + compress_bound(pages.len() * PAGE))
            .sum::<usize>();
    out.reserve(bound);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&module.0);
    out.extend_from_slice(&base.to_le_bytes());
    out.extend_from_slice(&position.to_le_bytes());
    out.extend_from_slice(&now.to_le_bytes());
    out.extend_from_slice(&(globals.len() as u32).to_le_bytes());
    out.extend_from_slice(globals);
    out.extend_from_slice(&(memories.len() as u32).to_le_bytes());
    for (size, pages) in memories {
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&(pages.len() as u32).to_le_bytes());
        for (index, _) in pages {
            out.extend_from_slice(&index.to_le_bytes());
        }
        let len_at = out.len();
        out.extend_from_slice(&0u32.to_le_bytes());
        compress_pages(pages, out);
        let payload = (out.len() - len_at - 4) as u32;
        out[len_at..len_at + 4].copy_from_slice(&payload.to_le_bytes());
    }
    let checksum = xxhash_rust::xxh3::xxh3_64(&out[start..]);
    out.extend_from_slice(&checksum.to_le_bytes());
}

fn compress_bound(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        zstd::zstd_safe::compress_bound(len)
    }
}

/// Appends one zstd frame of `pages`, in order, to `out` (nothing for no
/// pages), streamed page by page: gathering them into one buffer first cost
/// a copy and a fresh allocation, faulted in, per snapshot.
fn compress_pages(pages: &[(u32, &[u8])], out: &mut Vec<u8>) {
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective, zstd_sys::ZSTD_EndDirective};
    if pages.is_empty() {
        return;
    }
    let len: usize = pages.iter().map(|(_, page)| page.len()).sum();
    thread_local! {
        static COMPRESSOR: Kept<zstd::bulk::Compressor<'static>> = const { RefCell::new(None) };
    }
    // Compressing can only fail on allocation (or a zstd bug): the loop
    // below makes room in `out` as it goes (the caller reserved zstd's
    // bound, so normally it never has to).
    let compressed = with_kept(
        &COMPRESSOR,
        || zstd::bulk::Compressor::new(ZSTD_LEVEL),
        |compressor| {
            let context = compressor.context_mut();
            let failed = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
            context.reset(ResetDirective::SessionOnly).map_err(failed)?;
            context
                .set_pledged_src_size(Some(len as u64))
                .map_err(failed)?;
            let mut stream = |bytes: &[u8], directive| -> std::io::Result<()> {
                let mut input = InBuffer::around(bytes);
                loop {
                    out.reserve(PAGE);
                    let at = out.len();
                    let mut output = OutBuffer::around_pos(out, at);
                    let left = context
                        .compress_stream2(&mut output, &mut input, directive)
                        .map_err(failed)?;
                    let done = match directive {
                        ZSTD_EndDirective::ZSTD_e_end => left == 0,
                        _ => input.pos() == bytes.len(),
                    };
                    if done {
                        return Ok(());
                    }
                }
            };
            for (_, page) in pages {
                stream(page, ZSTD_EndDirective::ZSTD_e_continue)?;
            }
            stream(&[], ZSTD_EndDirective::ZSTD_e_end)
        },
    );
    compressed.unwrap_or_else(|e| panic!("zstd compression failed: {e}"));
}

/// Decompresses `payload`, one zstd frame, into `pages` pages: streamed
/// into each page's own buffer, with no whole-payload buffer in between.
/// Errors unless the frame holds exactly that many bytes.
fn decompress_pages(payload: &[u8], pages: usize) -> std::io::Result<Vec<Page>> {
    use zstd::zstd_safe::{InBuffer, OutBuffer, ResetDirective};
    thread_local! {
        static DECOMPRESSOR: Kept<zstd::zstd_safe::DCtx<'static>> = const { RefCell::new(None) };
    }
    let wrong = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    with_kept(
        &DECOMPRESSOR,
        || Ok(zstd::zstd_safe::DCtx::create()),
        |context| {
            let failed = |code| std::io::Error::other(zstd::zstd_safe::get_error_name(code));
            context.reset(ResetDirective::SessionOnly).map_err(failed)?;
            let mut input = InBuffer::around(payload);
            let mut decoded = Vec::with_capacity(pages);
            // What the last call left to flush (0: the frame is complete).
            let mut left = 1;
            for _ in 0..pages {
                let mut page = vec![0u8; PAGE];
                let mut output = OutBuffer::around(&mut page[..]);
                while output.pos() < PAGE {
                    let before = (input.pos(), output.pos());
                    left = context
                        .decompress_stream(&mut output, &mut input)
                        .map_err(failed)?;
                    if (input.pos(), output.pos()) == before {
                        return Err(wrong("fewer bytes than its pages"));
                    }
                }
                decoded.push(page.into_boxed_slice());
            }
            // The frame must end here: its last bytes may still be unread.
            while left != 0 {
                let mut spare = [0u8; 1];
                let mut output = OutBuffer::around(&mut spare[..]);
                let before = input.pos();
                left = context
                    .decompress_stream(&mut output, &mut input)
                    .map_err(failed)?;
                if output.pos() != 0 {
                    return Err(wrong("more bytes than its pages"));
                }
                if input.pos() == before && left != 0 {
                    return Err(wrong("a truncated frame"));
                }
            }
            if input.pos() != payload.len() {
                return Err(wrong("bytes after its frame"));
            }
            Ok(decoded)
        },
    )
}

/// A zstd context kept by its thread: creating one per call allocates and
/// faults in its tables every time (3% of a draining node's CPU, and most
/// of a 1 MiB snapshot's encoding, measured).
type Kept<C> = RefCell<Option<C>>;

/// Runs `work` with this thread's `kept` context, made by `make` first if
/// there is none yet.
fn with_kept<C: 'static, T>(
    kept: &'static std::thread::LocalKey<Kept<C>>,
    make: impl FnOnce() -> std::io::Result<C>,
    work: impl FnOnce(&mut C) -> std::io::Result<T>,
) -> std::io::Result<T> {
    kept.with_borrow_mut(|slot| {
        let context = match slot {
            Some(context) => context,
            None => slot.insert(make()?),
        };
        work(context)
    })
}

struct Raw {
    module: ModuleHash,
    base: u64,
    position: u64,
    now: u64,
    globals: Vec<u8>,
    memories: Vec<(u32, Vec<(u32, Page)>)>,
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        KIND_FULL => "full snapshot",
        KIND_DELTA => "delta",
        _ => "unknown kind",
    }
}

fn decode(bytes: &[u8], expected_kind: u8) -> Result<Raw, SnapshotError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(SnapshotError::NotASnapshot);
    }
    if bytes.len() < MAGIC.len() + 2 + 8 {
        return Err(SnapshotError::BadChecksum);
    }
    let (body, checksum) = bytes.split_at(bytes.len() - 8);
    let mut r = Reader {
        bytes: body,
        at: MAGIC.len(),
    };
    let version = r.u16()?;
    if version != FORMAT_VERSION {
        return Err(SnapshotError::UnknownVersion(version));
    }
    let expected = u64::from_le_bytes(
        checksum
            .try_into()
            .map_err(|_| SnapshotError::BadChecksum)?,
    );
    if xxhash_rust::xxh3::xxh3_64(body) != expected {
        return Err(SnapshotError::BadChecksum);
    }
    let kind = r.u8()?;
    if kind != expected_kind {
        return Err(SnapshotError::WrongKind {
            expected: kind_name(expected_kind),
            found: kind_name(kind),
        });
    }
    let module = ModuleHash(
        r.take(32)?
            .try_into()
            .map_err(|_| malformed("module hash"))?,
    );
    let base = r.u64()?;
    let position = r.u64()?;
    let now = r.u64()?;
    if kind == KIND_DELTA && base > position {
        return Err(malformed("a delta's base is after its position"));
    }
    let globals_len = r.u32()? as usize;
    let globals = r.take(globals_len)?.to_vec();
    let memory_count = r.u32()?;
    // Each memory takes at least 12 bytes: bound the count by the input.
    if memory_count as usize > r.remaining() / 12 {
        return Err(malformed("more memories than bytes"));
    }
    let mut memories = Vec::with_capacity(memory_count as usize);
    for _ in 0..memory_count {
        let size = r.u32()?;
        if size > MAX_WASM_PAGES {
            return Err(malformed("a memory larger than 4 GiB"));
        }
        let page_count = r.u32()? as usize;
        let max_pages = size as usize * PAGES_PER_WASM_PAGE;
        if page_count > max_pages || page_count > r.remaining() / 4 {
            return Err(malformed("more pages than the memory holds"));
        }
        let mut indices = Vec::with_capacity(page_count);
        for _ in 0..page_count {
            let index = r.u32()?;
            if index as usize >= max_pages {
                return Err(malformed("a page beyond the memory's size"));
            }
            if indices.last().is_some_and(|last| *last >= index) {
                return Err(malformed("page indices out of order"));
            }
            indices.push(index);
        }
        let payload_len = r.u32()? as usize;
        let payload = r.take(payload_len)?;
        let pages = if page_count == 0 {
            if !payload.is_empty() {
                return Err(malformed("a payload for no pages"));
            }
            Vec::new()
        } else {
            decompress_pages(payload, page_count)
                .map_err(|e| malformed(&format!("page data: {e}")))?
        };
        let pages = indices.into_iter().zip(pages).collect();
        memories.push((size, pages));
    }
    if r.remaining() != 0 {
        return Err(malformed("trailing bytes"));
    }
    Ok(Raw {
        module,
        base,
        position,
        now,
        globals,
        memories,
    })
}

fn malformed(what: &str) -> SnapshotError {
    SnapshotError::Malformed(what.to_owned())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.at
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SnapshotError> {
        if n > self.remaining() {
            return Err(malformed("truncated"));
        }
        let slice = &self.bytes[self.at..self.at + n];
        self.at += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, SnapshotError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, SnapshotError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().map_err(|_| malformed("u16"))?,
        ))
    }

    fn u32(&mut self) -> Result<u32, SnapshotError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().map_err(|_| malformed("u32"))?,
        ))
    }

    fn u64(&mut self) -> Result<u64, SnapshotError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().map_err(|_| malformed("u64"))?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(fill: u8) -> Page {
        vec![fill; PAGE].into_boxed_slice()
    }

    fn sample() -> Image {
        let mut image = Image::fresh(ModuleHash([7; 32]), vec![1, 2, 3, 4], [2, 1]);
        image.memories[0].pages.insert(3, page(0xaa));
        image.memories[0].pages.insert(17, page(0x01));
        image.memories[1].pages.insert(0, page(0xff));
        image.position = 42;
        image.now = 1234;
        image
    }

    #[test]
    fn a_full_snapshot_round_trips() {
        let image = sample();
        assert_eq!(Image::decode(&image.encode()), Ok(image));
    }

    #[test]
    fn kept_contexts_carry_nothing_from_one_snapshot_to_the_next() {
        // Large and incompressible, then small and compressible, then
        // large again, on one thread: each decodes to itself.
        let mut big = sample();
        big.memories[0].size = 20;
        let mut x = 1u32;
        for index in 0..300 {
            let noise: Vec<u8> = (0..PAGE)
                .map(|_| {
                    x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    (x >> 24) as u8
                })
                .collect();
            big.memories[0]
                .pages
                .insert(index, noise.into_boxed_slice());
        }
        let small = sample();
        let encoded: Vec<Vec<u8>> = [&big, &small, &big].iter().map(|i| i.encode()).collect();
        assert!(encoded[0].len() > 300 * PAGE, "noise does not compress");
        assert_eq!(encoded[0], encoded[2]);
        for (n, (bytes, image)) in encoded.iter().zip([&big, &small, &big]).enumerate() {
            assert!(Image::decode(bytes).as_ref() == Ok(image), "snapshot {n}");
        }
    }

    #[test]
    fn deltas_applied_in_order_equal_the_full_image() {
        let start = sample();
        let delta = Delta {
            module: start.module,
            base: 42,
            position: 50,
            now: 2000,
            globals: vec![9, 9, 9, 9],
            memories: vec![
                MemoryDelta {
                    size: 3,
                    pages: vec![(3, page(0xbb)), (40, page(0x02))],
                },
                MemoryDelta::default(),
            ],
        };
        let decoded = Delta::decode(&delta.encode()).expect("round trip");
        assert_eq!(decoded, delta);
        let mut folded = start.clone();
        folded.apply(&decoded).expect("in order");
        assert_eq!(folded.position, 50);
        assert_eq!(folded.memories[0].size, 3);
        assert_eq!(folded.memories[0].pages[&3], page(0xbb));
        assert_eq!(folded.memories[0].pages[&17], page(0x01));
        assert_eq!(folded.globals, [9, 9, 9, 9]);
        // Applying it twice, or to the wrong base, is refused.
        assert!(matches!(
            folded.apply(&decoded),
            Err(SnapshotError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn two_deltas_folded_equal_both_applied() {
        let start = sample();
        let delta = |base, position, pages: Vec<(u32, Page)>| Delta {
            module: start.module,
            base,
            position,
            now: position * 10,
            globals: vec![position as u8; 4],
            memories: vec![
                MemoryDelta { size: 3, pages },
                MemoryDelta {
                    size: 1,
                    pages: vec![],
                },
            ],
        };
        let first = delta(42, 45, vec![(3, page(0x10)), (9, page(0x11))]);
        let second = delta(45, 47, vec![(3, page(0x20)), (40, page(0x21))]);
        let mut stepwise = start.clone();
        stepwise.apply(&first).expect("first");
        stepwise.apply(&second).expect("second");
        let mut folded = first.clone();
        folded.then(second.clone()).expect("in order");
        let mut at_once = start.clone();
        at_once.apply(&folded).expect("folded");
        assert_eq!(at_once, stepwise);
        assert_eq!(folded.page_count(), 3);
        // A delta that does not follow is refused.
        assert!(matches!(
            folded.then(first),
            Err(SnapshotError::OutOfOrder { .. })
        ));
    }

    #[test]
    fn damage_is_detected_with_a_clear_error() {
        let bytes = sample().encode();
        let mut flipped = bytes.clone();
        flipped[60] ^= 1;
        assert_eq!(Image::decode(&flipped), Err(SnapshotError::BadChecksum));
        assert_eq!(
            Image::decode(&bytes[..bytes.len() - 1]),
            Err(SnapshotError::BadChecksum)
        );
        assert_eq!(
            Image::decode(b"hello world, this is not it"),
            Err(SnapshotError::NotASnapshot)
        );
        let mut future = bytes.clone();
        future[8] = 2;
        assert_eq!(
            Image::decode(&future),
            Err(SnapshotError::UnknownVersion(2))
        );
        assert!(matches!(
            Delta::decode(&bytes),
            Err(SnapshotError::WrongKind { .. })
        ));
    }

    /// Re-seals tampered bytes with a valid checksum, to reach the checks
    /// behind it.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        body.truncate(body.len() - 8);
        let sum = xxhash_rust::xxh3::xxh3_64(&body);
        body.extend_from_slice(&sum.to_le_bytes());
        body
    }

    #[test]
    fn structural_lies_behind_a_valid_checksum_are_refused() {
        let bytes = sample().encode();
        // The first memory's page count (after header, globals, memory count and size).
        let at = 8 + 2 + 1 + 32 + 24 + 4 + 4 + 4 + 4;
        let mut huge = bytes.clone();
        huge[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Image::decode(&reseal(huge)),
            Err(SnapshotError::Malformed(_))
        ));
        let mut unordered = bytes.clone();
        unordered[at + 4..at + 8].copy_from_slice(&99u32.to_le_bytes());
        assert!(matches!(
            Image::decode(&reseal(unordered)),
            Err(SnapshotError::Malformed(_))
        ));
    }

    /// Encodes `image` with its one memory's pages given as `data`, one
    /// zstd frame made by `frame`, behind a valid checksum.
    fn with_frame(image: &Image, frame: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let memory = &image.memories[0];
        let raw: Vec<u8> = memory
            .pages
            .values()
            .flat_map(|p| p.iter().copied())
            .collect();
        // The image without its pages: the memory's size, no indices, an
        // empty payload.
        let mut bare = image.clone();
        bare.memories[0].pages.clear();
        let mut out = bare.encode();
        // Cut its page count, empty payload's length and checksum, then
        // write the pages' indices and the given frame.
        out.truncate(out.len() - 8 - 8);
        out.extend_from_slice(&(memory.pages.len() as u32).to_le_bytes());
        for index in memory.pages.keys() {
            out.extend_from_slice(&index.to_le_bytes());
        }
        let payload = frame(&raw);
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        out.extend_from_slice(&[0; 8]);
        reseal(out)
    }

    fn one_memory() -> Image {
        let mut image = Image::fresh(ModuleHash([7; 32]), vec![1, 2, 3, 4], [2]);
        image.memories[0].pages.insert(3, page(0xaa));
        image.memories[0].pages.insert(17, page(0x01));
        image
    }

    #[test]
    fn snapshots_compressed_in_one_piece_decode_as_before() {
        // Hosts before page-by-page streaming wrote each memory as one
        // zstd frame of all its pages, compressed at once; both ways of
        // writing are the same format, read by one decoder.
        let image = one_memory();
        let whole = with_frame(&image, |raw| {
            zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd")
        });
        assert_eq!(Image::decode(&whole), Ok(image.clone()));
        // And what this host streams, an older one reads in one piece.
        let pages: Vec<(u32, &[u8])> = image.memories[0]
            .pages
            .iter()
            .map(|(i, p)| (*i, &p[..]))
            .collect();
        let mut frame = Vec::new();
        compress_pages(&pages, &mut frame);
        let raw: Vec<u8> = pages.iter().flat_map(|(_, p)| p.iter().copied()).collect();
        assert_eq!(
            zstd::bulk::decompress(&frame, raw.len()).expect("one piece"),
            raw
        );
        assert_eq!(with_frame(&image, |_| frame.clone()), image.encode());
    }

    #[test]
    fn a_frame_that_disagrees_with_its_page_list_is_refused() {
        let image = one_memory();
        let compress = |raw: &[u8]| zstd::bulk::compress(raw, ZSTD_LEVEL).expect("zstd");
        let cases = [
            (
                "a page short",
                with_frame(&image, |raw| compress(&raw[PAGE..])),
            ),
            (
                "a byte short",
                with_frame(&image, |raw| compress(&raw[1..])),
            ),
            (
                "a byte over",
                with_frame(&image, |raw| compress(&[raw, &[0]].concat())),
            ),
            (
                "a truncated frame",
                with_frame(&image, |raw| {
                    let frame = compress(raw);
                    frame[..frame.len() - 3].to_vec()
                }),
            ),
            (
                "bytes after the frame",
                with_frame(&image, |raw| [compress(raw), vec![0]].concat()),
            ),
        ];
        for (what, bytes) in cases {
            let decoded = Image::decode(&bytes);
            assert!(
                matches!(decoded, Err(SnapshotError::Malformed(_))),
                "{what}: {:?}",
                decoded.map(|i| i.dirty_bytes())
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, failure_persistence: None, ..Default::default() })]

        /// The fuzz target's property, bounded, in every test run: mutated
        /// snapshots (re-sealed past the checksum) decode or fail cleanly.
        #[test]
        fn mutated_snapshots_decode_or_fail_cleanly(
            edits in proptest::collection::vec((0usize..400, proptest::prelude::any::<u8>()), 1..6),
            cut in 0usize..400,
            delta in proptest::prelude::any::<bool>(),
        ) {
            let image = sample();
            let mut bytes = if delta {
                let mut d = Delta { module: image.module, base: 1, position: 2, now: 3, globals: vec![5; 4], memories: vec![] };
                d.memories.push(MemoryDelta { size: 1, pages: vec![(2, page(9))] });
                d.encode()
            } else {
                image.encode()
            };
            for (at, value) in edits {
                let at = at % bytes.len();
                bytes[at] = value;
            }
            if cut < bytes.len() && cut > 16 {
                bytes.truncate(cut);
            }
            let sealed = reseal(bytes.clone());
            for candidate in [&bytes, &sealed] {
                if let Ok(image) = Image::decode(candidate) {
                    proptest::prop_assert_eq!(Image::decode(&image.encode()), Ok(image));
                }
                if let Ok(delta) = Delta::decode(candidate) {
                    proptest::prop_assert_eq!(Delta::decode(&delta.encode()), Ok(delta));
                }
            }
        }
    }
}
