//! A player's WebSocket to a session owned by another node: relayed over a
//! QUIC stream, message by message, and following the session when it
//! moves, so that the player notices nothing.
//!
//! The relay keeps what it needs to pick up where it was: the player's
//! token, the last position the player was sent, and the actions not yet
//! answered. When the session moves (the owner says where, in a handoff;
//! or its record names a new owner, after a failover), the relay joins
//! there with that position, sends the unanswered actions again (their ids
//! make that safe) and passes on only the events the player missed.

use std::future::Future;
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use serde_json::Value;

use tokio::sync::mpsc;

use crate::api::{App, PlayerSocket, TunnelSocket, close, close_with};
use crate::cluster::{Forward, Relayed, read_json, write_json};
use crate::error::NodeError;

/// Where a moved connection picks up (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Resume {
    /// The player's token (`None`: a spectator).
    pub(crate) token: Option<String>,
    /// The last position the player was sent.
    pub(crate) after: Option<u64>,
    /// Actions sent and not answered, as `(id, message)`.
    pub(crate) unanswered: Vec<(String, String)>,
    /// The player sent its join (a relay that moves before cannot rejoin
    /// for it).
    pub(crate) joined: bool,
    /// The player got its `joined` answer: a rejoin's `joined` then only
    /// passes on the events the player missed.
    pub(crate) answered: bool,
}

impl Resume {
    /// Notes a message from the player; the first join gives the token.
    fn note_from_player(&mut self, text: &str) {
        let Ok(message) = serde_json::from_str::<Value>(text) else {
            return;
        };
        match message.get("type").and_then(Value::as_str) {
            Some("join") => {
                self.joined = true;
                self.token = message
                    .get("token")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                self.after = message
                    .get("after")
                    .and_then(|p| p.get("seq"))
                    .and_then(Value::as_u64);
            }
            Some("act") => {
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.unanswered.push((id.to_owned(), text.to_owned()));
                }
            }
            _ => {}
        }
    }

    /// Notes a message for the player; returns what to pass on (a rejoin's
    /// `joined` becomes the events the player missed).
    fn note_from_owner(&mut self, text: String, rejoined: &mut bool) -> Vec<String> {
        let Ok(message) = serde_json::from_str::<Value>(&text) else {
            return vec![text];
        };
        let seen = |after: &mut Option<u64>, seq: Option<u64>| {
            if let Some(seq) = seq {
                *after = Some(after.map_or(seq, |a| a.max(seq)));
            }
        };
        match message.get("type").and_then(Value::as_str) {
            Some("joined") => {
                self.answered = true;
                let position = message
                    .get("position")
                    .and_then(|p| p.get("seq"))
                    .and_then(Value::as_u64);
                let resync = message.get("resync").and_then(Value::as_bool) == Some(true);
                if std::mem::take(rejoined) && !resync {
                    let missed: Vec<String> = message
                        .get("missed")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|batch| {
                            let mut batch = batch.clone();
                            seen(&mut self.after, batch.get("seq").and_then(Value::as_u64));
                            batch
                                .as_object_mut()?
                                .insert("type".into(), Value::from("events"));
                            serde_json::to_string(&batch).ok()
                        })
                        .collect();
                    seen(&mut self.after, position);
                    return missed;
                }
                seen(&mut self.after, position);
            }
            Some("events") => seen(&mut self.after, message.get("seq").and_then(Value::as_u64)),
            Some("ack" | "error") => {
                if let Some(id) = message.get("id").and_then(Value::as_str) {
                    self.unanswered.retain(|(sent, _)| sent != id);
                }
            }
            _ => {}
        }
        vec![text]
    }

    /// The join that resumes at the new owner.
    fn join(&self) -> String {
        let mut join = serde_json::json!({ "type": "join" });
        if let Some(token) = &self.token {
            join["token"] = Value::from(token.clone());
        }
        if let Some(seq) = self.after {
            join["after"] = serde_json::json!({ "epoch": 1, "seq": seq });
        }
        if self.answered {
            // The player holds the view: only the missed events go on.
            join["view"] = Value::from(false);
        }
        join.to_string()
    }
}

/// One end of a relayed player connection: a QUIC stream pair to another
/// node, or a channel pair inside this node when a relay follows its
/// session here. Messages are read by a task of their own, so that waiting
/// for one in a `select!` never loses half a frame.
pub(crate) struct Pipe {
    send: PipeSend,
    recv: mpsc::Receiver<Relayed>,
}

enum PipeSend {
    Quic(quinn::SendStream),
    Local(mpsc::Sender<Relayed>),
}

