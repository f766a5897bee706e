//! Snapshot and delta decoding never panics, never over-allocates, and
//! anything it accepts re-encodes to the same bytes.
#![no_main]

use baton_snapshot::{Delta, Image};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    check(data);
    // Most mutations only break the checksum; re-seal them to reach the
    // structural checks behind it.
    if data.len() > 8 {
        let mut sealed = data[..data.len() - 8].to_vec();
        let sum = xxhash_rust::xxh3::xxh3_64(&sealed);
        sealed.extend_from_slice(&sum.to_le_bytes());
        check(&sealed);
    }
});

fn check(bytes: &[u8]) {
    if let Ok(image) = Image::decode(bytes) {
        assert_eq!(Image::decode(&image.encode()).as_ref(), Ok(&image));
    }
    if let Ok(delta) = Delta::decode(bytes) {
        assert_eq!(Delta::decode(&delta.encode()).as_ref(), Ok(&delta));
    }
}
