//! Where sessions live: rendezvous (highest random weight) hashing over the
//! candidate nodes. Each session ranks every node by a hash of (session,
//! node name); it goes to the best-ranked candidates. A node joining takes
//! only the new sessions it ranks first for; live sessions never move because
//! of a join (the owner is recorded, not recomputed).

use crate::membership::{NodeId, NodeInfo};

/// FNV-1a then a 64-bit finalizer: stable across builds and platforms, so
/// every node ranks the same way.
fn weight(session: &str, node: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in session.bytes().chain([0xff]).chain(node.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// `candidates` best first for `session`.
pub fn rank<'a>(
    session: &str,
    candidates: impl IntoIterator<Item = &'a NodeId>,
) -> Vec<&'a NodeId> {
    let mut ranked: Vec<&NodeId> = candidates.into_iter().collect();
    ranked.sort_by_key(|id| std::cmp::Reverse((weight(session, &id.name), id.name.clone())));
    ranked
}

/// The nodes a new session may go to: ready, and of the newest host version
/// among the ready ones.
pub fn newest_ready<'a>(
    nodes: impl IntoIterator<Item = (&'a NodeId, &'a NodeInfo)>,
) -> Vec<&'a NodeId> {
    let ready: Vec<(&NodeId, &NodeInfo)> = nodes.into_iter().filter(|(_, i)| i.ready).collect();
    let newest = ready.iter().map(|(_, i)| i.host_version).max();
    ready
        .into_iter()
        .filter(|(_, i)| Some(i.host_version) == newest)
        .map(|(id, _)| id)
        .collect()
}

/// Owner and replica for a new session among `candidates` (rendezvous).
pub fn place<'a>(
    session: &str,
    candidates: &[&'a NodeId],
) -> Option<(&'a NodeId, Option<&'a NodeId>)> {
    let ranked = rank(session, candidates.iter().copied());
    let owner = *ranked.first()?;
    Some((owner, ranked.get(1).copied()))
}

/// A drain target for one session: among `candidates` (ready, newest
/// version), the least loaded, rendezvous order breaking ties, so that a
/// drained node's sessions spread instead of piling on one node.
pub fn drain_target<'a>(session: &str, candidates: &[(&'a NodeId, u32)]) -> Option<&'a NodeId> {
    let ranked = rank(session, candidates.iter().map(|(id, _)| *id));
    ranked.into_iter().min_by_key(|id| {
        candidates
            .iter()
            .find(|(c, _)| c == id)
            .map_or(u32::MAX, |(_, load)| *load)
    })
}
