//! Journal entries: every call that enters the guest, with its inputs.
//!
//! Rules are deterministic, so a snapshot at position `p` plus the entries
//! from `p` on reproduce the session's memory byte for byte. Calls that only
//! read (view, status, save) are journaled too: they run guest code, which
//! moves the guest's allocator, and exact replay needs every byte.

use baton_sdk::wire::{ModuleInfo, Outcome, Refusal, SetupArgs, Status, Viewer};
use serde::{Deserialize, Serialize};

/// One call into a session, as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    /// The session's position before this call (0 for the first).
    pub position: u64,
    /// The session clock the call ran at, in milliseconds.
    pub now: u64,
    /// What was called.
    pub call: Call,
}

/// A call into the rules, with everything it depends on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    /// `info`.
    Info,
    /// `start`.
    Start(SetupArgs),
    /// `act`, with the client's action id (for the node's deduplication).
    Act {
        /// Whose action.
        player: String,
        /// The action's JSON.
        action: String,
        /// The id the client gave the action, if any.
        client_action_id: Option<String>,
    },
    /// `tick`.
    Tick,
    /// `view`.
    View(Viewer),
    /// `status`.
    Status,
    /// `save`.
    Save,
    /// `load`.
    Load {
        /// The schema the bytes were saved with.
        from_schema: u32,
        /// The saved session.
        bytes: Vec<u8>,
    },
    /// The session moves onto another version of its rules: an upgrade,
    /// or the way back from one (see [`Switch`]).
    Switch(Switch),
}

/// A session moving onto a fresh instance of another module: `load` of
/// `bytes` (what the old instance's `save` returned, or what it returned
/// before an upgrade that is being rolled back) with the rules' `migrate`,
/// then a `view` for each of `viewers` to check that the new version can
/// show the game. Nothing of the old instance is needed to replay it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    /// The SHA-256 of the new module's component.
    pub module: [u8; 32],
    /// The state schema the bytes were saved with.
    pub from_schema: u32,
    /// The saved session.
    pub bytes: Vec<u8>,
    /// Who must be able to see the game afterwards.
    pub viewers: Vec<Viewer>,
}

impl Switch {
    /// The new module's identity.
    pub fn module_hash(&self) -> crate::ModuleHash {
        crate::ModuleHash(self.module)
    }
}

impl Call {
    /// The call's name in the WIT contract.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Info => "info",
            Call::Start(_) => "start",
            Call::Act { .. } => "act",
            Call::Tick => "tick",
            Call::View(_) => "view",
            Call::Status => "status",
            Call::Save => "save",
            Call::Load { .. } => "load",
            Call::Switch(_) => "switch",
        }
    }
}

/// What a call returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// From `info`.
    Info(ModuleInfo),
    /// From `start` or `act`.
    Outcome(Result<Outcome, Refusal>),
    /// From `tick`.
    Ticked(Outcome),
    /// From `view`.
    View(Result<String, String>),
    /// From `status`.
    Status(Status),
    /// From `save`.
    Saved(Result<Vec<u8>, String>),
    /// From `load`.
    Loaded(Result<Option<u64>, String>),
    /// From a [`Switch`] that happened: the next tick time.
    Switched(Option<u64>),
}

impl Reply {
    /// Bytes of payload the rules returned, for the output limit.
    pub fn size(&self) -> usize {
        fn outcome(o: &Outcome) -> usize {
            o.events.iter().map(|e| e.body.len() + 16).sum::<usize>()
                + o.log.iter().map(String::len).sum::<usize>()
        }
        match self {
            Reply::Info(i) => i.name.len() + i.version.len(),
            Reply::Outcome(Ok(o)) | Reply::Ticked(o) => outcome(o),
            Reply::Outcome(Err(r)) => r.reason.len() + r.log.iter().map(String::len).sum::<usize>(),
            Reply::View(Ok(s) | Err(s)) => s.len(),
            Reply::Status(Status::Finished(s)) => s.len(),
            Reply::Status(Status::Running) => 0,
            Reply::Saved(Ok(b)) => b.len(),
            Reply::Saved(Err(s)) | Reply::Loaded(Err(s)) => s.len(),
            Reply::Loaded(Ok(_)) | Reply::Switched(_) => 0,
        }
    }

    /// When the rules next need a tick, if this reply says.
    pub fn next_tick(&self) -> Option<Option<u64>> {
        match self {
            Reply::Outcome(Ok(o)) | Reply::Ticked(o) => Some(o.next_tick),
            Reply::Loaded(Ok(next)) | Reply::Switched(next) => Some(*next),
            _ => None,
        }
    }
}

impl JournalEntry {
    /// The entry's compact binary form (postcard).
    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain owned data into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Reads an entry written by [`JournalEntry::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        postcard::from_bytes(bytes)
    }
}