impl Pipe {
    pub(crate) fn quic(send: quinn::SendStream, mut recv: quinn::RecvStream) -> Pipe {
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            while let Ok(message) = read_json::<Relayed>(&mut recv).await {
                if tx.send(message).await.is_err() {
                    break;
                }
            }
        });
        Pipe {
            send: PipeSend::Quic(send),
            recv: rx,
        }
    }

    /// Both ends of a connection inside this node.
    fn local() -> (Pipe, Pipe) {
        let (a_tx, a_rx) = mpsc::channel(16);
        let (b_tx, b_rx) = mpsc::channel(16);
        let end = |send, recv| Pipe {
            send: PipeSend::Local(send),
            recv,
        };
        (end(a_tx, b_rx), end(b_tx, a_rx))
    }

    pub(crate) async fn write(&mut self, message: Relayed) -> Result<(), NodeError> {
        match &mut self.send {
            PipeSend::Quic(send) => write_json(send, &message).await,
            PipeSend::Local(send) => send
                .send(message)
                .await
                .map_err(|_| NodeError::Unavailable("the session's connection ended".into())),
        }
    }

    /// The next message; `None` once the other end is gone. Cancel-safe.
    pub(crate) async fn read(&mut self) -> Option<Relayed> {
        self.recv.recv().await
    }

    /// Ends this side: the other end reads `None` once it read the rest.
    pub(crate) fn finish(&mut self) {
        match &mut self.send {
            PipeSend::Quic(send) => {
                let _ = send.finish();
            }
            // Dropping the sender ends it; swap in a closed one.
            PipeSend::Local(send) => *send = mpsc::channel(1).0,
        }
    }
}

/// Opens a relayed connection to session `id` on node `owner`, which may be
/// this node (the session moved here): then its owner's end runs here.
async fn open(app: &App, id: &str, owner: &str) -> Result<Pipe, NodeError> {
    let mesh = app
        .node
        .mesh
        .get()
        .ok_or_else(|| NodeError::Unavailable("this node is not in a cluster".into()))?;
    if owner == mesh.name() {
        let (mine, theirs) = Pipe::local();
        tokio::spawn(crate::api::play_here(
            app.clone(),
            id.to_owned(),
            TunnelSocket::new(theirs),
        ));
        return Ok(mine);
    }
    let (mut send, recv) = mesh.open(owner).await.map_err(NodeError::Unavailable)?;
    write_json(
        &mut send,
        &Forward::Play {
            session: id.to_owned(),
        },
    )
    .await?;
    Ok(Pipe::quic(send, recv))
}

/// How long a relay waits for the owner to take a relayed connection.
const OPEN_WAIT: Duration = Duration::from_secs(5);

/// How long a relay waits for a session whose owner vanished to have a
/// new one before it tells the player to reconnect.
const FAILOVER_WAIT: Duration = Duration::from_secs(10);

/// Relays `socket` to session `id` on node `owner`, following the session
/// wherever it moves. `resume` is `None` for a fresh connection (the
/// player's join passes through), or where a moved connection picks up.
pub(crate) async fn relay(
    app: App,
    id: String,
    mut owner: String,
    mut socket: WebSocket,
    resume: Option<Resume>,
) {
    let Some(mesh) = app.node.mesh.get().cloned() else {
        return;
    };
    let mut rejoin = resume.is_some();
    let mut resume = resume.unwrap_or_default();
    let mut shutdown = app.shutdown.clone();
    let mut records = mesh.records_changed();
    // Records this node held when the relay followed an owner's word are
    // older than that word: they must not send the player back.
    let mut stale = Stale::default();
    if rejoin {
        stale.note_hint(mesh.record(&id).await.map(|r| r.epoch));
    }
    loop {
        let opened = async {
            let mut pipe = open(&app, &id, &owner).await?;
            if rejoin {
                pipe.write(Relayed::Text(resume.join())).await?;
                for (_, act) in &resume.unanswered {
                    pipe.write(Relayed::Text(act.clone())).await?;
                }
            }
            Ok::<_, NodeError>(pipe)
        };
        let opened = tokio::time::timeout(OPEN_WAIT, opened).await;
        let mut pipe = match opened {
            Ok(Ok(pipe)) => pipe,
            // The owner is gone or going: follow the session to the node
            // that takes it over, if one does in time.
            failed => {
                match new_owner(&app, &id, &owner, stale).await {
                    Some(to) => {
                        tracing::debug!(session = %id, from = %owner, %to, "a relay follows the session past an owner that does not answer");
                        owner = to;
                        rejoin = resume.joined;
                        continue;
                    }
                    None => {
                        let reason = match failed {
                        Ok(Err(e)) => e.to_string(),
                        _ => "the session's node does not answer; reconnect with your last position".into(),
                    };
                        return close_with(socket, close::MOVED, &reason).await;
                    }
                }
            }
        };
        let mut rejoined = rejoin && resume.answered;
        // Where to go next: the owner said, or it vanished.
        let next: Option<String> = loop {
            tokio::select! {
                from_player = socket.recv() => {
                    let relayed = match from_player {
                        Some(Ok(Message::Text(text))) => {
                            resume.note_from_player(&text);
                            Relayed::Text(text.to_string())
                        }
                        Some(Ok(Message::Close(frame))) => {
                            let (code, reason) = frame.map_or((1000, String::new()), |f| (f.code, f.reason.to_string()));
                            let _ = pipe.write(Relayed::Close { code, reason }).await;
                            pipe.finish();
                            return;
                        }
                        Some(Ok(_)) => continue,
                        None | Some(Err(_)) => {
                            pipe.finish();
                            return;
                        }
                    };
                    if pipe.write(relayed).await.is_err() {
                        break None;
                    }
                }
                from_owner = pipe.read() => {
                    match from_owner {
                        Some(Relayed::Text(text)) => {
                            for text in resume.note_from_owner(text, &mut rejoined) {
                                if socket.send(Message::Text(Utf8Bytes::from(text))).await.is_err() {
                                    pipe.finish();
                                    return;
                                }
                            }
                        }
                        Some(Relayed::Moved { to }) => {
                            stale.note_hint(mesh.record(&id).await.map(|r| r.epoch));
                            break Some(to);
                        }
                        // The owner is shutting down with the session still
                        // there (its drain deadline expired): the session
                        // fails over, and the player follows it.
                        Some(Relayed::Close { code: close::GOING_AWAY, .. }) => break None,
                        Some(Relayed::Close { code, reason }) => return close_with(socket, code, &reason).await,
                        None => break None,
                    }
                }
                // The records may name a new owner before the old one
                // says so, or when it vanished without a word.
                Ok(()) = records.changed() => {
                    if let Some(record) = mesh.record(&id).await
                        && record.owner.name != owner
                        && stale.is_newer(record.epoch)
                    {
                        break Some(record.owner.name);
                    }
                }
                _ = shutdown.changed() => {
                    pipe.finish();
                    return close_with(socket, close::GOING_AWAY, "the node is shutting down; reconnect with your last position").await;
                }
            }
        };
        pipe.finish();
        let next = match next {
            Some(to) => Some(to),
            None => new_owner(&app, &id, &owner, stale).await,
        };
        match next {
            Some(to) => {
                tracing::debug!(session = %id, from = %owner, %to, "a relayed player follows the session");
                owner = to;
                // Before the player's join, its join still passes through.
                rejoin = resume.joined;
            }
            None => {
                return close_with(
                    socket,
                    close::MOVED,
                    "the session's node went away; reconnect with your last position",
                )
                .await;
            }
        }
    }
}

