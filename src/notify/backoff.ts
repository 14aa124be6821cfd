/** The first retry of a failed notification waits about this long. */
export const NOTIFY_RETRY_BASE_MS = 2_000;
/** No wait between attempts is longer: a receiver that comes back is heard from within this. */
export const NOTIFY_RETRY_MAX_MS = 10 * 60_000;

/**
 * How long to wait after the `failures`-th failed attempt (1 for the first): doubling from the
 * base up to the cap, with "equal jitter" (a random point in the upper half), so replicas and
 * hops that failed together do not retry together, and no wait is shorter than half its step.
 * Attempts go on, at most this far apart, until the hop is no longer pending.
 */
export function notifyRetryDelay(failures: number, random: () => number = Math.random, baseMs = NOTIFY_RETRY_BASE_MS, maxMs = NOTIFY_RETRY_MAX_MS): number {
  const step = Math.min(maxMs, baseMs * 2 ** Math.min(Math.max(failures - 1, 0), 30));
  return Math.round(step / 2 + random() * (step / 2));
}
