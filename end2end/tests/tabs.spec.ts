/**
 * One event stream per browser: the tabs of one context share the stream one of them reads.
 */
import type { BrowserContext, Page } from "@playwright/test";

import {
  expect,
  LIVE_MS,
  newUser,
  openLive,
  test,
  userItem,
  userLine,
  watchContext,
  type UserDoc,
} from "./fixtures";

/** The value of an unlabelled metric in `/metrics`. */
async function metric(baseURL: string | undefined, name: string): Promise<number> {
  const text = await (await fetch(`${baseURL}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line === undefined ? NaN : Number(line.split(" ")[1]);
}

/** Opens `count` live tabs in `context`, one after the other. */
async function openTabs(context: BrowserContext, count: number): Promise<Page[]> {
  const tabs: Page[] = [];
  for (let i = 0; i < count; i++) {
    const tab = await context.newPage();
    await openLive(tab);
    tabs.push(tab);
  }
  return tabs;
}

const role = (tab: Page) => tab.getByTestId("live-status").getAttribute("data-role");

test.describe("one stream per browser", () => {
  let context: BrowserContext;
  let errors: string[];

  test.beforeEach(async ({ browser, baseURL }) => {
    errors = [];
    context = await browser.newContext({ baseURL });
    watchContext(context, errors);
    // Streams of earlier tests' pages are gone before counting.
    await expect.poll(() => metric(baseURL, "realtime_sse_streams_open")).toBe(0);
  });

  test.afterEach(async () => {
    await context.close();
    expect(errors).toEqual([]);
  });

  test("five tabs hold one stream, and every tab gets every change", async ({ baseURL, db }) => {
    const tabs = await openTabs(context, 5);
    await expect.poll(() => metric(baseURL, "realtime_sse_streams_open")).toBe(1);
    const roles = await Promise.all(tabs.map(role));
    expect(roles.filter((r) => r === "leader")).toHaveLength(1);
    expect(roles.filter((r) => r === "follower")).toHaveLength(4);

    const user = newUser("tabs");
    await db.collection<UserDoc>("users").insertOne(user);
    for (const tab of tabs) {
      await expect(userItem(tab, user._id.toHexString())).toHaveText(userLine(user), {
        timeout: LIVE_MS,
      });
      await expect(tab.getByTestId("live-status")).toHaveAttribute("data-state", "live");
    }
    expect(await metric(baseURL, "realtime_sse_streams_open")).toBe(1);
  });

  test("when the leading tab closes another leads, and changes keep reaching every tab", async ({
    baseURL,
    db,
  }) => {
    const tabs = await openTabs(context, 3);
    await expect.poll(() => metric(baseURL, "realtime_sse_streams_open")).toBe(1);
    const leaders = [];
    for (const tab of tabs) {
      if ((await role(tab)) === "leader") leaders.push(tab);
    }
    expect(leaders).toHaveLength(1);
    const users = db.collection<UserDoc>("users");
    const before = newUser("before");
    await users.insertOne(before);
    for (const tab of tabs) {
      await expect(userItem(tab, before._id.toHexString())).toHaveCount(1, { timeout: LIVE_MS });
    }

    await leaders[0].close();
    const rest = tabs.filter((t) => t !== leaders[0]);
    await expect
      .poll(async () => (await Promise.all(rest.map(role))).filter((r) => r === "leader").length)
      .toBe(1);
    await expect.poll(() => metric(baseURL, "realtime_sse_streams_open")).toBe(1);

    const after = newUser("after");
    await users.insertOne(after);
    for (const tab of rest) {
      await expect(userItem(tab, after._id.toHexString())).toHaveText(userLine(after), {
        timeout: LIVE_MS,
      });
      await expect(tab.getByTestId("live-status")).toHaveAttribute("data-state", "live");
    }
  });

  test("without Web Locks every tab reads its own stream", async ({ baseURL, db }) => {
    await context.addInitScript(() => {
      Object.defineProperty(Navigator.prototype, "locks", { get: () => undefined });
    });
    const tabs = await openTabs(context, 2);
    expect(await Promise.all(tabs.map(role))).toEqual(["own", "own"]);
    await expect.poll(() => metric(baseURL, "realtime_sse_streams_open")).toBe(2);
    const user = newUser("own");
    await db.collection<UserDoc>("users").insertOne(user);
    for (const tab of tabs) {
      await expect(userItem(tab, user._id.toHexString())).toHaveText(userLine(user), {
        timeout: LIVE_MS,
      });
    }
  });

  test("a tab that loads while a change is committed shows it", async ({ db }) => {
    const [first] = await openTabs(context, 1);
    const late = await context.newPage();
    // Hold the late tab's WASM back: its HTML is rendered, its script not yet running.
    let release!: () => void;
    const held = new Promise<void>((resolve) => (release = resolve));
    await late.route("**/pkg/*.wasm", async (route) => {
      await held;
      await route.continue();
    });
    await late.goto("/", { waitUntil: "domcontentloaded" });
    const user = newUser("late");
    await db.collection<UserDoc>("users").insertOne(user);
    const id = user._id.toHexString();
    // The leader has delivered it before the late tab listens.
    await expect(userItem(first, id)).toHaveCount(1, { timeout: LIVE_MS });
    await expect(userItem(late, id)).toHaveCount(0);
    release();
    await expect(late.getByTestId("live-status")).toHaveAttribute("data-role", "follower", {
      timeout: 20_000,
    });
    await expect(userItem(late, id)).toHaveText(userLine(user), { timeout: LIVE_MS });
  });
});
