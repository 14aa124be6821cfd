import { describe, expect, it } from 'vitest';
import { fit } from '../../../src/audit/heads.js';

describe('sealed audit heads stay within a ConfigMap', () => {
  const head = (i: number) => JSON.stringify({ task: `ns/task-${i}`, head: 'a'.repeat(64), count: i, sealedAt: new Date(Date.UTC(2026, 10, 1) + i * 60_000).toISOString() });

  it('drops the oldest heads, and only as many as it must', () => {
    const data = Object.fromEntries(Array.from({ length: 100 }, (_, i) => [`uid-${i}`, head(i)]));
    const one = Object.entries(data).reduce((n, [k, v]) => n + k.length + v.length + 8, 0) / 100;
    expect(fit(data, Math.floor(one * 90))).toBe(11);
    expect(Object.keys(data)).toHaveLength(89);
    expect(data['uid-10']).toBeUndefined();
    expect(data['uid-11']).toBeDefined();
    expect(fit(data, Number.MAX_SAFE_INTEGER)).toBe(0);
  });

  it('makes room from the namespace that holds the most: one tenant churning tasks evicts its own heads, not another\'s', () => {
    const sealed = (ns: string, i: number) => JSON.stringify({ task: `${ns}/task-${i}`, head: 'a'.repeat(64), count: i, sealedAt: new Date(Date.UTC(2026, 10, 1) + i * 60_000).toISOString() });
    // The quiet tenant's heads are the oldest; the noisy one sealed 90 since.
    const data: Record<string, string> = {};
    for (let i = 0; i < 10; i++) data[`quiet-${i}`] = sealed('quiet', i);
    for (let i = 10; i < 100; i++) data[`noisy-${i}`] = sealed('noisy', i);
    const one = Object.entries(data).reduce((n, [k, v]) => n + k.length + v.length + 8, 0) / 100;
    expect(fit(data, Math.floor(one * 80))).toBeGreaterThanOrEqual(20);
    expect(Object.keys(data).filter((k) => k.startsWith('quiet-'))).toHaveLength(10);
    // The noisy tenant lost its oldest, kept its newest.
    expect(data['noisy-10']).toBeUndefined();
    expect(data['noisy-99']).toBeDefined();
  });

  it('never drops the head just added, however small the room', () => {
    const data = { only: head(1) };
    expect(fit(data, 1)).toBe(0);
    expect(Object.keys(data)).toEqual(['only']);
  });
});
