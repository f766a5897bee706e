//! Moving live sessions to another version of their rules.
//!
//! An upgrade runs between two calls, under the session's lock, so no
//! action is lost or applied twice: the old instance's `save` (journaled
//! like any call), then [`Session::switch`](baton_runtime::Session::switch)
//! onto the new module, which runs `load` (the rules' `migrate`) and a view
//! for every player and a spectator in a shadow instance first. Only if all
//! of that succeeds does the session switch; the switch is a journal entry
//! (so replays, replicas and takeovers follow it), and a full snapshot goes
//! to the replica right after. Otherwise the session runs on, untouched,
//! and the operator gets the reason.
//!
//! The new version is then on trial for `upgrade_trial_calls` calls: if it
//! fails one (a trap, fuel, memory), the session switches back to the old
//! version with the state saved before the upgrade (again a journal
//! entry), its players resync, and the upgrade is reported rolled back.
//! The trial lives in the owner's memory: a session that moves during it
//! keeps the new version without one.

use std::sync::Arc;

use baton_runtime::{Call, Reply, RuleModule, SwitchError};
use baton_sdk::wire::Viewer;
use serde::{Deserialize, Serialize};

use crate::error::NodeError;
use crate::node::{Node, SessionCell, SessionState, now_ms};

/// What an operator asks for: one session, or every session of a module
/// (or a share of them: a canary), moved to `to`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeRequest {
    /// The version to move to, `name@version`.
    pub to: String,
    /// One session, by id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Every session running this module (`name@version`, or a game
    /// name for all its versions), on every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// The share of those sessions to upgrade, `0 < fraction <= 1` (a
    /// canary); all of them if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<f64>,
    /// When each session switches.
    #[serde(default)]
    pub at: SafePoint,
}

/// When a session switches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SafePoint {
    /// Between its next two calls.
    #[default]
    Now,
    /// Right after its next tick (for round-based rules, the end of the
    /// round being played), or now if it waits for no tick.
    NextTick,
}

/// How one session's upgrade ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Ended {
    /// It runs the new version now (on trial for a while).
    Moved,
    /// It stays on its version: the new one could not take it, or it
    /// could not be upgraded now.
    Stayed,
    /// Left alone: outside the canary.
    Skipped,
}

/// One session's part in an upgrade.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SessionUpgrade {
    /// The session.
    pub session: String,
    /// The node it runs on.
    pub node: String,
    /// `name@version` it ran.
    pub from: String,
    /// How it ended.
    pub result: Ended,
    /// Why, unless it moved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What an upgrade did, in numbers and session by session.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct UpgradeReport {
    /// Sessions now on the new version.
    pub moved: usize,
    /// Sessions left on their version, with a reason each.
    pub stayed: usize,
    /// Sessions outside the canary.
    pub skipped: usize,
    /// Nodes that could not be asked (their sessions are not counted).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreachable: Vec<String>,
    /// Each session.
    pub sessions: Vec<SessionUpgrade>,
}

impl UpgradeReport {
    fn add(&mut self, upgrade: SessionUpgrade) {
        match upgrade.result {
            Ended::Moved => self.moved += 1,
            Ended::Stayed => self.stayed += 1,
            Ended::Skipped => self.skipped += 1,
        }
        self.sessions.push(upgrade);
    }

    fn merge(&mut self, other: UpgradeReport) {
        self.unreachable.extend(other.unreachable);
        for upgrade in other.sessions {
            self.add(upgrade);
        }
    }
}

/// A session's last upgrade, as its summary shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeState {
    /// `name@version` it ran before.
    pub from: String,
    /// `name@version` it was upgraded to.
    pub to: String,
    /// The journal position of the switch.
    pub at: u64,
    /// `on_trial`, `done` or `rolled_back`.
    pub state: TrialState,
    /// Why it was rolled back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where an upgraded session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrialState {
    /// A failure of the new version would still take it back.
    OnTrial,
    /// The new version passed its trial.
    Done,
    /// The new version failed; the session runs the old one again.
    RolledBack,
}

/// An upgrade on trial: what the session goes back to.
pub(crate) struct Trial {
    from: Arc<RuleModule>,
    from_schema: u32,
    saved: Vec<u8>,
    calls_left: u64,
}

/// Whoever must be able to see a session after a switch.
fn viewers(cell: &SessionCell) -> Vec<Viewer> {
    let mut viewers: Vec<Viewer> = cell
        .record
        .players
        .iter()
        .map(|p| Viewer::Player(p.id.clone()))
        .collect();
    viewers.push(Viewer::Spectator);
    viewers
}

