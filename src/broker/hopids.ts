import { createHmac, randomBytes, randomFillSync, timingSafeEqual } from 'node:crypto';
import type { KubeAccess } from '../kube/access.js';
import { rawRequest } from '../kube/raw.js';

/** The parts of a hop id: `h<depth>_<nonce>_<mac>`. */
export interface HopIdParts {
  depth: number;
  /** 9 random bytes, base64url: exactly 12 characters, every bit significant. */
  nonce: string;
  /** The first 96 bits of the MAC, base64url: exactly 16 characters, every bit significant. */
  mac: string;
}

/**
 * The one spelling of a hop id: depth in decimal without leading zeros (1 to 999; limits.maxDepth is at most 64), then two
 * base64url fields whose lengths leave no spare bits. Anything else — `h01_…`, `H1_…`, `h0_…`,
 * padding, other alphabets, surrounding space — is not a hop id, so a hop has exactly one id
 * and an alias cannot hide a hop's parent from the audit tree or an approval.
 */
const CANONICAL = /^h([1-9][0-9]{0,2})_([A-Za-z0-9_-]{12})_([A-Za-z0-9_-]{16})$/;

/** The parts of a canonical hop id, or undefined; `formatHopId(parseHopId(s))` is `s` again. */
export function parseHopId(text: string): HopIdParts | undefined {
  const m = CANONICAL.exec(text);
  if (!m) return undefined;
  const [, depthText = '', nonce = '', mac = ''] = m;
  return { depth: Number(depthText), nonce, mac };
}

export function formatHopId(parts: HopIdParts): string {
  return `h${parts.depth}_${parts.nonce}_${parts.mac}`;
}

/**
 * Nonces from the CSPRNG fetched 4 KiB at a time: one call into it per 455 hops instead of one
 * per hop. Each byte is handed out once, and the buffer is refilled in place only once spent.
 */
class NoncePool {
  private readonly pool = Buffer.alloc(4096);
  private used = this.pool.length;

  take(size: number): string {
    if (this.used + size > this.pool.length) {
      randomFillSync(this.pool);
      this.used = 0;
    }
    const nonce = this.pool.toString('base64url', this.used, this.used + size);
    this.used += size;
    return nonce;
  }
}

/**
 * Hop ids carry their depth and a MAC over (task UID, depth, nonce), so any replica can tell
 * a hop of this task and its depth without shared storage, and an agent cannot make up a
 * shallow parent to slip under maxDepth.
 */
export class HopIds {
  private readonly nonces = new NoncePool();

  constructor(private readonly key: Buffer) {}

  private mac(taskUid: string, depth: number, nonce: string): string {
    return createHmac('sha256', this.key).update(`${taskUid}\n${depth}\n${nonce}`).digest('base64url').slice(0, 16);
  }

  mint(taskUid: string, depth: number): string {
    const nonce = this.nonces.take(9);
    return formatHopId({ depth, nonce, mac: this.mac(taskUid, depth, nonce) });
  }

  /** The depth of `id` if it is a hop of the task, spelled exactly as it was minted, else undefined. */
  depthOf(taskUid: string, id: string): number | undefined {
    const parts = parseHopId(id);
    if (!parts) return undefined;
    const expected = Buffer.from(this.mac(taskUid, parts.depth, parts.nonce));
    const given = Buffer.from(parts.mac);
    return expected.length === given.length && timingSafeEqual(expected, given) ? parts.depth : undefined;
  }
}

/** The MAC key, shared by all replicas through a Secret in the operator's namespace; made on first start. */
export async function loadHopKey(kc: KubeAccess, namespace: string, name = 'chainwarden-hop-key'): Promise<Buffer> {
  const path = `/api/v1/namespaces/${namespace}/secrets`;
  for (let attempt = 0; attempt < 3; attempt++) {
    const existing = await rawRequest(kc, 'GET', `${path}/${name}`);
    if (existing.status === 200) return Buffer.from((existing.body as { data: { key: string } }).data.key, 'base64');
    if (existing.status !== 404) throw new Error(`reading Secret ${namespace}/${name}: ${existing.status}`);
    const created = await rawRequest(kc, 'POST', path, {
      apiVersion: 'v1',
      kind: 'Secret',
      type: 'Opaque',
      metadata: { name, namespace, labels: { 'app.kubernetes.io/part-of': 'chainwarden' } },
      data: { key: randomBytes(32).toString('base64') },
    });
    if (created.status === 201) return Buffer.from(((created.body as { data: { key: string } }).data.key), 'base64');
    if (created.status !== 409) throw new Error(`creating Secret ${namespace}/${name}: ${created.status}`);
  }
  throw new Error(`could not read or create Secret ${namespace}/${name}`);
}
