import { defineConfig } from "@playwright/test";

import suite from "./playwright.config";

/**
 * The page benchmark (`make bench-page`): the test suite's browser settings, the benches in
 * ./bench, against the release build (SERVER_BIN) with precompressed assets.
 */
export default defineConfig({
  ...suite,
  testDir: "./bench",
  timeout: 600_000,
});