/// Whether session `id` is in a canary of `fraction`: a stable choice by
/// id, so that asking again for a larger share keeps the first ones in.
fn in_canary(id: &str, fraction: f64) -> bool {
    let bucket = canary_bucket(id);
    (bucket as f64) < fraction * 10_000.0
}

/// A number in `0..10_000` from a session id.
fn canary_bucket(id: &str) -> u64 {
    let digest = crate::tokens::sha256_hex(id);
    u64::from_str_radix(&digest[..8], 16).unwrap_or(0) % 10_000
}

impl Node {
    /// Upgrades what `request` names, on this node and (for a bulk upgrade,
    /// or a session owned elsewhere) on the others.
    pub async fn upgrade(
        self: &Arc<Self>,
        request: UpgradeRequest,
    ) -> Result<UpgradeReport, NodeError> {
        check(&request)?;
        let mut report = UpgradeReport::default();
        let Some(mesh) = self.mesh.get() else {
            return self.upgrade_here(request).await;
        };
        if let Some(id) = &request.session
            && let Some(owner) = self.owner_elsewhere(id).await?
        {
            return crate::cluster::forward_upgrade(mesh, &owner, request).await;
        }
        if request.from.is_some() {
            // Every node upgrades its own sessions.
            for peer in mesh.peers().await {
                match crate::cluster::forward_upgrade(mesh, &peer.name, request.clone()).await {
                    Ok(theirs) => report.merge(theirs),
                    Err(e) => {
                        tracing::warn!(node = %peer.name, error = %e, "a node could not be asked to upgrade");
                        report.unreachable.push(peer.name.clone());
                    }
                }
            }
        }
        report.merge(self.upgrade_here(request).await?);
        Ok(report)
    }

    /// Upgrades the sessions `request` names that run on this node.
    pub(crate) async fn upgrade_here(
        self: &Arc<Self>,
        request: UpgradeRequest,
    ) -> Result<UpgradeReport, NodeError> {
        check(&request)?;
        let target = self.resolve_or_fetch(&request.to).await?;
        let cells: Vec<Arc<SessionCell>> = match (&request.session, &request.from) {
            (Some(id), _) => vec![self.cell_by_id(id)?],
            (None, Some(_)) => self.cells(),
            (None, None) => Vec::new(),
        };
        let mut report = UpgradeReport::default();
        let node = self.name();
        let mut upgrades = Vec::new();
        for cell in cells {
            let from = cell.state.lock().await.module.name_version();
            if let Some(wanted) = &request.from
                && from != *wanted
                && from.split('@').next() != Some(wanted)
            {
                continue;
            }
            if from == target.name_version() && request.session.is_none() {
                continue;
            }
            let id = cell.record.id.clone();
            if request.session.is_none()
                && let Some(fraction) = request.fraction
                && !in_canary(&id, fraction)
            {
                report.add(SessionUpgrade {
                    session: id,
                    node: node.clone(),
                    from,
                    result: Ended::Skipped,
                    reason: Some(format!("outside the canary of {}%", fraction * 100.0)),
                });
                continue;
            }
            let (this, target) = (self.clone(), target.clone());
            let to = target.name_version();
            let at = request.at;
            upgrades.push(tokio::spawn(async move {
                let ended = this.upgrade_session(&cell, target, at).await;
                let (result, reason) = match ended {
                    Ok(()) => (Ended::Moved, None),
                    Err(e) => (Ended::Stayed, Some(e.to_string())),
                };
                let counted = if result == Ended::Moved {
                    "moved"
                } else {
                    "stayed"
                };
                this.metrics.upgrade(&to, counted);
                SessionUpgrade {
                    session: id,
                    node: this.name(),
                    from,
                    result,
                    reason,
                }
            }));
        }
        for upgrade in upgrades {
            let upgrade = upgrade
                .await
                .map_err(|e| NodeError::Internal(e.to_string()))?;
            report.add(upgrade);
        }
        report.sessions.sort_by(|a, b| a.session.cmp(&b.session));
        Ok(report)
    }

