/**
 * Starts the built server (`target/debug/server`, or `$SERVER_BIN`) for the tests: free ports,
 * a fresh embedded database in a temp dir, and the ability to stop and restart it on the same
 * ports and data dir.
 */
import { spawn, type ChildProcess } from "node:child_process";
import * as fs from "node:fs";
import * as net from "node:net";
import * as os from "node:os";
import * as path from "node:path";

/** The workspace root: the server runs from here so `target/site` resolves. */
export const WORKSPACE_ROOT = path.resolve(__dirname, "..", "..");

/** The debug build of `cargo leptos build` (it honours CARGO_TARGET_DIR, and so do we). */
const SERVER_BIN = path.resolve(
  WORKSPACE_ROOT,
  process.env.SERVER_BIN ??
    path.join(process.env.CARGO_TARGET_DIR || "target", "debug", "server"),
);
const SITE_ROOT = path.join("target", "site");

/** How long a start may take until `/readyz` answers 200. */
const READY_TIMEOUT_MS = 60_000;
/** How long a graceful stop (SIGTERM) may take. */
const STOP_TIMEOUT_MS = 20_000;
/** Lines of server output kept for failure messages. */
const OUTPUT_LINES = 200;

/** A TCP port that was free a moment ago on 127.0.0.1. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.unref();
    probe.on("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const address = probe.address();
      if (address === null || typeof address === "string") {
        probe.close();
        reject(new Error("no port"));
        return;
      }
      probe.close(() => resolve(address.port));
    });
  });
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** One server process at a time, on fixed ports and a fixed data dir. */
export class AppServer {
  private child?: ChildProcess;
  private exit?: Promise<number | string | null>;
  private exited = false;
  /** The last lines the server wrote (stdout and stderr), for failure messages. */
  readonly output: string[] = [];

  private constructor(
    readonly sitePort: number,
    readonly dbPort: number,
    readonly dataDir: string,
  ) {}

  /** Picks free ports and a fresh data dir, then starts the server and waits until ready. */
  static async start(): Promise<AppServer> {
    for (const [file, hint] of [
      [SERVER_BIN, "build it with `cargo leptos build` (make test does)"],
      [path.join(WORKSPACE_ROOT, SITE_ROOT, "pkg"), "run `cargo leptos build` to build the site"],
    ]) {
      if (!fs.existsSync(file)) {
        throw new Error(`${file} is missing: ${hint}`);
      }
    }
    const sitePort = await freePort();
    let dbPort = await freePort();
    while (dbPort === sitePort) {
      dbPort = await freePort();
    }
    const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), "realtime-e2e-"));
    const server = new AppServer(sitePort, dbPort, dataDir);
    await server.launch();
    return server;
  }

  /** The site, e.g. `http://127.0.0.1:41234`. */
  get baseURL(): string {
    return `http://127.0.0.1:${this.sitePort}`;
  }

  /** The embedded database, for the Node driver. */
  get mongoUri(): string {
    return `mongodb://127.0.0.1:${this.dbPort}/?directConnection=true`;
  }

  /** Whether a server process is running. */
  get running(): boolean {
    return this.child !== undefined && !this.exited;
  }

  /** Starts the process (again) on the same ports and data dir; resolves once `/readyz` is 200. */
  async launch(): Promise<void> {
    if (this.running) {
      throw new Error("server already running");
    }
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      LEPTOS_SITE_ADDR: `127.0.0.1:${this.sitePort}`,
      LEPTOS_SITE_ROOT: SITE_ROOT,
      EMBEDDED_DB_ADDR: `127.0.0.1:${this.dbPort}`,
      EMBEDDED_DB_PATH: this.dataDir,
      SSE_HEARTBEAT_MS: "1000",
      // Every test writes from 127.0.0.1 through the page, and the page bench edits 50 times in
      // a row: far past the default 10/s,burst=30 per address, which is not what they measure.
      WRITE_RATE_PER_IP: "1000/s,burst=1000",
      RUST_LOG: "warn",
    };
    // The embedded database, always: never a deployment from the caller's environment.
    delete env.MONGO_URI;
    delete env.MONGO_DB;
    const child = spawn(SERVER_BIN, [], {
      cwd: WORKSPACE_ROOT,
      env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    this.child = child;
    this.exited = false;
    const keep = (chunk: Buffer) => {
      for (const line of chunk.toString("utf8").split("\n")) {
        if (line.trim() !== "") {
          this.output.push(line);
        }
      }
      this.output.splice(0, Math.max(0, this.output.length - OUTPUT_LINES));
    };
    child.stdout?.on("data", keep);
    child.stderr?.on("data", keep);
    this.exit = new Promise((resolve) => {
      child.on("error", (err) => {
        this.exited = true;
        this.output.push(`spawn error: ${err.message}`);
        resolve(null);
      });
      child.on("exit", (code, signal) => {
        this.exited = true;
        resolve(code ?? signal);
      });
    });
    await this.waitReady();
  }

  private async waitReady(): Promise<void> {
    const deadline = Date.now() + READY_TIMEOUT_MS;
    let last = "no answer";
    while (Date.now() < deadline) {
      if (this.exited) {
        throw new Error(
          `server exited during start-up (${await this.exit}):\n${this.log()}`,
        );
      }
      try {
        const response = await fetch(`${this.baseURL}/readyz`, {
          signal: AbortSignal.timeout(3_000),
        });
        last = `${response.status} ${await response.text()}`;
        if (response.status === 200) {
          return;
        }
      } catch (err) {
        last = String(err);
      }
      await sleep(100);
    }
    throw new Error(
      `/readyz did not answer 200 within ${READY_TIMEOUT_MS} ms (last: ${last}):\n${this.log()}`,
    );
  }

  /** SIGTERM, then waits for the process to exit (a graceful stop must finish in time). */
  async stop(): Promise<void> {
    if (!this.running || this.child === undefined) {
      return;
    }
    this.child.kill("SIGTERM");
    const result = await Promise.race([this.exit, sleep(STOP_TIMEOUT_MS).then(() => "timeout")]);
    if (result === "timeout") {
      this.child.kill("SIGKILL");
      await this.exit;
      throw new Error(
        `server did not exit within ${STOP_TIMEOUT_MS} ms of SIGTERM:\n${this.log()}`,
      );
    }
  }

  /** Stops, then starts again on the same ports and data dir. */
  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  /** Stops the server and removes its data dir. */
  async dispose(): Promise<void> {
    try {
      await this.stop();
    } finally {
      fs.rmSync(this.dataDir, { recursive: true, force: true });
    }
  }

  /** The server's recent output. */
  log(): string {
    return this.output.join("\n");
  }
}
