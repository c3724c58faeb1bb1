/**
 * Editing from the page: every form path, seen from a second browser (another context) within
 * 2 s, with no response of 500 or more anywhere.
 */
import type { Browser, BrowserContext, Locator, Page, Response } from "@playwright/test";

import {
  deviceItem,
  expect,
  LIVE_MS,
  newUser,
  openLive,
  test,
  userItem,
  userLine,
  watchErrors,
  type DeviceDoc,
  type UserDoc,
} from "./fixtures";

const userRow = (page: Page, id: string): Locator =>
  page.locator(`[data-testid=user-list] [data-testid=user-row][data-id="${id}"]`);

/** The row of the user whose line reads `line`. */
const rowWithLine = (page: Page, line: string): Locator =>
  page.locator("[data-testid=user-row]").filter({
    has: page.getByTestId("user").getByText(line, { exact: true }),
  });

const fieldError = (scope: Locator, field: string): Locator =>
  scope.locator(`[data-field-error="${field}"]`);

/**
 * The console errors that matter: Chromium logs every 4xx answer ("Failed to load resource"),
 * and a refused write is one by design.
 */
const unexpected = (errors: string[]): string[] =>
  errors.filter((e) => !/status of 4\d\d .*\/_server\//.test(e));

/** Records every response of status ≥ 500 of `page`. */
function watchServerErrors(page: Page, bad: string[]): void {
  page.on("response", (response: Response) => {
    if (response.status() >= 500) {
      bad.push(`${response.status()} ${response.request().method()} ${response.url()}`);
    }
  });
}

/** Fills the add form of `page` and presses Enter in its last field. */
async function addUser(page: Page, user: Pick<UserDoc, "fname" | "lname" | "username">) {
  const form = page.getByTestId("add-user");
  await form.locator('input[name="fname"]').fill(user.fname);
  await form.locator('input[name="lname"]').fill(user.lname);
  await form.locator('input[name="username"]').fill(user.username);
  await form.locator('input[name="username"]').press("Enter");
}

/** A second visitor: its own context, its page open and live. */
async function otherVisitor(
  browser: Browser,
  baseURL: string | undefined,
  errors: string[],
  bad: string[],
): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ baseURL });
  const page = await context.newPage();
  watchErrors(page, errors);
  watchServerErrors(page, bad);
  await openLive(page);
  return { context, page };
}

