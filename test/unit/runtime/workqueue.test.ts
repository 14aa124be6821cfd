import { setTimeout as sleep } from 'node:timers/promises';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import { Delays, WorkQueue } from '../../../src/runtime/workqueue.js';

describe('WorkQueue', () => {
  it('de-duplicates a key added while it waits', async () => {
    const q = new WorkQueue('t');
    q.add('a');
    q.add('a');
    q.add('b');
    const seen: string[] = [];
    const run = q.run(1, (k) => Promise.resolve(void seen.push(k)), () => {});
    await sleep(20);
    q.shutdown();
    await run;
    expect(seen).toEqual(['a', 'b']);
  });

  it('never processes one key twice at once, and processes it again if it changed meanwhile', async () => {
    const q = new WorkQueue('t');
    let inFlight = 0;
    let maxInFlight = 0;
    let calls = 0;
    const run = q.run(4, async () => {
      calls++;
      inFlight++;
      maxInFlight = Math.max(maxInFlight, inFlight);
      if (calls === 1) q.add('a'); // changed while being processed
      await sleep(20);
      inFlight--;
    }, () => {});
    q.add('a');
    await sleep(100);
    q.shutdown();
    await run;
    expect(maxInFlight).toBe(1);
    expect(calls).toBe(2);
  });

  it('backs off per key, doubling, and forgets after a success', async () => {
    const q = new WorkQueue('t', { baseMs: 10, maxMs: 40 });
    const attempts: number[] = [];
    const delays: number[] = [];
    const started = Date.now();
    const run = q.run(1, () => {
      attempts.push(Date.now() - started);
      return attempts.length < 4 ? Promise.reject(new Error('not yet')) : Promise.resolve();
    }, (_k, _e, retryIn) => delays.push(retryIn));
    q.add('a');
    await sleep(200);
    q.shutdown();
    await run;
    expect(delays).toEqual([10, 20, 40]);
    expect(attempts).toHaveLength(4);
    expect(q.failuresOf('a')).toBe(0);
  });

  it('requeues after the delay a reconcile asks for', async () => {
    const q = new WorkQueue('t');
    let calls = 0;
    const run = q.run(1, () => Promise.resolve(++calls === 1 ? { requeueAfterMs: 30 } : {}), () => {});
    q.add('a');
    await sleep(10);
    expect(calls).toBe(1);
    await sleep(60);
    q.shutdown();
    await run;
    expect(calls).toBe(2);
  });
});

describe('delayed keys, behind one timer', () => {
  type Step = { kind: 'schedule'; key: string; inMs: number } | { kind: 'advance'; ms: number };
  const step: fc.Arbitrary<Step> = fc.oneof(
    fc.record({ kind: fc.constant('schedule' as const), key: fc.constantFrom('a', 'b', 'c', 'd', 'e'), inMs: fc.integer({ min: 0, max: 5_000 }) }),
    fc.record({ kind: fc.constant('advance' as const), ms: fc.integer({ min: 0, max: 3_000 }) }),
  );

  it('fires each key once, at the earliest time it was due, whatever the order of scheduling', () => {
    vi.useFakeTimers();
    try {
      fc.assert(
        fc.property(fc.array(step, { maxLength: 60 }), (steps) => {
          const start = Date.now();
          const fired: string[] = [];
          const delays = new Delays((key) => fired.push(`${Date.now() - start} ${key}`));
          // The model: each key's earliest pending time; due keys fire when the clock passes it.
          const model = new Map<string, number>();
          const expected: string[] = [];
          let now = 0;
          const advanceModel = (to: number) => {
            const due = [...model].filter(([, at]) => at <= to).sort((x, y) => x[1] - y[1] || x[0].localeCompare(y[0]));
            for (const [key, at] of due) {
              expected.push(`${at} ${key}`);
              model.delete(key);
            }
          };
          for (const s of [...steps, { kind: 'advance', ms: 10_000 } as const]) {
            if (s.kind === 'schedule') {
              delays.schedule(s.key, start + now + s.inMs);
              const at = now + s.inMs;
              if ((model.get(s.key) ?? Infinity) > at) model.set(s.key, at);
            } else {
              now += s.ms;
              vi.advanceTimersByTime(s.ms);
              advanceModel(now);
            }
          }
          const byTime = (list: string[]) => [...list].sort((x, y) => Number(x.split(' ')[0]) - Number(y.split(' ')[0]) || x.localeCompare(y));
          expect(byTime(fired)).toEqual(byTime(expected));
          expect(delays.size).toBe(0);
          delays.clear();
        }),
        { numRuns: 500 },
      );
    } finally {
      vi.useRealTimers();
    }
  });

  it('holds ten thousand delayed keys on one timer, and a time past setTimeout\'s range fires when due, not at once', () => {
    vi.useFakeTimers();
    try {
      const fired: string[] = [];
      const delays = new Delays((key) => fired.push(key));
      for (let i = 0; i < 10_000; i++) delays.schedule(`k${i}`, Date.now() + 60_000 + i);
      expect(vi.getTimerCount()).toBe(1);
      const farAway = 40 * 24 * 3600_000;
      delays.schedule('far', Date.now() + farAway);
      vi.advanceTimersByTime(70_000);
      expect(fired).toHaveLength(10_000);
      expect(fired.slice(0, 3)).toEqual(['k0', 'k1', 'k2']);
      vi.advanceTimersByTime(farAway - 80_000);
      expect(fired).not.toContain('far');
      vi.advanceTimersByTime(20_000);
      expect(fired.at(-1)).toBe('far');
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});
