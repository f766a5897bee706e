// Two players and a spectator play minotaur in headless Chromium against a
// real node, through the lobby and the play page, and the node restarts in
// the middle of the game: every page must recover by itself.
import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { TestNode, launchChromium } from "./node.mjs";

let node;
let browser;

before(async () => {
  node = await TestNode.create();
  await node.start();
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  await node?.dispose();
});

/** A page in its own browser context (its own storage, like another person). */
async function open(url) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push(e.message));
  // The browser itself reports reconnect attempts that found the node down.
  const expected = /^WebSocket connection to .* failed/;
  page.on("console", (m) => m.type() === "error" && !expected.test(m.text()) && problems.push(m.text()));
  await page.goto(url);
  page.problems = problems;
  return page;
}

const connected = (page) => page.locator('#connection[data-state="open"]').waitFor();
const shows = (page, testId, text) => page.getByTestId(testId).filter({ hasText: text }).waitFor();

/** Minotaur options that make the game go the same way every time. */
const OPTIONS = { radius: 2, hit_points: 2, round_ms: 600000, positions: [{ q: 0, r: 0 }, { q: 1, r: 0 }] };

async function createGame() {
  const lobby = await open(node.lobby);
  assert.match(node.lobby, /#operator=/, "on loopback, the printed link lets the lobby create games");
  await lobby.locator("#module option", { hasText: "minotaur@" }).waitFor({ state: "attached" });
  await lobby.fill("#players", "Ann, Bob");
  await lobby.fill("#options", JSON.stringify(OPTIONS));
  await lobby.click("#create-button");
  await lobby.getByTestId("watch").waitFor();
  const href = async (id) => new URL(await lobby.getByTestId(id).getAttribute("href"), node.url).href;
  const links = { ann: await href("play-ann"), bob: await href("play-bob"), watch: await href("watch") };
  assert.deepEqual(lobby.problems, []);
  await lobby.context().close();
  return links;
}

test("two players finish a minotaur game across a node restart; every page recovers by itself", async () => {
  const links = await createGame();
  const ann = await open(links.ann);
  const bob = await open(links.bob);
  const spectator = await open(links.watch);
  const pages = [ann, bob, spectator];
  await Promise.all(pages.map(connected));
  assert.equal(await spectator.getByTestId("attack-ann").count(), 0, "spectators get no controls");
  await Promise.all(pages.map((p) => shows(p, "hp-bob", "2 hp")));

  // Round 1: both attack; both drop to 1.
  await ann.getByTestId("attack-bob").click();
  await bob.getByTestId("attack-ann").click();
  for (const page of pages) {
    await shows(page, "hp-ann", "1 hp");
    await shows(page, "hp-bob", "1 hp");
  }

  // A deploy: SIGTERM, the node exits cleanly, the pages notice.
  assert.equal(await node.stop(), 0, "SIGTERM ends the node with exit code 0");
  await Promise.all(pages.map((p) => p.locator('#connection[data-state="reconnecting"]').waitFor()));

  // Ann acts while the node is down: the client keeps it and sends it after rejoining.
  await ann.getByTestId("attack-bob").click();
  assert.equal(await ann.evaluate(() => window.baton.client.pending), 1);

  await node.start();
  await Promise.all(pages.map(connected));
  for (const page of pages) {
    assert.equal(await page.evaluate(() => window.baton.client.joins), 2, "one reconnect, made by the page itself");
  }
  // Ann's queued attack reached the node: Bob's page sees her ready.
  await bob.locator("li", { hasText: "Ann: 1 hp · ready" }).waitFor();

  // Round 2: Bob tries to run; attacks land first, so he falls and Ann wins.
  await bob.getByTestId("move-east").click();
  for (const page of pages) {
    await shows(page, "outcome", "Ann wins after 2 rounds.");
    await shows(page, "hp-bob", "0 hp");
  }

  for (const page of pages) {
    const seqs = await page.evaluate(() => window.baton.seqs);
    assert.ok(seqs.length > 0);
    assert.ok(
      seqs.every((seq, i) => i === 0 || seq > seqs[i - 1]),
      `event positions strictly grow (no duplicate, no reordering): ${seqs}`,
    );
    assert.equal(await page.evaluate(() => window.baton.client.pending), 0);
    assert.deepEqual(page.problems, [], "no script errors on the page");
  }

  // The node agrees with what the pages show.
  const session = new URLSearchParams(new URL(links.watch).hash.slice(1)).get("session");
  const view = await (await fetch(`${node.url}/v1/sessions/${session}/view`)).json();
  assert.equal(view.status, "finished");
  assert.equal(view.result.winner, "ann");
  assert.deepEqual(
    view.view.players.map((p) => [p.id, p.hp]),
    [["ann", 1], ["bob", 0]],
  );
});

test("a link with a wrong token says so and stops retrying", async () => {
  const links = await createGame();
  const wrong = links.ann.replace(/token=[^&]+/, "token=not-a-token");
  const page = await open(wrong);
  await page.locator('#connection[data-state="closed"]').waitFor();
  const problem = await page.locator("#problem").textContent();
  assert.match(problem, /token/i);
  assert.equal(await page.evaluate(() => window.baton.client.joins), 0);
});

test("a player's page refuses an illegal move with the rules' reason", async () => {
  const links = await createGame();
  const ann = await open(links.ann);
  await connected(ann);
  // Not offered on the board, but a client may still send it: the rules answer.
  await ann.evaluate(() => window.baton.client.act({ type: "move", dq: 2, dr: 0 }).then((ack) => (window.lastAck = ack)));
  const ack = await ann.waitForFunction(() => window.lastAck).then((h) => h.jsonValue());
  assert.equal(ack.result, "rejected");
  assert.ok(ack.reason.length > 0);
});
