import { ChainwardenError } from '../errors.js';

/** Go's duration syntax, as Kubernetes and `kubectl` users write it: `15m`, `1h30m`, `90s`. */
export const DURATION_PATTERN = '^([0-9]+(\\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$';

const UNIT_MS: Record<string, number> = { ns: 1e-6, us: 1e-3, µs: 1e-3, ms: 1, s: 1000, m: 60_000, h: 3_600_000 };
const DURATION = new RegExp(DURATION_PATTERN);
const PART = /([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h)/g;

/**
 * Durations already parsed. Every request reads its task's ttl, and a cluster writes a handful of
 * distinct durations; the memo is dropped whole when it fills, so odd values cannot grow it.
 */
const parsed = new Map<string, number>();
const MAX_PARSED = 1024;

/** Milliseconds in a Go-style duration string; throws naming `field` when it does not parse. */
export function parseDuration(text: string, field = 'duration'): number {
  const known = parsed.get(text);
  if (known !== undefined) return known;
  if (!DURATION.test(text)) {
    throw new ChainwardenError('invalid_duration', `${field}: "${text}" is not a duration; write it like 30m, 1h or 1h30m`, { field });
  }
  let ms = 0;
  for (const [, amount, unit] of text.matchAll(PART)) ms += Number(amount) * (UNIT_MS[unit ?? ''] ?? 0);
  if (parsed.size >= MAX_PARSED) parsed.clear();
  parsed.set(text, ms);
  return ms;
}

/** The shortest Go-style string for a whole number of seconds: 5400000 ms → `1h30m`. */
export function formatDuration(ms: number): string {
  let seconds = Math.round(ms / 1000);
  if (seconds === 0) return '0s';
  const parts: string[] = [];
  for (const [unit, size] of [['h', 3600], ['m', 60], ['s', 1]] as const) {
    const n = Math.floor(seconds / size);
    if (n > 0) parts.push(`${n}${unit}`);
    seconds -= n * size;
  }
  return parts.join('');
}
