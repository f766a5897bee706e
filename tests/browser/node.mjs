// A real `baton` node for browser tests: started as a process on loopback,
// stopped with a real SIGTERM.
import { spawn } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { createInterface } from "node:readline";

const repo = resolve(import.meta.dirname, "../..");

/** The baton binary: $BATON_BIN, or the workspace's debug build. */
export function batonBinary() {
  const path = process.env.BATON_BIN ?? join(repo, "target/debug/baton");
  if (!existsSync(path)) {
    throw new Error(`no baton binary at ${path}: run \`cargo build -p baton\` (scripts/test does) or set BATON_BIN`);
  }
  return path;
}

/** A port free on 127.0.0.1 right now. */
export async function freePort() {
  const server = createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address();
  server.close();
  await once(server, "close");
  return port;
}

/** One node's data directory and port, kept across restarts. */
export class TestNode {
  static async create() {
    const node = new TestNode();
    node.dataDir = mkdtempSync(join(tmpdir(), "baton-browser-"));
    node.port = await freePort();
    node.url = `http://127.0.0.1:${node.port}`;
    return node;
  }

  /** Starts the node and waits for its ready lines; returns the lobby link it printed. */
  async start() {
    const child = spawn(batonBinary(), ["serve", "--listen", `127.0.0.1:${this.port}`, "--data-dir", this.dataDir], {
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.stderr = "";
    this.output = "";
    child.stderr.on("data", (chunk) => (this.stderr += chunk));
    // Read stdout to the end (logs go there too), watching for the lobby line.
    const lines = createInterface({ input: child.stdout });
    this.lobby = await new Promise((resolve, reject) => {
      lines.on("line", (line) => {
        this.output += `${line}\n`;
        const link = line.match(/play in a browser: (\S+)/);
        if (link) resolve(link[1]);
      });
      child.once("exit", (code) => reject(new Error(`baton serve exited (${code}) before it was ready:\n${this.output}${this.stderr}`)));
    });
    return this.lobby;
  }

  /** SIGTERM, as a deploy does; resolves with the exit code. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null) return child?.exitCode;
    child.kill("SIGTERM");
    const [code, signal] = await once(child, "exit");
    return code ?? signal;
  }

  async dispose() {
    if (this.child && this.child.exitCode === null) this.child.kill("SIGKILL");
    rmSync(this.dataDir, { recursive: true, force: true });
  }
}

/** Chromium from the OS packages, headless, with nothing reaching out. */
export async function launchChromium() {
  const { chromium } = await import("playwright-core");
  const executablePath = process.env.CHROMIUM ?? "/usr/bin/chromium";
  if (!existsSync(executablePath)) {
    throw new Error(`no Chromium at ${executablePath}: run scripts/setup (it installs the OS package) or set CHROMIUM`);
  }
  return chromium.launch({
    executablePath,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
}
