//! Secrets: random tokens, stored only as hashes, compared in constant time.

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::NodeError;

/// `bytes` random bytes from the OS, as hex.
pub(crate) fn random_hex(bytes: usize) -> Result<String, NodeError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)
        .map_err(|e| NodeError::Internal(format!("no randomness from the OS: {e}")))?;
    Ok(hex(&buf))
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of `token`, as hex.
pub(crate) fn sha256_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// Equality that takes the same time wherever the inputs differ.
pub(crate) fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The node's operator token when none is configured: made once, kept in
/// `<data_dir>/operator-token` (mode 0600) for the CLI and the operator.
pub(crate) fn operator_token(data_dir: &Path) -> Result<String, NodeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = data_dir.join("operator-token");
    if let Ok(token) = std::fs::read_to_string(&path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let token = random_hex(24)?;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| NodeError::Internal(format!("writing {}: {e}", path.display())))?;
    std::io::Write::write_all(&mut file, token.as_bytes())
        .map_err(|e| NodeError::Internal(format!("writing {}: {e}", path.display())))?;
    Ok(token)
}
