// Types for baton-client.js, written from host/node/PROTOCOL.md.

/** A place in a session's event stream. Positions only grow. */
export interface Position {
  /** Ownership epoch. */
  epoch: number;
  /** Journal position. */
  seq: number;
}

export type SessionStatus = "running" | "finished";

/** Events of one call, as this client may see them. */
export interface EventBatch<Event = unknown> {
  type?: "events";
  epoch: number;
  seq: number;
  events: Event[];
}

/** The node's answer to a join: the view now, and what was missed. */
export interface Joined<View = unknown, Event = unknown, Result = unknown> {
  type: "joined";
  /** The session's module, `name@version`. */
  module: string;
  /** The player joined as; `null` for a spectator. */
  player: string | null;
  /** The last position `view` reflects. */
  position: Position;
  status: SessionStatus;
  result: Result | null;
  view: View;
  /** Events after the `after` position sent, oldest first; already in `view`. */
  missed: EventBatch<Event>[];
  /** `after` was too old to replay: trust `view`. */
  resync: boolean;
}

export type Ack =
  | { type: "ack"; id: string; result: "accepted"; seq: number }
  | { type: "ack"; id: string; result: "rejected"; seq: number; reason: string };

export interface ErrorMessage {
  type: "error";
  id: string | null;
  /** As in HTTP (`not_found`, `unavailable`, …) plus `bad_message` and `rate_limited`. */
  code: string;
  message: string;
}

export type ServerMessage<View = unknown, Event = unknown, Result = unknown> =
  | Joined<View, Event, Result>
  | ({ type: "events" } & EventBatch<Event>)
  | Ack
  | ErrorMessage;

export type ClientMessage<Action = unknown> =
  | { type: "join"; token?: string; after?: Position }
  | { type: "act"; id: string; action: Action };

export declare const CloseCode: Readonly<{
  GoingAway: 1001;
  Abnormal: 1006;
  TooBig: 1009;
  BadMessage: 4400;
  BadToken: 4401;
  NoSession: 4404;
  TooSlow: 4408;
  Flooding: 4429;
}>;

export declare class BatonError extends Error {
  readonly code: string;
  constructor(code: string, message: string);
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface ClientOptions {
  /** The play endpoint: `ws://host/v1/sessions/<id>/play` (see `playUrl`). */
  url: string;
  /** The player's token; none to watch as a spectator. */
  token?: string;
  /** Resume after this position. */
  after?: Position;
  /** First reconnect delay in ms (100). */
  minDelayMs?: number;
  /** Longest reconnect delay in ms (5000). */
  maxDelayMs?: number;
  /** A WebSocket implementation, where there is no global one. */
  WebSocket?: typeof WebSocket;
}

export interface ClientEvents<View, Event, Result> {
  joined: Joined<View, Event, Result>;
  events: EventBatch<Event>;
  state: ConnectionState;
  error: BatonError;
}

/** The WebSocket URL of a session's play endpoint on a node's HTTP base URL. */
export declare function playUrl(base: string, session: string): string;

/** One connection to one session that reconnects and resumes by itself. */
export declare class BatonClient<Action = unknown, View = unknown, Event = unknown, Result = unknown> {
  constructor(options: ClientOptions);
  readonly url: string;
  readonly token: string | null;
  /** The last position seen. */
  readonly position: Position | null;
  readonly state: ConnectionState;
  /** How many times the client joined (1 + reconnects). */
  readonly joins: number;
  /** Actions sent and not yet answered. */
  readonly pending: number;
  on<K extends keyof ClientEvents<View, Event, Result>>(
    type: K,
    handler: (value: ClientEvents<View, Event, Result>[K]) => void,
  ): () => void;
  /** Resolves with the ack (accepted or rejected); rejects with a `BatonError`. */
  act(action: Action, options?: { id?: string }): Promise<Ack>;
  close(): void;
}
