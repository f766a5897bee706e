// The lobby: create a game through the management API, hand out links.
const $ = (id) => document.getElementById(id);

// A link printed by `baton serve` on loopback carries the operator token in
// the fragment (never sent to the server); keep it for this tab only.
const fragment = new URLSearchParams(location.hash.slice(1));
if (fragment.has("operator")) {
  sessionStorage.setItem("baton-operator", fragment.get("operator"));
  history.replaceState(null, "", location.pathname);
}
const savedToken = sessionStorage.getItem("baton-operator");
if (savedToken) {
  $("operator").value = savedToken;
  $("operator-row").hidden = true;
}

const DEFAULT_OPTIONS = { minotaur: '{"radius": 3}', "connect-four": "{}" };

async function problem(response) {
  try {
    const body = await response.json();
    return body.error?.message ?? `${response.status} ${response.statusText}`;
  } catch {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModules() {
  const response = await fetch("/v1/modules");
  if (!response.ok) {
    $("create-error").textContent =
      response.status === 404
        ? "Management calls are on another address on this node: create games with the CLI."
        : `Could not list games: ${await problem(response)}`;
    $("create-button").disabled = true;
    return;
  }
  const modules = await response.json();
  // Newest version of each game first.
  modules.sort((a, b) => a.name.localeCompare(b.name) || b.version.localeCompare(a.version, undefined, { numeric: true }));
  const select = $("module");
  select.replaceChildren(
    ...modules.map((m) => {
      const option = document.createElement("option");
      option.value = m.id;
      option.textContent = m.id;
      option.dataset.name = m.name;
      return option;
    }),
  );
  const minotaur = modules.find((m) => m.name === "minotaur");
  if (minotaur) select.value = minotaur.id;
}

$("module").addEventListener("change", () => {
  const name = $("module").selectedOptions[0]?.dataset.name;
  if (name in DEFAULT_OPTIONS) $("options").value = DEFAULT_OPTIONS[name];
});

function playersFrom(text) {
  const seen = new Set();
  return text
    .split(",")
    .map((name) => name.trim())
    .filter(Boolean)
    .map((name) => {
      const base = name.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "") || "player";
      let id = base;
      for (let n = 2; seen.has(id); n++) id = `${base}-${n}`;
      seen.add(id);
      return { id, name };
    });
}

function link(label, href, testId) {
  const item = document.createElement("li");
  const anchor = document.createElement("a");
  anchor.href = href;
  anchor.target = "_blank";
  anchor.textContent = label;
  anchor.dataset.testid = testId;
  item.append(anchor, " ", Object.assign(document.createElement("code"), { textContent: new URL(href, location.href).href }));
  return item;
}

$("create").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("create-error").textContent = "";
  let options;
  try {
    options = JSON.parse($("options").value || "null");
  } catch (e) {
    $("create-error").textContent = `The options are not valid JSON: ${e.message}`;
    return;
  }
  const players = playersFrom($("players").value);
  const token = $("operator").value.trim();
  if (!token) {
    $("create-error").textContent = "Paste the operator token first.";
    $("operator-row").hidden = false;
    return;
  }
  const response = await fetch("/v1/sessions", {
    method: "POST",
    headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
    body: JSON.stringify({ module: $("module").value, players, options }),
  });
  if (!response.ok) {
    if (response.status === 401) $("operator-row").hidden = false;
    $("create-error").textContent = await problem(response);
    return;
  }
  sessionStorage.setItem("baton-operator", token);
  const session = await response.json();
  $("created-id").textContent = session.id;
  $("links").replaceChildren(
    ...players.map((p) =>
      link(`Play as ${p.name}`, `/play#session=${session.id}&token=${session.tokens[p.id]}`, `play-${p.id}`),
    ),
    link("Watch as a spectator", `/play#session=${session.id}`, "watch"),
  );
  $("created").hidden = false;
});

$("watch").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("watch-id").value.trim();
  const session = new URLSearchParams(text.split("#")[1] ?? "").get("session") ?? text;
  if (session) location.href = `/play#session=${encodeURIComponent(session)}`;
});

loadModules().catch((e) => ($("create-error").textContent = `Could not reach the node: ${e.message}`));