test.describe("editing from the page", () => {
  let bad: string[];
  let other: { context: BrowserContext; page: Page };

  test.beforeEach(async ({ page, browser, baseURL, pageErrors }) => {
    bad = [];
    watchServerErrors(page, bad);
    other = await otherVisitor(browser, baseURL, pageErrors, bad);
    await openLive(page);
  });

  test.afterEach(async ({ pageErrors }) => {
    await other.context.close();
    expect(bad).toEqual([]);
    expect(unexpected(pageErrors)).toEqual([]);
  });

  test("add: Enter submits, both browsers show the user, the form clears", async ({
    page,
    db,
  }) => {
    const user = newUser("add");
    await addUser(page, { ...user, fname: `  ${user.fname} ` });
    for (const p of [page, other.page]) {
      await expect(rowWithLine(p, userLine(user))).toHaveCount(1, { timeout: LIVE_MS });
    }
    await expect(page.getByTestId("add-user").locator('input[name="username"]')).toHaveValue("");
    const stored = await db.collection<UserDoc>("users").findOne({ username: user.username });
    expect(stored?.fname).toBe(user.fname);
  });

  test("a duplicate username and invalid fields are shown next to the field", async ({
    page,
    db,
  }) => {
    const users = db.collection<UserDoc>("users");
    const taken = newUser("taken");
    await users.insertOne(taken);
    const count = await users.countDocuments();
    const form = page.getByTestId("add-user");

    await addUser(page, { fname: "Someone", lname: "Else", username: taken.username });
    await expect(fieldError(form, "username")).toHaveText("username taken");
    await expect(form.locator('input[name="username"]')).toHaveAttribute("aria-invalid", "true");

    await addUser(page, { fname: "   ", lname: "x".repeat(65), username: "free_name_42" });
    await expect(fieldError(form, "fname")).toHaveText("required");
    await expect(fieldError(form, "lname")).toHaveText("at most 64 characters");
    await expect(fieldError(form, "username")).toHaveCount(0);

    expect(await users.countDocuments()).toBe(count);
    await expect(rowWithLine(other.page, userLine(taken))).toHaveCount(1);
  });

  test("edit: the row's form saves, the other browser shows it; errors stay in the row", async ({
    page,
    db,
  }) => {
    const users = db.collection<UserDoc>("users");
    const user = newUser("edit");
    const rival = newUser("rival");
    await users.insertMany([user, rival]);
    const id = user._id.toHexString();
    await expect(userItem(page, id)).toHaveText(userLine(user), { timeout: LIVE_MS });

    const row = userRow(page, id);
    await row.getByText("Edit", { exact: true }).click();
    const form = row.getByTestId("edit-user").locator("form");
    await form.locator('input[name="username"]').fill(rival.username);
    await form.getByRole("button", { name: "Save" }).click();
    await expect(fieldError(row, "username")).toHaveText("username taken");
    // Only this row shows it.
    await expect(page.locator('[data-field-error="username"]')).toHaveCount(1);

    const edited = { ...user, fname: "Kathy", username: `${user.username}_e` };
    await form.locator('input[name="fname"]').fill(edited.fname);
    await form.locator('input[name="username"]').fill(edited.username);
    await form.locator('input[name="username"]').press("Enter");
    for (const p of [page, other.page]) {
      await expect(userItem(p, id)).toHaveText(userLine(edited), { timeout: LIVE_MS });
    }
  });

  test("delete asks first, then the user disappears in both browsers", async ({ page, db }) => {
    const user = newUser("delete");
    await db.collection<UserDoc>("users").insertOne(user);
    const id = user._id.toHexString();
    await expect(userItem(other.page, id)).toHaveCount(1, { timeout: LIVE_MS });

    const row = userRow(page, id);
    await row.getByText("Delete", { exact: true }).click();
    await expect(row.getByText(`Delete ${user.username}?`)).toBeVisible();
    await row.getByRole("button", { name: "Confirm delete" }).click();
    for (const p of [page, other.page]) {
      await expect(userRow(p, id)).toHaveCount(0, { timeout: LIVE_MS });
    }
  });

  test("lock toggle: one click flips the device in both browsers", async ({ page, db }) => {
    const devices = db.collection<DeviceDoc>("devices");
    const lock = await devices.findOne({ type: "lock" });
    expect(lock).not.toBeNull();
    const id = lock!._id.toHexString();
    const item = (p: Page) => deviceItem(p, id);
    for (const locked of [!lock!.locked, lock!.locked]) {
      await item(page).getByTestId("toggle-lock").click();
      for (const p of [page, other.page]) {
        await expect(item(p)).toHaveAttribute("data-locked", String(locked), {
          timeout: LIVE_MS,
        });
      }
    }
  });

  test("input that looks like a query is stored and shown literally", async ({ page, db }) => {
    const user = { fname: "a.b", lname: "$where", username: `{"$gt": ""}${Date.now()}` };
    await addUser(page, user);
    for (const p of [page, other.page]) {
      await expect(rowWithLine(p, userLine(user))).toHaveCount(1, { timeout: LIVE_MS });
    }
    const stored = await db.collection<UserDoc>("users").findOne({ username: user.username });
    expect(stored).toMatchObject(user);
  });

  test("a post from another site is refused with 403 and changes nothing", async ({
    page,
    baseURL,
    db,
  }) => {
    const username = `crosssite${Date.now()}`;
    // A page on another origin whose form posts to this site, as an attacker's page would.
    await page.route("http://evil.test/**", (route) =>
      route.fulfill({
        contentType: "text/html",
        body: `<form method="post" action="${baseURL}/_server/add_user">
                 <input name="fname" value="Evil"><input name="lname" value="Site">
                 <input name="username" value="${username}">
                 <button>go</button></form>`,
      }),
    );
    await page.goto("http://evil.test/");
    const refused = page.waitForResponse((r) => r.url().includes("/_server/add_user"));
    await page.getByRole("button", { name: "go" }).click();
    expect((await refused).status()).toBe(403);
    expect(await db.collection<UserDoc>("users").findOne({ username })).toBeNull();
    await expect(other.page.getByText(username)).toHaveCount(0);
  });
});

test.describe("editing without JavaScript", () => {
  test("plain form posts add and delete, and a delete of a deleted user says so", async ({
    browser,
    baseURL,
    db,
    pageErrors,
  }) => {
    const bad: string[] = [];
    const context = await browser.newContext({ baseURL, javaScriptEnabled: false });
    const page = await context.newPage();
    watchServerErrors(page, bad);
    const live = await otherVisitor(browser, baseURL, pageErrors, bad);
    try {
      await page.goto("/");
      const user = newUser("nojs");
      await addUser(page, user);
      // Sent back to the page, which the server rendered with the new user.
      await expect(rowWithLine(page, userLine(user))).toHaveCount(1);
      expect(new URL(page.url()).pathname).toBe("/");
      await expect(rowWithLine(live.page, userLine(user))).toHaveCount(1, { timeout: LIVE_MS });

      // An error comes back the same way and is shown by the field.
      await addUser(page, { fname: "", lname: "x", username: user.username });
      await expect(fieldError(page.getByTestId("add-user"), "fname")).toHaveText("required");
      // The same URL in a browser with scripts hydrates to the same error, without errors.
      const withError = await live.context.newPage();
      watchErrors(withError, pageErrors);
      await openLive(withError, page.url());
      await expect(fieldError(withError.getByTestId("add-user"), "fname")).toHaveText("required");
      await withError.close();

      // Delete a user another visitor already deleted: the page says so.
      const row = rowWithLine(page, userLine(user));
      await row.getByText("Delete", { exact: true }).click();
      await db.collection<UserDoc>("users").deleteOne({ username: user.username });
      await expect(rowWithLine(live.page, userLine(user))).toHaveCount(0, { timeout: LIVE_MS });
      await row.getByRole("button", { name: "Confirm delete" }).click();
      await expect(page.getByTestId("notice")).toContainText("deleted meanwhile");
      await expect(rowWithLine(page, userLine(user))).toHaveCount(0);
    } finally {
      await live.context.close();
      await context.close();
    }
    expect(bad).toEqual([]);
    expect(unexpected(pageErrors)).toEqual([]);
  });
});