/// Which of this node's records of a session a relay may follow: an
/// owner that hands a session off tells its relays where it went before
/// the record of the move reaches this node, and the record this node
/// still holds then names the old owner. Following it would send the
/// player back and forth.
#[derive(Clone, Copy, Debug, Default)]
struct Stale {
    /// Records of this epoch or older are stale.
    up_to: u64,
}

impl Stale {
    /// A node said where the session went, while this node's record was
    /// of `epoch`: that record, and older ones, are stale.
    fn note_hint(&mut self, epoch: Option<u64>) {
        self.up_to = self.up_to.max(epoch.unwrap_or(0));
    }

    fn is_newer(&self, epoch: u64) -> bool {
        epoch > self.up_to
    }
}

/// The owner of session `id` once it is no longer `old` (a failover),
/// waiting on the cluster's records for at most [`FAILOVER_WAIT`].
async fn new_owner(app: &App, id: &str, old: &str, stale: Stale) -> Option<String> {
    let mesh = app.node.mesh.get()?;
    let mut records = mesh.records_changed();
    let wait = async {
        loop {
            match mesh.record(id).await {
                Some(record) if record.owner.name != old && stale.is_newer(record.epoch) => {
                    return Some(record.owner.name);
                }
                None => return None,
                Some(_) => {}
            }
            records.changed().await.ok()?;
        }
    };
    tokio::time::timeout(FAILOVER_WAIT, wait)
        .await
        .ok()
        .flatten()
}

/// Tells a player whose session moved to an unknown node to reconnect.
pub(crate) async fn close_moved(socket: impl PlayerSocket) {
    close_with(
        socket,
        close::MOVED,
        "the session moved; reconnect with your last position",
    )
    .await;
}

/// A connection the owner serves directly, whose session just moved to
/// `to`: it becomes a relay there (a WebSocket here), or tells the relay
/// at the other end where to go (a tunnel).
pub(crate) trait Follow: PlayerSocket + Sized {
    fn follow(
        self,
        app: App,
        id: String,
        to: Option<String>,
        resume: Resume,
    ) -> impl Future<Output = ()> + Send;
}

impl Follow for WebSocket {
    async fn follow(self, app: App, id: String, to: Option<String>, resume: Resume) {
        match to {
            Some(to) => relay(app, id, to, self, Some(resume)).await,
            None => close_moved(self).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stale;

    #[test]
    fn a_record_from_before_the_owners_word_does_not_send_the_player_back() {
        let mut stale = Stale::default();
        assert!(stale.is_newer(1), "with no word yet, every record counts");
        // The owner (epoch 1 in this node's record) says the session went on.
        stale.note_hint(Some(1));
        assert!(!stale.is_newer(1), "the record of the old owner is stale");
        // The move's own record (the handoff skips an epoch at most once
        // more), or a later failover's, is followed.
        assert!(stale.is_newer(2) && stale.is_newer(3));
        // A later word while this node still holds no newer record changes
        // nothing; a word with no record known keeps what was known.
        stale.note_hint(Some(1));
        stale.note_hint(None);
        assert!(!stale.is_newer(1) && stale.is_newer(2));
    }
}
