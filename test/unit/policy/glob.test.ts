import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { globMatches } from '../../../src/policy/glob.js';

/**
 * The reference: a RegExp, built with care — every character but `*` and `?` escaped, dotAll so
 * `*` also spans line breaks (as Cedar's `like` does), no `u` flag so `?` is one UTF-16 code unit.
 * It is exponential on some globs, so it only ever sees short ones.
 */
function reference(glob: string, value: string): boolean {
  const body = [...glob].map((c) => (c === '*' ? '[\\s\\S]*' : c === '?' ? '[\\s\\S]' : `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`)).join('');
  return new RegExp(`^${body}$`).test(value);
}

// A small alphabet makes matches likely; the glob alphabet adds the wildcards.
const letter = fc.constantFrom('a', 'b', '/', '.', 'A', '\n');
const value = fc.array(letter, { maxLength: 12 }).map((cs) => cs.join(''));
const glob = fc.array(fc.oneof(letter, fc.constantFrom('*', '?')), { maxLength: 10 }).map((cs) => cs.join(''));

describe('globMatches', () => {
  it.each([
    ['arn:aws:iam::111122223333:role/support-*', 'arn:aws:iam::111122223333:role/support-agent', true],
    ['arn:aws:iam::111122223333:role/support-*', 'arn:aws:iam::111122223333:role/admin', false],
    ['arn:aws:iam::*:role/support-?', 'arn:aws:iam::999999999999:role/support-1', true],
    ['arn:aws:iam::*:role/support-?', 'arn:aws:iam::999999999999:role/support-12', false],
    ['ticket/*', 'ticket/4711/comments', true], // `*` spans `/`
    ['ticket/*', 'Ticket/4711', false], // case-sensitive
    ['admin.*', 'admin.', true],
    ['*', '', true],
    ['', '', true],
    ['', 'x', false],
    ['a.c', 'abc', false], // `.` is literal
    ['**a**', 'xax', true],
  ])('%s against %s is %s', (g, v, expected) => {
    expect(globMatches(g, v)).toBe(expected);
  });

  it('agrees with a reference RegExp on thousands of generated globs and values', () => {
    fc.assert(
      fc.property(glob, value, (g, v) => globMatches(g, v) === reference(g, v)),
      { numRuns: 20_000 },
    );
  });

  it('agrees with the reference on globs of stars and literals alone, as policies write them (fuzz)', () => {
    const starred = fc.array(fc.oneof(letter, fc.constant('*')), { maxLength: 12 }).map((cs) => cs.join(''));
    fc.assert(
      fc.property(starred, value, (g, v) => globMatches(g, v) === reference(g, v)),
      { numRuns: 20_000 },
    );
  });

  it('agrees with the reference on values built to match (so matches are tested, not only misses)', () => {
    const matching = fc.array(fc.oneof(letter.map((c) => [c, c] as const), fc.constant(['?', 'x'] as const), value.map((v) => ['*', v] as const)), { maxLength: 8 });
    fc.assert(
      fc.property(matching, (parts) => {
        const g = parts.map(([p]) => p).join('');
        const v = parts.map(([, s]) => s).join('');
        return globMatches(g, v) && reference(g, v);
      }),
      { numRuns: 5_000 },
    );
  });

  it('never throws and answers quickly on arbitrary globs and values (fuzz)', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 600, unit: 'binary' }), fc.string({ maxLength: 1024, unit: 'binary' }), (g, v) => {
        const started = performance.now();
        const answer = globMatches(g, v);
        expect(typeof answer).toBe('boolean');
        expect(performance.now() - started).toBeLessThan(250);
      }),
      { numRuns: 2_000 },
    );
  });

  it('decides pathological globs (catastrophic for a backtracking RegExp) in milliseconds', () => {
    const cases = [
      [`${'*a'.repeat(8)}*b`, 'a'.repeat(100_000)],
      [`*${'a'.repeat(255)}b`, 'a'.repeat(1024)],
      [`arn:aws:iam::*:role/${'*a'.repeat(8)}b`, `arn:aws:iam::111122223333:role/${'a'.repeat(512)}`],
      [`*${'a'.repeat(254)}b*`, 'a'.repeat(1024)],
      [`*b${'a'.repeat(254)}`, 'a'.repeat(1024)],
    ] as const;
    for (const [g, v] of cases) {
      const started = performance.now();
      expect(globMatches(g, v)).toBe(false);
      expect(performance.now() - started).toBeLessThan(100);
    }
  });
});
