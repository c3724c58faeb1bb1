/**
 * The page's figures (`make bench-page`, release build with `--precompress`):
 *
 * 1. What a browser downloads to run the page: the WASM, JS and CSS as served with
 *    `Accept-Encoding: br`, `gzip` and none (bytes on the wire, per file and in total).
 * 2. Time from a submit in one browser to the change showing in another: 50 edits of one user's
 *    first name through the page's edit form; p50 / p99 / max.
 */
import * as http from "node:http";

import type { Page } from "@playwright/test";

import { newUser, openLive, test, type UserDoc } from "../tests/fixtures";

const EDITS = 50;

/** Bytes on the wire of `url` asked for with `encoding` (no decoding), and what was sent. */
function wireSize(url: string, encoding: string): Promise<{ bytes: number; sent: string }> {
  return new Promise((resolve, reject) => {
    const request = http.get(url, { headers: { "accept-encoding": encoding } }, (response) => {
      let bytes = 0;
      response.on("data", (chunk: Buffer) => (bytes += chunk.length));
      response.on("end", () =>
        resolve({ bytes, sent: String(response.headers["content-encoding"] ?? "identity") }),
      );
    });
    request.on("error", reject);
  });
}

const kb = (bytes: number) => `${(bytes / 1000).toFixed(1)} KB`;

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)];
}

test("page weight and submit-to-other-browser latency", async ({ page, browser, baseURL, db }) => {
  // 1. Page weight: every asset the HTML links from /pkg.
  await openLive(page);
  const assets = await page.evaluate(() =>
    [...document.querySelectorAll("link[href], script[src]")]
      .map((e) => e.getAttribute("href") ?? e.getAttribute("src") ?? "")
      .filter((u) => u.startsWith("/pkg/")),
  );
  const files = [...new Set([...assets, "/pkg/realtime.wasm"])].sort();
  const totals: Record<string, number> = { br: 0, gzip: 0, identity: 0 };
  for (const file of files) {
    const row: string[] = [];
    for (const encoding of Object.keys(totals)) {
      const { bytes, sent } = await wireSize(`${baseURL}${file}`, encoding);
      totals[encoding] += bytes;
      row.push(`${encoding}: ${kb(bytes)} (${sent})`);
    }
    console.log(`${file}: ${row.join(", ")}`);
  }
  console.log(
    `page transfer (WASM + JS + CSS): br ${kb(totals.br)}, gzip ${kb(totals.gzip)}, ` +
      `uncompressed ${kb(totals.identity)}`,
  );

  // 2. Submit in one browser, see it in another.
  const user = newUser("bench");
  await db.collection<UserDoc>("users").insertOne(user);
  const id = user._id.toHexString();
  const other = await browser.newContext({ baseURL });
  const watcher = await other.newPage();
  await openLive(watcher);
  const line = `[data-testid=user][data-id="${id}"]`;
  await watcher.waitForSelector(line);
  await page.waitForSelector(line);
  const latencies: number[] = [];
  for (let i = 0; i < EDITS; i++) {
    const fname = `Bench${i}`;
    const seen = watcher.evaluate(
      ([selector, text]) =>
        new Promise<number>((resolve) => {
          const check = () => {
            if (document.querySelector(selector)?.textContent?.startsWith(`${text} `)) {
              observer.disconnect();
              resolve(Date.now());
            }
          };
          const observer = new MutationObserver(check);
          observer.observe(document.body, { subtree: true, childList: true, characterData: true });
          check();
        }),
      [line, fname],
    );
    const submitted = await submitEdit(page, id, fname);
    latencies.push((await seen) - submitted);
  }
  await other.close();
  latencies.sort((a, b) => a - b);
  console.log(
    `submit → other browser over ${EDITS} edits: p50 ${percentile(latencies, 50)} ms, ` +
      `p99 ${percentile(latencies, 99)} ms, max ${latencies[latencies.length - 1]} ms`,
  );
});

/** Sets the first name in user `id`'s edit form and submits it as the Save button does;
 * returns the submit time (ms since the epoch). */
async function submitEdit(page: Page, id: string, fname: string): Promise<number> {
  return page.evaluate(
    ([id, fname]) => {
      const row = document.querySelector(`[data-testid=user-row][data-id="${id}"]`);
      const form = row?.querySelector<HTMLFormElement>("[data-testid=edit-user] form");
      const input = form?.querySelector<HTMLInputElement>('input[name="fname"]');
      if (!form || !input) throw new Error("no edit form");
      input.value = fname;
      const at = Date.now();
      form.requestSubmit();
      return at;
    },
    [id, fname],
  );
}
