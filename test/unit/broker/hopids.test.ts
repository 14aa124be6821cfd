import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { formatHopId, HopIds, parseHopId } from '../../../src/broker/hopids.js';

const ids = new HopIds(Buffer.alloc(32, 7));
const base64url = fc.constantFrom(...'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_');
const field = (n: number) => fc.array(base64url, { minLength: n, maxLength: n }).map((cs) => cs.join(''));
/** Strings near the hop-id grammar, where an alias would hide, plus anything at all. */
const nearHopId = fc.oneof(
  fc.tuple(fc.constantFrom('h', 'H', 'h0', 'h00', 'h+', 'h-', ' h', 'h\u0661', 'hx'), fc.nat(1200), fc.constantFrom('_', '-', '__', '%5F'), field(12), fc.constantFrom('_', '='), field(16), fc.constantFrom('', '=', '\n', ' ', '='.repeat(2)))
    .map(([h, d, s1, nonce, s2, mac, tail]) => `${h}${d}${s1}${nonce}${s2}${mac}${tail}`),
  fc.tuple(fc.integer({ min: 1, max: 999 }), field(12), field(16)).map(([d, n, m]) => `h${d}_${n}_${m}`),
  fc.string({ unit: 'binary', maxLength: 40 }),
);

describe('hop ids', () => {
  it('parse to exactly one canonical id that formats back identically, or are refused (fuzz)', () => {
    fc.assert(
      fc.property(nearHopId, (text) => {
        const parts = parseHopId(text);
        if (parts === undefined) return true;
        return formatHopId(parts) === text && parts.depth >= 1 && Number.isInteger(parts.depth);
      }),
      { numRuns: 20_000 },
    );
  });

  it('a minted id is accepted for its task only, and no alias of it is accepted at all', () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 64 }), fc.uuid(), (depth, uid) => {
        const id = ids.mint(uid, depth);
        expect(ids.depthOf(uid, id)).toBe(depth);
        expect(ids.depthOf(`${uid}x`, id)).toBeUndefined();
        const rest = id.slice(id.indexOf('_'));
        const aliases = [`h0${depth}${rest}`, `h00${depth}${rest}`, `H${depth}${rest}`, `h+${depth}${rest}`, `${id}\n`, ` ${id}`, `${id}=`, id.toUpperCase(), id.normalize('NFKC').replace('_', '\uFF3F'), encodeURIComponent(id).replace(/_/g, '%5F')];
        for (const alias of aliases.filter((a) => a !== id)) expect(ids.depthOf(uid, alias), alias).toBeUndefined();
      }),
      { numRuns: 300 },
    );
  });

  it('accepts an id minted by any replica holding the key, whatever its version: the MAC is HMAC-SHA256 of uid, depth and nonce under the shared key', () => {
    // A fixed id: replicas of two versions run side by side during an upgrade, and ids live on in audit records and approvals.
    const uid = '3f9c2a4e-1b2c-4d5e-8f90-123456789abc';
    expect(ids.depthOf(uid, 'h3_AAECAwQFBgcI_oifpZImgEaBgBseT')).toBe(3);
    expect(ids.depthOf(uid, 'h3_AAECAwQFBgcI_oifpZImgEaBgBseU')).toBeUndefined();
    expect(ids.depthOf(uid, 'h4_AAECAwQFBgcI_oifpZImgEaBgBseT')).toBeUndefined();
  });

  it('never mints the same id twice, across many refills of its nonce pool', () => {
    const fresh = new HopIds(Buffer.alloc(32, 9));
    const minted = Array.from({ length: 5_000 }, () => fresh.mint('task', 1));
    expect(new Set(minted).size).toBe(minted.length);
    expect(new Set(minted.map((id) => parseHopId(id)?.nonce)).size).toBe(minted.length);
    for (const id of minted.slice(450, 470)) expect(fresh.depthOf('task', id)).toBe(1);
  });
});
