import { getEventListeners } from 'node:events';
import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { childSignal } from '../../../src/runtime/abort.js';

describe('childSignal', () => {
  it('aborts with its parent, on its own, or at its timeout as a TimeoutError', async () => {
    const parent = new AbortController();
    const a = childSignal(parent.signal);
    parent.abort(new Error('term over'));
    expect(a.signal.aborted).toBe(true);
    expect((a.signal.reason as Error).message).toBe('term over');
    expect(childSignal(parent.signal).signal.aborted).toBe(true);

    const own = childSignal(new AbortController().signal);
    own.abort();
    expect(own.signal.aborted).toBe(true);

    const timed = childSignal(new AbortController().signal, 20);
    await sleep(60);
    expect((timed.signal.reason as DOMException).name).toBe('TimeoutError');
  });

  it('a released child leaves nothing on its parent, however many a leader\'s term makes', async () => {
    const parent = new AbortController();
    for (let i = 0; i < 1_000; i++) {
      const tick = childSignal(parent.signal, 1_000);
      const waited = sleep(1_000, undefined, { signal: tick.signal }).catch(() => undefined);
      tick.abort();
      await waited;
      tick.release();
    }
    expect(getEventListeners(parent.signal, 'abort')).toHaveLength(0);
    // A child made after all of them still hears the parent.
    const last = childSignal(parent.signal);
    expect(getEventListeners(parent.signal, 'abort')).toHaveLength(1);
    parent.abort();
    expect(last.signal.aborted).toBe(true);
  });
});
