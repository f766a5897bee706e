// The Baton player client: one WebSocket to a session, with automatic
// reconnect and resume by position. No dependencies; runs in browsers and in
// any runtime with a WHATWG WebSocket. Protocol: host/node/PROTOCOL.md.
//
//   import { BatonClient } from "./baton-client.js";
//   const client = new BatonClient({ url, token });
//   client.on("joined", (j) => render(j.view));
//   client.on("events", (batch) => apply(batch.events));
//   const ack = await client.act({ type: "move", dq: 1, dr: 0 });

/** Close codes the node sends (PROTOCOL.md, "Close codes"). */
export const CloseCode = Object.freeze({
  GoingAway: 1001,
  Abnormal: 1006,
  TooBig: 1009,
  BadMessage: 4400,
  BadToken: 4401,
  NoSession: 4404,
  TooSlow: 4408,
  Flooding: 4429,
});

// Retrying these cannot help: the request itself is wrong.
const FATAL = new Set([CloseCode.TooBig, CloseCode.BadMessage, CloseCode.BadToken, CloseCode.NoSession]);

/** An action the node did not take, or a connection that cannot go on. */
export class BatonError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "BatonError";
    /** `rate_limited`, `unauthorized`, `closed`, a close code's name, … */
    this.code = code;
  }
}

/** The WebSocket URL of a session's play endpoint on a node's HTTP base URL. */
export function playUrl(base, session) {
  const url = new URL(`v1/sessions/${encodeURIComponent(session)}/play`, base.endsWith("/") ? base : `${base}/`);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.toString();
}

let clientCount = 0;

/**
 * One player's (or a spectator's) connection to one session. It stays
 * connected: after a deploy, a crash or a network blip it reconnects with the
 * last position it saw and receives exactly the events it missed. Actions
 * sent while disconnected wait and go out, with the same id, after the next
 * join; the node applies an id at most once, so nothing is lost or doubled.
 */
export class BatonClient {
  /**
   * @param {object} options
   * @param {string} options.url the play endpoint, `ws://host/v1/sessions/<id>/play` (see `playUrl`)
   * @param {string} [options.token] the player's token; none to watch as a spectator
   * @param {{epoch: number, seq: number}} [options.after] resume after this position
   * @param {number} [options.minDelayMs] first reconnect delay (100)
   * @param {number} [options.maxDelayMs] longest reconnect delay (5000)
   * @param {typeof WebSocket} [options.WebSocket] a WebSocket implementation
   */
  constructor({ url, token, after, minDelayMs = 100, maxDelayMs = 5000, WebSocket: Socket = globalThis.WebSocket }) {
    if (!url) throw new TypeError("BatonClient needs the session's play `url`");
    if (!Socket) throw new TypeError("no WebSocket implementation: pass one as `WebSocket`");
    this.url = url;
    this.token = token ?? null;
    /** The last position seen: events up to it are delivered. */
    this.position = after ?? null;
    /** `connecting`, `open`, `reconnecting` or `closed`. */
    this.state = "connecting";
    /** How many times the client joined (1 + reconnects). */
    this.joins = 0;
    this.#Socket = Socket;
    this.#minDelay = minDelayMs;
    this.#maxDelay = maxDelayMs;
    this.#delay = minDelayMs;
    this.#prefix = `c${Date.now().toString(36)}${(clientCount++).toString(36)}${Math.random().toString(36).slice(2, 6)}-`;
    this.#connect();
  }

  #Socket;
  #socket = null;
  #handlers = new Map();
  #pending = new Map(); // id -> { action, resolve, reject }
  #next = 0;
  #prefix;
  #minDelay;
  #maxDelay;
  #delay;
  #timer = null;
  #closed = false;

