/**
 * (a) Server-side rendering: the HTML of `GET /`, before any JavaScript runs, already lists
 * every user in the database as `fname lname - username`.
 */
import { expect, newUser, openLive, test, userLine, type UserDoc } from "./fixtures";

/** The text of the `[data-testid=user]` items in raw HTML, in document order. */
function userItems(html: string): { id: string; text: string }[] {
  const items: { id: string; text: string }[] = [];
  const li = /<span\b([^>]*\bdata-testid="user"[^>]*)>([\s\S]*?)<\/span>/g;
  for (const match of html.matchAll(li)) {
    const id = /\bdata-id="([^"]*)"/.exec(match[1])?.[1] ?? "";
    // Drop hydration comment markers and any nested tags; keep the text.
    const text = match[2]
      .replace(/<!--[\s\S]*?-->/g, "")
      .replace(/<[^>]*>/g, "")
      .replace(/\s+/g, " ")
      .trim();
    items.push({ id, text });
  }
  return items;
}

test.describe("server-side rendering", () => {
  test("the raw HTML of / lists every user of the database", async ({ request, db }) => {
    const users = db.collection<UserDoc>("users");

    const response = await request.get("/");
    expect(response.status()).toBe(200);
    expect(response.headers()["content-type"]).toContain("text/html");
    const html = await response.text();
    const expected = await users.find().sort({ _id: 1 }).toArray();
    // The seed: 5 users on first start.
    expect(expected.length).toBeGreaterThanOrEqual(5);
    for (const user of expected) {
      expect(html).toContain(userLine(user));
    }
    expect(html).toContain('data-testid="user-list"');
    // Whole without scripts: the lists are in place, not in chunks a script would swap in.
    expect(html).not.toContain("Loading…");
    expect(html).not.toContain("<template");
    expect(userItems(html)).toEqual(
      expected.map((u) => ({ id: u._id.toHexString(), text: userLine(u) })),
    );
  });

  test("a user written to the database is in the next server-rendered page", async ({
    request,
    db,
  }) => {
    const users = db.collection<UserDoc>("users");
    const user = newUser("ssr");
    await users.insertOne(user);
    try {
      const html = await (await request.get("/")).text();
      expect(html).toContain(userLine(user));
      expect(html).toContain(`data-id="${user._id.toHexString()}"`);
    } finally {
      await users.deleteOne({ _id: user._id });
    }
    // And gone once deleted.
    const after = await (await request.get("/")).text();
    expect(after).not.toContain(userLine(user));
  });

  test("the hydrated page shows the same users, without errors", async ({
    page,
    db,
    pageErrors,
  }) => {
    await openLive(page);
    const expected = await db.collection<UserDoc>("users").find().sort({ _id: 1 }).toArray();
    const items = page.getByTestId("user-list").getByTestId("user");
    await expect(items).toHaveText(expected.map(userLine));
    const ids = await items.evaluateAll((els) => els.map((el) => el.getAttribute("data-id")));
    expect(ids).toEqual(expected.map((u) => u._id.toHexString()));
    expect(pageErrors).toEqual([]);
  });
});