    /// Moves one session onto `target` (see the module docs).
    async fn upgrade_session(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        target: Arc<RuleModule>,
        at: SafePoint,
    ) -> Result<(), NodeError> {
        let mut state = cell.state.clone().lock_owned().await;
        if at == SafePoint::NextTick {
            state = self.after_next_tick(cell, state).await?;
        }
        let from = state.module.clone();
        if from.info().name != target.info().name {
            return Err(NodeError::BadRequest(format!(
                "{} runs {}; it cannot become {}: a session keeps its game",
                cell.record.id,
                from.name_version(),
                target.name_version()
            )));
        }
        if from.hash() == target.hash() {
            return Err(NodeError::Conflict(format!(
                "{} already runs {}",
                cell.record.id,
                target.name_version()
            )));
        }
        if let baton_sdk::wire::Status::Finished(_) = state.status {
            return Err(NodeError::Conflict(format!(
                "{} is over; a finished game keeps its version",
                cell.record.id
            )));
        }
        // The old instance's save, journaled like any call.
        let (state_back, applied) = self.apply_blocking(cell, state, Call::Save).await?;
        state = state_back;
        let applied = applied?;
        let saved = match &applied.reply {
            Reply::Saved(Ok(bytes)) => bytes.clone(),
            Reply::Saved(Err(reason)) => {
                return Err(NodeError::Refused(format!(
                    "{} could not save the session: {reason}",
                    from.name_version()
                )));
            }
            other => return Err(NodeError::Internal(format!("save answered {other:?}"))),
        };
        self.make_durable(cell, &mut state, applied).await?;
        // The switch, tried in a shadow instance first.
        let from_schema = from.info().state_schema;
        let viewers = viewers(cell);
        let (this, switched_cell, to) = (self.clone(), cell.clone(), target.clone());
        let bytes = saved.clone();
        let (state_back, switched) = tokio::task::spawn_blocking(move || {
            let mut state = state;
            let switched = this.switch(&switched_cell, &mut state, to, from_schema, bytes, viewers);
            (state, switched)
        })
        .await
        .map_err(|e| NodeError::Internal(e.to_string()))?;
        state = state_back;
        let applied = switched?;
        let position = applied.entry.position;
        self.make_durable(cell, &mut state, applied).await?;
        // The replica gets the new instance whole, not as a delta.
        self.snapshot_in_background(cell, &mut state);
        state.trial = Some(Trial {
            from: from.clone(),
            from_schema,
            saved,
            calls_left: self.config.upgrade_trial_calls,
        });
        state.upgrade = Some(UpgradeState {
            from: from.name_version(),
            to: target.name_version(),
            at: position,
            state: TrialState::OnTrial,
            reason: None,
        });
        tracing::info!(session = %cell.record.id, from = %from.name_version(), to = %target.name_version(), position, "upgraded a live session");
        Ok(())
    }

    /// Waits for the session's next tick (running it if it is due) and
    /// returns with its lock held right after it.
    async fn after_next_tick(
        self: &Arc<Self>,
        cell: &Arc<SessionCell>,
        mut state: tokio::sync::OwnedMutexGuard<SessionState>,
    ) -> Result<tokio::sync::OwnedMutexGuard<SessionState>, NodeError> {
        let Some(due) = state.next_tick else {
            return Ok(state);
        };
        let wait = due.saturating_sub(now_ms());
        if wait > 0 {
            drop(state);
            tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
            state = cell.state.clone().lock_owned().await;
            if state.next_tick != Some(due) {
                // The ticker ran it meanwhile.
                return Ok(state);
            }
        }
        let (state_back, applied) = self.apply_blocking(cell, state, Call::Tick).await?;
        let mut state = state_back;
        self.make_durable(cell, &mut state, applied?).await?;
        Ok(state)
    }

    /// Switches the live session onto `to` with `saved` (blocking): the
    /// journal entry to make durable.
    pub(crate) fn switch(
        &self,
        cell: &SessionCell,
        state: &mut SessionState,
        to: Arc<RuleModule>,
        from_schema: u32,
        saved: Vec<u8>,
        viewers: Vec<Viewer>,
    ) -> Result<crate::node::Applied, NodeError> {
        self.wake(cell, state)?;
        let session = state
            .live
            .as_mut()
            .ok_or_else(|| NodeError::Internal("the session is not live".into()))?;
        let (reply, entry) = session
            .switch(to.clone(), from_schema, saved, viewers, now_ms())
            .map_err(|e| match e {
                SwitchError::NewVersion(reason) => NodeError::Refused(reason),
                SwitchError::Session(e) => NodeError::from_call(e),
            })?;
        state.module = to;
        Ok(crate::node::Applied::remembered(
            &self.config,
            state,
            entry,
            reply,
        ))
    }

