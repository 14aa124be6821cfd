import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { WorkQueue } from '../../../src/runtime/workqueue.js';

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
