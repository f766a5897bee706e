// The play page: one session, as a player (token in the link) or a
// spectator. Minotaur gets a hex board; other games a generic view.
import { BatonClient, playUrl } from "/web/baton-client.js";

const $ = (id) => document.getElementById(id);
const el = (tag, props = {}, ...children) => {
  const e = Object.assign(document.createElement(tag), props);
  e.append(...children);
  return e;
};
const SVG = "http://www.w3.org/2000/svg";
const svg = (tag, attrs = {}) => {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
};

const params = new URLSearchParams(location.hash.slice(1));
const session = params.get("session");
const token = params.get("token") ?? undefined;

function showProblem(text) {
  $("problem").textContent = text;
  $("problem").hidden = !text;
}

function log(text, seq) {
  const item = el("li", { textContent: text });
  if (seq != null) item.dataset.seq = seq;
  $("log").prepend(item);
}

// --- minotaur ----------------------------------------------------------------

const DIRECTIONS = [
  { name: "east", dq: 1, dr: 0 },
  { name: "north-east", dq: 1, dr: -1 },
  { name: "north-west", dq: 0, dr: -1 },
  { name: "west", dq: -1, dr: 0 },
  { name: "south-west", dq: -1, dr: 1 },
  { name: "south-east", dq: 0, dr: 1 },
];
const COLORS = ["#2f6fde", "#d1495b", "#2e9b57", "#edae49", "#8e5ac8", "#00798c", "#9c6644", "#555"];

class Minotaur {
  constructor(act) {
    this.act = act;
    this.view = null;
  }

  name(id) {
    return this.view.players.find((p) => p.id === id)?.name ?? id;
  }

  me() {
    return this.view.players.find((p) => p.id === this.view.you);
  }

  reset(view) {
    this.view = view;
  }

  /** Applies one event to the view, and says what happened. */
  apply(event) {
    const v = this.view;
    switch (event.type) {
      case "started":
        v.deadline = event.deadline;
        return "The game began.";
      case "registered": {
        const me = this.me();
        if (me) Object.assign(me, { ready: true, registered: event.action });
        return `You registered ${describe(event.action, this)} for round ${event.round}.`;
      }
      case "ready": {
        const p = v.players.find((p) => p.id === event.player);
        if (p) p.ready = true;
        return `${this.name(event.player)} is ready.`;
      }
      case "round": {
        const parts = [];
        for (const r of event.results) {
          const p = v.players.find((p) => p.id === r.player);
          const e = r.effect;
          if (e.effect === "moved") {
            p.pos = e.to;
            parts.push(`${p.name} moved ${describe(r.action, this).replace("move ", "")}`);
          } else if (e.effect === "hit") {
            const target = v.players.find((t) => t.id === r.action.target);
            target.hp = e.hp_left;
            parts.push(`${p.name} hit ${target.name} (${e.hp_left} left)`);
          } else if (e.effect === "blocked") {
            parts.push(`${p.name} was blocked`);
          } else if (p.hp > 0) {
            parts.push(`${p.name} waited`);
          }
        }
        for (const id of event.eliminated) {
          const p = v.players.find((p) => p.id === id);
          if (p) p.hp = 0;
          parts.push(`${this.name(id)} fell`);
        }
        for (const p of v.players) Object.assign(p, { ready: false, registered: null });
        v.round = event.round + 1;
        if (event.deadline != null) v.deadline = event.deadline;
        return `Round ${event.round}: ${parts.join("; ") || "nothing happened"}.`;
      }
      case "game_over":
        v.outcome = { winner: event.winner, draw: event.draw, rounds: event.rounds };
        return outcomeText(v.outcome, this);
      default:
        return JSON.stringify(event);
    }
  }

