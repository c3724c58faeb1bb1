/**
 * A picture of the page: written to test-results/ on every run (ignored by git); `make
 * screenshot` writes it to docs/screenshot.png for README.
 */
import { expect, openLive, test } from "./fixtures";

test("the page, with a user's edit form open", async ({ page, pageErrors }) => {
  await page.setViewportSize({ width: 960, height: 900 });
  await openLive(page);
  const row = page.getByTestId("user-row").first();
  await row.getByText("Edit", { exact: true }).click();
  await expect(row.getByRole("button", { name: "Save" })).toBeVisible();
  await page.screenshot({
    path: process.env.SCREENSHOT ?? "test-results/screenshot.png",
    fullPage: true,
  });
  expect(pageErrors).toEqual([]);
});
