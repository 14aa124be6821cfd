import { createPrivateKey, type JsonWebKey } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, type JWK } from 'jose';
import type { Clock } from '../runtime/clock.js';

/** One stored signing key; `jwk` holds the private part. */
export interface StoredKey {
  kid: string;
  createdAt: number;
  jwk: JWK;
}

/** Where the keys live: a Secret in the operator's namespace, shared by every replica. */
export interface KeyStorePort {
  read(): Promise<{ keys: StoredKey[]; version: string } | undefined>;
  /** false when someone else created it first */
  create(keys: StoredKey[]): Promise<boolean>;
  /** false when `version` is stale: someone else wrote in between */
  replace(keys: StoredKey[], version: string): Promise<boolean>;
}

export interface KeyRingOptions {
  /** A new key is made once the newest is this old. */
  rotateAfterMs?: number;
  /** A new key is published this long before it signs, so verifiers caching the JWKS know it. */
  activationDelayMs?: number;
  /** A retired key stays published this long after its successor starts signing. */
  overlapMs?: number;
}

const ALG = 'ES256';

async function newKey(now: number): Promise<StoredKey> {
  const { privateKey } = await generateKeyPair(ALG, { extractable: true });
  const jwk = await exportJWK(privateKey);
  return { kid: await calculateJwkThumbprint(jwk), createdAt: now, jwk: { ...jwk, alg: ALG, use: 'sig' } };
}

const publicPart = ({ d: _d, ...rest }: JWK): JWK => rest;

/**
 * The JWT-SVID signing keys. Every replica reads the same Secret; whichever finds the newest
 * key due for rotation adds one (optimistic concurrency settles a race). A new key is published
 * at once but signs only after the activation delay; an old one stays published for the overlap.
 */
export class KeyRing {
  private keys: StoredKey[] = [];
  /** The active key as PKCS#8 PEM, converted once per key. */
  private active?: { kid: string; pem: string };
  private readonly rotateAfterMs: number;
  private readonly activationDelayMs: number;
  private readonly overlapMs: number;

  constructor(
    private readonly store: KeyStorePort,
    private readonly clock: Clock,
    options: KeyRingOptions = {},
  ) {
    this.rotateAfterMs = options.rotateAfterMs ?? 24 * 3_600_000;
    this.activationDelayMs = options.activationDelayMs ?? 5 * 60_000;
    this.overlapMs = options.overlapMs ?? 60 * 60_000;
  }

  /** Reads the keys, creating, rotating or pruning them as due; safe to call from every replica. */
  async refresh(): Promise<void> {
    for (let attempt = 0; attempt < 5; attempt++) {
      const now = this.clock.now();
      const current = await this.store.read();
      if (!current || current.keys.length === 0) {
        const first = [await newKey(now)];
        if (current ? await this.store.replace(first, current.version) : await this.store.create(first)) {
          this.keys = first;
          return;
        }
        continue;
      }
      const next = await this.due(current.keys, now);
      if (next === current.keys || (await this.store.replace(next, current.version))) {
        this.keys = next;
        return;
      }
    }
    throw new Error('could not settle the SVID signing keys after 5 attempts (concurrent writers?)');
  }

  private async due(keys: StoredKey[], now: number): Promise<StoredKey[]> {
    const sorted = [...keys].sort((a, b) => a.createdAt - b.createdAt);
    let next = sorted;
    const newest = sorted.at(-1);
    if (newest && now - newest.createdAt >= this.rotateAfterMs) next = [...sorted, await newKey(now)];
    // A key retires when its successor activates; it stays published for the overlap after that.
    const kept = next.filter((k, i) => {
      const successor = next[i + 1];
      return !successor || now < successor.createdAt + this.activationDelayMs + this.overlapMs;
    });
    return kept.length === keys.length && next === sorted ? keys : kept;
  }


  /** The key to sign with, as PKCS#8 PEM: the newest one that has been published for the activation delay. */
  signingKey(): { kid: string; pem: string } {
    const now = this.clock.now();
    const sorted = [...this.keys].sort((a, b) => b.createdAt - a.createdAt);
    const active = sorted.find((k) => now - k.createdAt >= this.activationDelayMs) ?? sorted.at(-1);
    if (!active) throw new Error('no SVID signing key loaded');
    if (this.active?.kid !== active.kid) {
      const pem = createPrivateKey({ key: active.jwk as JsonWebKey, format: 'jwk' }).export({ type: 'pkcs8', format: 'pem' });
      this.active = { kid: active.kid, pem: pem.toString() };
    }
    return this.active;
  }

  /** Every published key, public parts only. */
  jwks(): { keys: JWK[] } {
    return { keys: this.keys.map((k) => ({ ...publicPart(k.jwk), kid: k.kid })) };
  }
}

/** The keys kept in memory; for unit tests and single-process tools. */
export class InMemoryKeyStore implements KeyStorePort {
  private state: { keys: StoredKey[]; version: number } | undefined;
  read() {
    return Promise.resolve(this.state ? { keys: structuredClone(this.state.keys), version: String(this.state.version) } : undefined);
  }
  create(keys: StoredKey[]) {
    if (this.state) return Promise.resolve(false);
    this.state = { keys: structuredClone(keys), version: 1 };
    return Promise.resolve(true);
  }
  replace(keys: StoredKey[], version: string) {
    if (!this.state || String(this.state.version) !== version) return Promise.resolve(false);
    this.state = { keys: structuredClone(keys), version: this.state.version + 1 };
    return Promise.resolve(true);
  }
}