  render() {
    const v = this.view;
    const me = this.me();
    const canAct = me && me.hp > 0 && !v.outcome;
    const size = 26;
    const at = ({ q, r }) => [size * Math.sqrt(3) * (q + r / 2), size * 1.5 * r];
    const hexPoints = (cx, cy) =>
      Array.from({ length: 6 }, (_, i) => {
        const a = (Math.PI / 180) * (60 * i - 30);
        return `${(cx + size * Math.cos(a)).toFixed(1)},${(cy + size * Math.sin(a)).toFixed(1)}`;
      }).join(" ");
    const extent = size * (2 * v.radius + 1) * Math.sqrt(3) / 2 + 4;
    const board = svg("svg", {
      class: "board",
      viewBox: `${-extent} ${-extent} ${2 * extent} ${2 * extent}`,
      role: "img",
      "aria-label": `Minotaur board, radius ${v.radius}`,
    });
    const occupied = new Map(v.players.filter((p) => p.hp > 0).map((p) => [`${p.pos.q},${p.pos.r}`, p]));
    const moves = new Map();
    if (canAct) {
      for (const d of DIRECTIONS) {
        const to = { q: me.pos.q + d.dq, r: me.pos.r + d.dr };
        if (onBoard(to, v.radius) && !occupied.has(`${to.q},${to.r}`)) moves.set(`${to.q},${to.r}`, d);
      }
    }
    const chosen = me?.registered?.type === "move" ? `${me.pos.q + me.registered.dq},${me.pos.r + me.registered.dr}` : null;
    for (let q = -v.radius; q <= v.radius; q++) {
      for (let r = -v.radius; r <= v.radius; r++) {
        if (!onBoard({ q, r }, v.radius)) continue;
        const [x, y] = at({ q, r });
        const key = `${q},${r}`;
        const move = moves.get(key);
        const cell = svg("polygon", {
          points: hexPoints(x, y),
          class: `cell${move ? " target" : ""}${key === chosen ? " chosen" : ""}`,
          "data-cell": key,
        });
        if (move) cell.addEventListener("click", () => this.act({ type: "move", dq: move.dq, dr: move.dr }));
        board.append(cell);
      }
    }
    v.players.forEach((p, seat) => {
      const [x, y] = at(p.pos);
      const attackable = canAct && p.id !== me.id && p.hp > 0 && adjacent(p.pos, me.pos);
      const group = svg("g", { class: `fighter${p.hp === 0 ? " down" : ""}${attackable ? " target" : ""}`, "data-player": p.id });
      const circle = svg("circle", { cx: x, cy: y, r: size * 0.62, fill: COLORS[seat % COLORS.length] });
      const label = svg("text", { x, y });
      label.textContent = `${p.name.slice(0, 2)}${p.hp}`;
      const title = svg("title");
      title.textContent = `${p.name}: ${p.hp} hit points${p.ready ? ", ready" : ""}`;
      group.append(circle, label, title);
      if (attackable) group.addEventListener("click", () => this.act({ type: "attack", target: p.id }));
      board.append(group);
    });
    $("board").replaceChildren(board);

    const panel = [];
    panel.push(el("p", {}, el("strong", { textContent: `Round ${v.round}` }), " ", el("span", { id: "clock", className: "muted" })));
    const list = el("ul", { className: "players" });
    for (const p of v.players) {
      const item = el("li", { textContent: `${p.name}${p.id === v.you ? " (you)" : ""}: ` });
      const hp = el("span", { textContent: `${p.hp} hp` });
      hp.dataset.testid = `hp-${p.id}`;
      item.append(hp);
      if (p.hp === 0) item.append(" · fallen");
      else if (p.ready && !v.outcome) item.append(" · ready");
      list.append(item);
    }
    panel.push(list);
    if (canAct) {
      const buttons = el("div", { className: "pad" });
      // Laid out as they point: north-west north-east / west east / south-west south-east.
      for (const d of [2, 1, 3, 0, 4, 5].map((i) => DIRECTIONS[i])) {
        const to = { q: me.pos.q + d.dq, r: me.pos.r + d.dr };
        const button = el("button", { type: "button", className: "plain", textContent: d.name, disabled: !moves.has(`${to.q},${to.r}`) });
        button.dataset.testid = `move-${d.name}`;
        button.addEventListener("click", () => this.act({ type: "move", dq: d.dq, dr: d.dr }));
        buttons.append(button);
      }
      for (const p of v.players) {
        if (p.id === me.id || p.hp === 0 || !adjacent(p.pos, me.pos)) continue;
        const button = el("button", { type: "button", textContent: `attack ${p.name}` });
        button.dataset.testid = `attack-${p.id}`;
        button.addEventListener("click", () => this.act({ type: "attack", target: p.id }));
        buttons.append(button);
      }
      panel.push(el("h2", { textContent: "Your move" }), buttons);
      panel.push(el("p", {
        className: "muted",
        textContent: me.registered ? `Registered: ${describe(me.registered, this)}. You may change it until the round resolves.` : "Click a highlighted cell to move, or a neighbour to attack.",
      }));
    }
    $("panel").replaceChildren(...panel);
    this.tick();
    return v.outcome ? outcomeText(v.outcome, this) : null;
  }

  /** Updates the round clock. */
  tick() {
    const clock = $("clock");
    if (!clock || this.view.outcome) return;
    const left = Math.max(0, Math.ceil((this.view.deadline - Date.now()) / 1000));
    clock.textContent = `${left} s left`;
  }
}

