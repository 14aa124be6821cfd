import { decodeProtectedHeader } from 'jose';
import { describe, expect, it } from 'vitest';
import { InMemoryKeyStore, KeyRing } from '../../../src/identity/keyring.js';
import { SvidIssuer } from '../../../src/identity/svid.js';

const HOUR = 3_600_000;

function setup() {
  let now = Date.parse('2026-11-21T00:00:00Z');
  const clock = { now: () => now };
  const store = new InMemoryKeyStore();
  const options = { rotateAfterMs: 24 * HOUR, activationDelayMs: 5 * 60_000, overlapMs: HOUR };
  return { clock, store, options, advance: (ms: number) => (now += ms) };
}

describe('KeyRing', () => {
  it('two replicas settle on the same first key', async () => {
    const { clock, store, options } = setup();
    const a = new KeyRing(store, clock, options);
    const b = new KeyRing(store, clock, options);
    await Promise.all([a.refresh(), b.refresh()]);
    expect(a.jwks()).toEqual(b.jwks());
    expect(a.jwks().keys).toHaveLength(1);
  });

  it('rotates with an overlap: the new key is published before it signs, the old one stays published after', async () => {
    const { clock, store, options, advance } = setup();
    const ring = new KeyRing(store, clock, options);
    const issuer = new SvidIssuer(ring, 'https://issuer.example', clock);
    await ring.refresh();
    const firstKid = ring.jwks().keys[0]?.kid;

    advance(24 * HOUR);
    await ring.refresh();
    expect(ring.jwks().keys).toHaveLength(2);
    // Published but not yet active: the old key still signs.
    expect(decodeProtectedHeader(issuer.mint('spiffe://x/ns/a/sa/b/task/c', 'aud').token).kid).toBe(firstKid);

    advance(5 * 60_000);
    const secondKid = ring.jwks().keys[1]?.kid;
    const token = issuer.mint('spiffe://x/ns/a/sa/b/task/c', 'aud').token;
    expect(decodeProtectedHeader(token).kid).toBe(secondKid);
    // Signed with the new key itself, not only named for it.
    await expect(issuer.verify(token, 'aud')).resolves.toMatchObject({ sub: 'spiffe://x/ns/a/sa/b/task/c' });

    advance(HOUR + 1000);
    await ring.refresh();
    expect(ring.jwks().keys.map((k) => k.kid)).toEqual([secondKid]);
  });

  it('verifies its own SVIDs and refuses a wrong audience or an expired one', async () => {
    const { clock, store, options, advance } = setup();
    const ring = new KeyRing(store, clock, options);
    await ring.refresh();
    const issuer = new SvidIssuer(ring, 'https://issuer.example', clock);
    const { token } = issuer.mint('spiffe://cluster.local/ns/a/sa/b/task/c', 'sts.amazonaws.com', 3600);
    const claims = await issuer.verify(token, 'sts.amazonaws.com');
    expect(claims.sub).toBe('spiffe://cluster.local/ns/a/sa/b/task/c');
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(300);
    await expect(issuer.verify(token, 'someone-else')).rejects.toThrow(/aud/);
    advance(301_000);
    await expect(issuer.verify(token, 'sts.amazonaws.com')).rejects.toThrow(/exp/);
    expect(() => issuer.mint('spiffe://x', '')).toThrow(/needs an audience/);
  });

  it('adds the caller\'s claims to an SVID but never lets them replace the registered ones', async () => {
    const { clock, store, options } = setup();
    const ring = new KeyRing(store, clock, options);
    await ring.refresh();
    const issuer = new SvidIssuer(ring, 'https://issuer.example', clock);
    const extra = { sub: 'spiffe://cluster.local/ns/other/sa/admin', aud: 'sts.amazonaws.com', exp: 4_102_444_800, 'https://aws.amazon.com/source_identity': 'cw-marker' };
    const { token } = issuer.mint('spiffe://cluster.local/ns/a/sa/b/task/c', 'chainwarden', 60, extra);
    const claims = await issuer.verify(token, 'chainwarden');
    expect(claims).toMatchObject({ sub: 'spiffe://cluster.local/ns/a/sa/b/task/c', aud: 'chainwarden', iss: 'https://issuer.example', 'https://aws.amazon.com/source_identity': 'cw-marker' });
    expect((claims.exp ?? 0) - (claims.iat ?? 0)).toBe(60);
  });
});