    /// After a call on an upgraded session: counts down its trial, or, if
    /// the new version failed the call, switches back (blocking). Returns
    /// the way back's journal entry, to make durable.
    pub(crate) fn judge_trial(
        &self,
        cell: &SessionCell,
        state: &mut SessionState,
        result: &Result<crate::node::Applied, NodeError>,
    ) -> Option<crate::node::Applied> {
        let trial = state.trial.as_mut()?;
        let reason = match result {
            Err(NodeError::RulesFailed(reason)) => reason.clone(),
            Ok(_) => {
                trial.calls_left = trial.calls_left.saturating_sub(1);
                if trial.calls_left == 0 {
                    state.trial = None;
                    if let Some(upgrade) = &mut state.upgrade {
                        upgrade.state = TrialState::Done;
                    }
                }
                return None;
            }
            Err(_) => return None,
        };
        let trial = state.trial.take()?;
        let to = state.module.name_version();
        let back = trial.from.name_version();
        let switched = self.switch(
            cell,
            state,
            trial.from,
            trial.from_schema,
            trial.saved,
            viewers(cell),
        );
        let why = format!("{to} failed a call on trial: {reason}");
        match switched {
            Ok(applied) => {
                tracing::warn!(session = %cell.record.id, %to, %back, %reason, "an upgraded session failed on trial; back on its old version");
                if let Some(upgrade) = &mut state.upgrade {
                    upgrade.state = TrialState::RolledBack;
                    upgrade.reason = Some(why);
                }
                self.metrics.upgrade(&to, "rolled_back");
                Some(applied)
            }
            Err(e) => {
                tracing::error!(session = %cell.record.id, %back, error = %e, "an upgraded session failed on trial, and its old version does not take it back");
                if let Some(upgrade) = &mut state.upgrade {
                    upgrade.reason = Some(format!("{why}; going back failed: {e}"));
                }
                None
            }
        }
    }
}

fn check(request: &UpgradeRequest) -> Result<(), NodeError> {
    if !request.to.contains('@') {
        return Err(NodeError::BadRequest(format!(
            "upgrade to `{}`: name the exact version, as name@version",
            request.to
        )));
    }
    match (&request.session, &request.from) {
        (Some(_), Some(_)) => Err(NodeError::BadRequest(
            "name one session or `from` (every session of a module), not both".into(),
        )),
        (None, None) => Err(NodeError::BadRequest(
            "name a session, or `from`: the module whose sessions to upgrade".into(),
        )),
        _ => match request.fraction {
            Some(f) if !(f > 0.0 && f <= 1.0) => Err(NodeError::BadRequest(format!(
                "fraction {f}: a canary is a share between 0 (excluded) and 1"
            ))),
            _ => Ok(()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_canary_keeps_its_sessions_when_it_grows() {
        let ids: Vec<String> = (0..2000).map(|i| format!("{i:016x}")).collect();
        let small: Vec<_> = ids.iter().filter(|id| in_canary(id, 0.1)).collect();
        let large: Vec<_> = ids.iter().filter(|id| in_canary(id, 0.5)).collect();
        assert!((150..250).contains(&small.len()), "{}", small.len());
        assert!((900..1100).contains(&large.len()), "{}", large.len());
        assert!(small.iter().all(|id| large.contains(id)));
        assert!(ids.iter().all(|id| in_canary(id, 1.0)));
    }

    #[test]
    fn requests_that_name_nothing_or_too_much_are_refused_with_a_reason() {
        let request = |session: Option<&str>, from: Option<&str>, fraction| UpgradeRequest {
            to: "minotaur@2.0.0".into(),
            session: session.map(Into::into),
            from: from.map(Into::into),
            fraction,
            at: SafePoint::Now,
        };
        assert!(check(&request(Some("a"), None, None)).is_ok());
        assert!(check(&request(None, Some("minotaur"), Some(0.25))).is_ok());
        for bad in [
            request(None, None, None),
            request(Some("a"), Some("minotaur"), None),
            request(None, Some("minotaur"), Some(0.0)),
            request(None, Some("minotaur"), Some(1.5)),
            UpgradeRequest {
                to: "minotaur".into(),
                ..request(Some("a"), None, None)
            },
        ] {
            let err = check(&bad).expect_err("refused");
            assert!(matches!(err, NodeError::BadRequest(_)), "{err}");
        }
    }
}