  /**
   * Listens for `joined` (the view after every (re)join), `events` (one
   * batch: `{epoch, seq, events}`), `state` (connection state changed),
   * `error` (an `error` message not tied to an action, or a fatal close).
   * Returns a function that stops listening.
   */
  on(type, handler) {
    if (!this.#handlers.has(type)) this.#handlers.set(type, new Set());
    this.#handlers.get(type).add(handler);
    return () => this.#handlers.get(type).delete(handler);
  }

  /**
   * Sends an action. Resolves with the ack, `{id, result: "accepted", seq}`
   * or `{id, result: "rejected", seq, reason}`; rejects with a `BatonError`
   * if the node refused to take it (rate limit, spectator, …) or the client
   * was closed first. Safe across reconnects.
   */
  act(action, { id } = {}) {
    if (this.#closed) return Promise.reject(new BatonError("closed", "the client is closed"));
    const actionId = id ?? `${this.#prefix}${this.#next++}`;
    return new Promise((resolve, reject) => {
      this.#pending.set(actionId, { action, resolve, reject });
      if (this.state === "open") this.#send({ type: "act", id: actionId, action });
    });
  }

  /** Actions sent and not yet answered. */
  get pending() {
    return this.#pending.size;
  }

  /** Closes for good; pending actions are rejected. */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#timer);
    this.#socket?.close(1000, "bye");
    this.#fail(new BatonError("closed", "the client was closed"));
    this.#setState("closed");
  }

  #emit(type, value) {
    for (const handler of this.#handlers.get(type) ?? []) {
      try {
        handler(value);
      } catch (e) {
        console.error(`a BatonClient "${type}" handler threw`, e);
      }
    }
  }

  #setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.#emit("state", state);
  }

  #send(message) {
    this.#socket.send(JSON.stringify(message));
  }

  #fail(error) {
    for (const { reject } of this.#pending.values()) reject(error);
    this.#pending.clear();
  }

  #connect() {
    const socket = new this.#Socket(this.url);
    this.#socket = socket;
    socket.onopen = () => {
      const join = { type: "join" };
      if (this.token) join.token = this.token;
      if (this.position) join.after = this.position;
      this.#send(join);
    };
    socket.onmessage = (message) => this.#receive(message.data);
    socket.onclose = (event) => this.#closedBy(event);
  }

  #receive(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      this.#emit("error", new BatonError("bad_message", "the node sent something that is not JSON"));
      return;
    }
    switch (message.type) {
      case "joined": {
        this.joins += 1;
        this.#delay = this.#minDelay;
        this.position = message.position;
        this.#setState("open");
        this.#emit("joined", message);
        // Resend what is unanswered: an id already applied gets its first answer.
        for (const [id, { action }] of this.#pending) this.#send({ type: "act", id, action });
        break;
      }
      case "events": {
        // Positions only grow; anything at or before ours was delivered.
        if (this.position && message.epoch === this.position.epoch && message.seq <= this.position.seq) break;
        this.position = { epoch: message.epoch, seq: message.seq };
        this.#emit("events", message);
        break;
      }
      case "ack": {
        const waiting = this.#pending.get(message.id);
        this.#pending.delete(message.id);
        waiting?.resolve(message);
        break;
      }
      case "error": {
        const error = new BatonError(message.code, message.message);
        const waiting = message.id != null ? this.#pending.get(message.id) : undefined;
        if (waiting) {
          this.#pending.delete(message.id);
          waiting.reject(error);
        } else {
          this.#emit("error", error);
        }
        break;
      }
      default:
        // A newer node may send more: ignore what we do not know.
        break;
    }
  }

  #closedBy(event) {
    this.#socket = null;
    if (this.#closed) return;
    if (FATAL.has(event.code)) {
      this.#closed = true;
      const error = new BatonError(`close_${event.code}`, event.reason || `closed with ${event.code}`);
      this.#fail(error);
      this.#emit("error", error);
      this.#setState("closed");
      return;
    }
    this.#setState("reconnecting");
    // Flooding means slow down; anything else is worth retrying soon.
    const base = event.code === CloseCode.Flooding ? Math.max(this.#delay, 1000) : this.#delay;
    const wait = base / 2 + Math.random() * (base / 2);
    this.#delay = Math.min(this.#delay * 2, this.#maxDelay);
    this.#timer = setTimeout(() => this.#connect(), wait);
  }
}
