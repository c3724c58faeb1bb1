import { defineConfig } from "@playwright/test";

/**
 * The end-to-end suite. The tests start the server themselves (tests/server.ts): the debug
 * build `target/debug/server` on free ports with a fresh embedded database, because one test
 * stops and restarts it. Build first with `cargo leptos build` (make test does).
 *
 * Browser: Debian's chromium; never `npx playwright install` (no browser downloads here).
 */
export default defineConfig({
  testDir: "./tests",
  timeout: 60_000,
  expect: { timeout: 5_000 },
  fullyParallel: false,
  workers: 1,
  retries: 0,
  forbidOnly: !!process.env.CI,
  // `html` would serve a report and wait after a failure.
  reporter: "list",
  outputDir: "test-results",
  use: {
    trace: "retain-on-failure",
    screenshot: "only-on-failure",
  },
  projects: [
    {
      name: "chromium",
      use: {
        browserName: "chromium",
        launchOptions: {
          executablePath: "/usr/bin/chromium",
          headless: true,
          // Without the background-networking flags Chromium's own connections are refused by
          // the closed network, many at a time.
          args: [
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
          ],
        },
      },
    },
  ],
});
