import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { defineConfig } from 'vitest/config';

// Every file a run writes under the temporary directory (token files, audit files, the control
// plane's state, the gateway's 100 MB upload) goes under one directory of its own, removed when the
// run ends, so runs on a long-lived machine leave nothing behind. The workers inherit TMPDIR.
// CHAINWARDEN_KEEP_STATE=1 keeps it, as it keeps the control plane's state, for reading after.
if (!process.env.CHAINWARDEN_TEST_TMPDIR) {
  const root = mkdtempSync(path.join(os.tmpdir(), 'chainwarden-test-'));
  process.env.CHAINWARDEN_TEST_TMPDIR = root;
  process.env.TMPDIR = root;
  if (process.env.CHAINWARDEN_KEEP_STATE !== '1') process.once('exit', () => rmSync(root, { recursive: true, force: true }));
}

export default defineConfig({
  test: {
    reporters: ['default', './test/reporters/summary.ts'],
    teardownTimeout: 60_000,
    // The SDK's notice about its future Node 22 requirement is not a test result.
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: 'true' },
    projects: [
      {
        test: {
          name: 'unit',
          include: ['test/unit/**/*.test.ts'],
          // Every core: the unit files run before the integration files start, so nothing shares
          // the machine with them (the default leaves one core idle).
          maxWorkers: '100%',
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/integration/**/*.test.ts'],
          // One control plane per run, shared by every file; each test gets its own namespace.
          globalSetup: ['./test/env/global-setup.ts'],
          testTimeout: 60_000,
          // Tests a file marks concurrent (each with its own namespace and processes) run three at a time.
          maxConcurrency: 3,
          hookTimeout: 120_000,
          // Files run one at a time: they share one API server and one STS emulator whose reset
          // API clears everything, and two cores gain little from running them side by side.
          fileParallelism: false,
          // One after another in one worker, the files share its module cache: the clients and SDKs
          // each file imports load once, not 38 times (about 40 s of a run). Each file's state
          // lives in its own namespace and fixtures, never in a module.
          isolate: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
