import { describe, expect, it } from 'vitest';
import { NOTIFY_RETRY_MAX_MS, notifyRetryDelay } from '../../../src/notify/backoff.js';

describe('notification retry backoff', () => {
  it('doubles from 2s, jittered within the upper half of each step', () => {
    expect([1, 2, 3, 4].map((n) => notifyRetryDelay(n, () => 0))).toEqual([1_000, 2_000, 4_000, 8_000]);
    expect([1, 2, 3, 4].map((n) => notifyRetryDelay(n, () => 1))).toEqual([2_000, 4_000, 8_000, 16_000]);
  });

  it('never waits more than 10 minutes, however many attempts failed', () => {
    for (const failures of [10, 11, 20, 1_000, Number.MAX_SAFE_INTEGER]) {
      const d = notifyRetryDelay(failures, () => 1);
      expect(d).toBe(NOTIFY_RETRY_MAX_MS);
      expect(notifyRetryDelay(failures, () => 0)).toBe(NOTIFY_RETRY_MAX_MS / 2);
    }
  });

  it('spreads hops that failed together', () => {
    const delays = new Set(Array.from({ length: 50 }, () => notifyRetryDelay(3)));
    expect(delays.size).toBeGreaterThan(10);
    for (const d of delays) expect(d).toBeGreaterThanOrEqual(4_000);
  });
});
