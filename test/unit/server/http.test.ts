import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChainwardenError } from '../../../src/errors.js';
import { assertJsonDepth, parseJson } from '../../../src/server/http.js';

const nested = (depth: number, open = '[', close = ']') => `${open.repeat(depth)}${close.repeat(depth)}`;

describe('parseJson', () => {
  it('parses JSON nested exactly to the limit, and refuses one level more with json_too_deep', () => {
    expect(parseJson(Buffer.from(nested(5)), 5)).toEqual([[[[[]]]]]);
    expect(() => parseJson(Buffer.from(nested(6)), 5)).toThrow(expect.objectContaining({ code: 'json_too_deep', status: 400, field: 'body' }));
    const objects = `${'{"a":'.repeat(6)}1${'}'.repeat(6)}`;
    expect(() => parseJson(Buffer.from(objects), 5)).toThrow(/nests arrays and objects more than 5 deep \(at byte 25\)/);
  });

  it('does not count brackets inside strings, escaped quotes included', () => {
    const text = JSON.stringify({ a: '[[[[{{{{', b: 'say \\"[[[[\\" and \\\\', c: ['\u00e9[', '😀{'] });
    expect(parseJson(Buffer.from(text), 2)).toEqual(JSON.parse(text));
  });

  it('refuses a million unclosed brackets at the first one past the limit, in well under a second', () => {
    const started = performance.now();
    expect(() => parseJson(Buffer.from('['.repeat(1_000_000)), 64)).toThrow(/at byte 64\)/);
    expect(performance.now() - started).toBeLessThan(100);
  });

  it('answers invalid JSON as invalid_json, never as a SyntaxError', () => {
    for (const text of ['{not json', '', '"', '[1,]', '\u0000']) {
      let thrown: unknown;
      try {
        parseJson(Buffer.from(text));
      } catch (err) {
        thrown = err;
      }
      expect(thrown, text).toBeInstanceOf(ChainwardenError);
      expect((thrown as ChainwardenError).code).toBe('invalid_json');
      // The contract's 400s name the field: here the body as a whole.
      expect((thrown as ChainwardenError).field).toBe('body');
    }
  });

  it('measures the depth of any JSON text exactly as its value nests (property)', () => {
    const depthOf = (v: unknown): number => (typeof v === 'object' && v !== null ? 1 + Math.max(0, ...Object.values(v).map(depthOf)) : 0);
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), fc.boolean(), (value, pretty) => {
        const bytes = Buffer.from(JSON.stringify(value, null, pretty ? 2 : undefined));
        const depth = depthOf(value);
        expect(() => assertJsonDepth(bytes, depth)).not.toThrow();
        if (depth > 0) expect(() => assertJsonDepth(bytes, depth - 1)).toThrow(expect.objectContaining({ code: 'json_too_deep' }));
      }),
      { numRuns: 500 },
    );
  });
});
