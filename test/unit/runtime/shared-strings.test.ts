import v8 from 'node:v8';
import vm from 'node:vm';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { shareStrings } from '../../../src/runtime/shared-strings.js';

describe('shareStrings: what the informer does to every object it caches', () => {
  it('ten thousand parsed copies of an object hold one copy of each string, not ten thousand', () => {
    v8.setFlagsFromString('--expose-gc');
    const gc = vm.runInNewContext('gc') as () => void;
    const arn = `arn:aws:iam::123456789012:role/${'agent-'.repeat(20)}`;
    const text = JSON.stringify({ spec: { roleArn: arn }, status: { conditions: [{ message: `no running pod labelled chainwarden.io/task with service account ${'agent-'.repeat(15)}` }] } });
    /** Heap the copies hold, with or without sharing their strings. */
    const held = (share: boolean) => {
      gc();
      const before = process.memoryUsage().heapUsed;
      const kept: unknown[] = [];
      for (let i = 0; i < 10_000; i++) {
        const copy: unknown = JSON.parse(text);
        if (share) shareStrings(copy);
        kept.push(copy);
      }
      gc();
      return { bytes: process.memoryUsage().heapUsed - before, kept: kept.length };
    };
    const apart = held(false);
    const shared = held(true);
    // Two strings of about 130 and 150 characters, 10,000 times each: some 3 MB the shared copies do without.
    expect(apart.bytes - shared.bytes).toBeGreaterThan(2 * 1024 * 1024);
  });

  it('leaves every parsed API object as it was, value for value, whatever it holds', () => {
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        const text = JSON.stringify(value);
        const parsed: unknown = JSON.parse(text);
        shareStrings(parsed);
        expect(JSON.stringify(parsed)).toBe(text);
      }),
      { numRuns: 2_000 },
    );
  });

  it('keeps a name or value that the language treats specially as plain data: `__proto__`, `constructor`, array-index names', () => {
    const parsed = JSON.parse('{"__proto__":{"polluted":"yes"},"constructor":"x","0":"zero","list":["__proto__","toString"]}') as Record<string, unknown>;
    shareStrings(parsed);
    expect(Object.getPrototypeOf(parsed)).toBe(Object.prototype);
    expect(Object.keys(parsed)).toEqual(['0', '__proto__', 'constructor', 'list']);
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
    expect(parsed.list).toEqual(['__proto__', 'toString']);
    expect(parsed[0]).toBe('zero');
  });

  it('walks an object nested deeper than the call stack would allow', () => {
    let deep: unknown = 'bottom';
    for (let i = 0; i < 200_000; i++) deep = i % 2 === 0 ? { next: deep } : [deep];
    expect(() => shareStrings(deep)).not.toThrow();
  });
});
