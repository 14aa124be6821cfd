import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { KubeConfig } from '@kubernetes/client-node';
import { rawRequest } from '../kube/raw.js';

/**
 * Hop ids carry their depth and a MAC over (task UID, depth, nonce), so any replica can tell
 * a hop of this task and its depth without shared storage, and an agent cannot make up a
 * shallow parent to slip under maxDepth.
 */
export class HopIds {
  constructor(private readonly key: Buffer) {}

  private mac(taskUid: string, depth: number, nonce: string): string {
    return createHmac('sha256', this.key).update(`${taskUid}\n${depth}\n${nonce}`).digest('base64url').slice(0, 16);
  }

  mint(taskUid: string, depth: number): string {
    const nonce = randomBytes(9).toString('base64url');
    return `h${depth}_${nonce}_${this.mac(taskUid, depth, nonce)}`;
  }

  /** The depth of `id` if it is a hop of the task, else undefined. */
  depthOf(taskUid: string, id: string): number | undefined {
    const m = /^h(\d{1,3})_([A-Za-z0-9_-]{12})_([A-Za-z0-9_-]{16})$/.exec(id);
    if (!m) return undefined;
    const [, depthText = '', nonce = '', mac = ''] = m;
    const depth = Number(depthText);
    const expected = Buffer.from(this.mac(taskUid, depth, nonce));
    const given = Buffer.from(mac);
    return expected.length === given.length && timingSafeEqual(expected, given) ? depth : undefined;
  }
}

/** The MAC key, shared by all replicas through a Secret in the operator's namespace; made on first start. */
export async function loadHopKey(kc: KubeConfig, namespace: string, name = 'chainwarden-hop-key'): Promise<Buffer> {
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
