import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { shareStrings } from '../../../src/runtime/shared-strings.js';

describe('shareStrings: what the informer does to every object it caches', () => {
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
