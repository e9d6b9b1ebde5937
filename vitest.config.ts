import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // No retries: a flaky lock test is a bug to fix, never to re-run until green.
    retry: 0,
    reporters: ["default", "json"],
    outputFile: { json: ".ci/out/vitest.json" }
  }
})