function onBoard({ q, r }, radius) {
  return Math.abs(q) <= radius && Math.abs(r) <= radius && Math.abs(q + r) <= radius;
}

function adjacent(a, b) {
  return DIRECTIONS.some((d) => a.q + d.dq === b.q && a.r + d.dr === b.r);
}

function describe(action, game) {
  if (!action) return "nothing";
  if (action.type === "attack") return `attack ${game.name(action.target)}`;
  const d = DIRECTIONS.find((d) => d.dq === action.dq && d.dr === action.dr);
  return `move ${d?.name ?? `${action.dq},${action.dr}`}`;
}

function outcomeText(outcome, game) {
  if (outcome.winner) return `${game.name(outcome.winner)} wins after ${outcome.rounds} rounds.`;
  if (outcome.draw?.length) return `A draw between ${outcome.draw.map((id) => game.name(id)).join(" and ")}.`;
  return `The game is over after ${outcome.rounds} rounds.`;
}

// --- any other game: the view as JSON, actions as JSON ------------------------

class Generic {
  constructor(act) {
    this.act = act;
    this.view = null;
  }

  reset(view) {
    this.view = view;
  }

  apply(event) {
    // Only the rules know how an event changes the view: ask for it again.
    this.refresh();
    return JSON.stringify(event);
  }

  async refresh() {
    const response = await fetch(`/v1/sessions/${encodeURIComponent(session)}/view`, {
      headers: token ? { authorization: `Bearer ${token}` } : {},
    });
    if (response.ok) {
      this.view = (await response.json()).view;
      this.render();
    }
  }

  render() {
    $("board").replaceChildren(el("pre", { className: "view", textContent: JSON.stringify(this.view, null, 2) }));
    if (!token || $("panel").childElementCount) return null;
    const input = el("textarea", { rows: 3, placeholder: '{"type": "…"}' });
    const send = el("button", { type: "button", textContent: "Send action" });
    send.addEventListener("click", () => {
      try {
        this.act(JSON.parse(input.value));
      } catch (e) {
        showProblem(`That action is not valid JSON: ${e.message}`);
      }
    });
    $("panel").replaceChildren(el("label", { textContent: "Action (JSON)" }), input, el("p", {}, send));
    return null;
  }

  tick() {}
}

// --- wiring ------------------------------------------------------------------

if (!session) {
  showProblem("This link has no session: open a game from the lobby.");
  $("connection").hidden = true;
} else {
  const client = new BatonClient({ url: playUrl(location.origin, session), token });
  // For tests and the curious: the client and every event position seen.
  window.baton = { client, seqs: [] };
  let game = null;

  const act = async (action) => {
    showProblem("");
    if (client.state !== "open") log("Not connected: your action will be sent when the connection is back.");
    try {
      const ack = await client.act(action);
      if (ack.result === "rejected") showProblem(`Refused: ${ack.reason}`);
    } catch (e) {
      showProblem(`Not sent: ${e.message}`);
    }
  };

  const show = (outcome) => {
    $("banner").textContent = outcome ?? "";
    $("banner").hidden = !outcome;
    if (outcome) $("banner").dataset.testid = "outcome";
  };

  client.on("state", (state) => {
    const text = { connecting: "connecting", open: "connected", reconnecting: "reconnecting…", closed: "disconnected" }[state];
    $("connection").textContent = text;
    $("connection").dataset.state = state;
  });
  client.on("joined", (joined) => {
    const name = joined.module.split("@")[0];
    if (!game) {
      game = name === "minotaur" ? new Minotaur(act) : new Generic(act);
      $("title").textContent = joined.module;
      document.title = `${joined.module} · Baton`;
      $("who").textContent = joined.player ? `playing as ${joined.player}` : "watching as a spectator";
    }
    if (client.joins > 1) {
      log(joined.resync ? "Reconnected; caught up from the current view." : `Reconnected; ${joined.missed.length} missed updates replayed.`);
    }
    // Missed events happened after the view we had: tell them from it, then
    // take the node's view, which already reflects them.
    for (const batch of joined.missed) {
      window.baton.seqs.push(batch.seq);
      for (const event of batch.events) log(game.view ? game.apply(event) : JSON.stringify(event), batch.seq);
    }
    game.reset(joined.view);
    show(game.render());
  });
  client.on("events", (batch) => {
    window.baton.seqs.push(batch.seq);
    for (const event of batch.events) log(game.apply(event), batch.seq);
    show(game.render());
  });
  client.on("error", (e) => showProblem(e.message));
  setInterval(() => game?.tick(), 250);
}
