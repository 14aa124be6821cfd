import type { KubeAccess } from '../kube/access.js';
import type { AgentTask } from '../api/schema.js';
import { taskKey } from '../api/task.js';
import { ChainwardenError } from '../errors.js';
import { rawRequest } from '../kube/raw.js';
import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';

/** The ConfigMap in the operator's namespace that keeps the final audit head of every deleted task. */
export const AUDIT_HEADS = 'chainwarden-audit-heads';
/** Below a ConfigMap's 1 MiB limit; the oldest heads make room for new ones beyond it. */
const MAX_BYTES = 900_000;
const ATTEMPTS = 10;

/** A deleted task's last audit head: what its stream must end with. */
export interface SealedHead {
  task: string;
  head: string;
  count: number;
  sealedAt: string;
}

interface ConfigMap {
  metadata: { name: string; namespace: string; resourceVersion?: string };
  data?: Record<string, string>;
}

/**
 * The final audit heads of deleted tasks, keyed by task uid, so that `trace` and an auditor can
 * still check a deleted task's stream for truncation. Kept where tenants have no access (the
 * operator's namespace); written with resourceVersion preconditions, so two replicas sealing at
 * once lose nothing; bounded below the ConfigMap size limit by dropping heads of the namespaces
 * that hold the most, oldest first (`fit`).
 */
export class AuditHeadStore {
  private readonly path: string;

  constructor(
    private readonly kc: KubeAccess,
    private readonly namespace: string,
    private readonly clock: Clock,
    private readonly log: Logger,
  ) {
    this.path = `/api/v1/namespaces/${namespace}/configmaps`;
  }

  /** Keeps the task's audit head (as its status has it now) beyond its deletion. Throws (retryable) when it cannot be written. */
  async seal(task: AgentTask): Promise<void> {
    const uid = task.metadata.uid ?? '';
    const audit = task.status?.audit;
    if (!uid || !audit) return;
    const sealed: SealedHead = { task: taskKey(task), head: audit.head, count: audit.count, sealedAt: new Date(this.clock.now()).toISOString() };
    for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
      const current = await this.read();
      const data = { ...(current?.data ?? {}), [uid]: JSON.stringify(sealed) };
      const dropped = fit(data);
      if (dropped > 0) this.log.warn({ dropped, configMap: `${this.namespace}/${AUDIT_HEADS}` }, 'audit heads full: sealed heads were dropped, the oldest of the namespaces that hold the most; ship the audit stream with its heads to long-term storage');
      const body = { apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: AUDIT_HEADS, namespace: this.namespace, labels: { 'app.kubernetes.io/part-of': 'chainwarden' }, ...(current ? { resourceVersion: current.metadata.resourceVersion } : {}) }, data };
      const res = current ? await rawRequest(this.kc, 'PUT', `${this.path}/${AUDIT_HEADS}`, body) : await rawRequest(this.kc, 'POST', this.path, body);
      if (res.status < 300) return;
      if (res.status !== 409) throw new ChainwardenError('api_error', `sealing the audit head of AgentTask ${sealed.task} in ConfigMap ${this.namespace}/${AUDIT_HEADS}: ${res.status} ${JSON.stringify(res.body).slice(0, 300)}`);
    }
    throw new ChainwardenError('conflict', `ConfigMap ${this.namespace}/${AUDIT_HEADS} kept changing while the head of AgentTask ${sealed.task} was sealed; retrying`);
  }

  /** The head sealed for the task with this uid, if any. */
  async find(uid: string): Promise<SealedHead | undefined> {
    return (await this.all())[uid];
  }

  /** Every sealed head, by task uid, in one read. */
  async all(): Promise<Record<string, SealedHead>> {
    const heads: Record<string, SealedHead> = {};
    for (const [uid, value] of Object.entries((await this.read())?.data ?? {})) heads[uid] = JSON.parse(value) as SealedHead;
    return heads;
  }

  private async read(): Promise<ConfigMap | undefined> {
    const res = await rawRequest(this.kc, 'GET', `${this.path}/${AUDIT_HEADS}`);
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new ChainwardenError('api_error', `reading ConfigMap ${this.namespace}/${AUDIT_HEADS}: ${res.status}`);
    return res.body as ConfigMap;
  }
}

/**
 * Drops sealed heads until the data fits; returns how many went. Each one dropped is the oldest
 * of the namespace that holds the most (the oldest namespace first among equals): a tenant that
 * creates and deletes thousands of tasks evicts its own heads, not those of every other tenant.
 * The last head left is never dropped.
 */
export function fit(data: Record<string, string>, maxBytes = MAX_BYTES): number {
  const bytes = (key: string) => key.length + (data[key]?.length ?? 0) + 8;
  let size = Object.keys(data).reduce((n, key) => n + bytes(key), 0);
  if (size <= maxBytes) return 0;
  const byNamespace = new Map<string, { key: string; at: string }[]>();
  for (const key of Object.keys(data)) {
    let sealed: Partial<SealedHead> = {};
    try {
      sealed = JSON.parse(data[key] ?? '{}') as Partial<SealedHead>;
    } catch {
      // An entry that is not ours counts as the oldest of namespace "".
    }
    const namespace = typeof sealed.task === 'string' ? (sealed.task.split('/')[0] ?? '') : '';
    const list = byNamespace.get(namespace) ?? [];
    list.push({ key, at: typeof sealed.sealedAt === 'string' ? sealed.sealedAt : '' });
    byNamespace.set(namespace, list);
  }
  for (const list of byNamespace.values()) list.sort((a, b) => a.at.localeCompare(b.at));
  let left = Object.keys(data).length;
  let dropped = 0;
  while (size > maxBytes && left > 1) {
    let most: { key: string; at: string }[] | undefined;
    for (const list of byNamespace.values()) {
      const [oldest] = list;
      if (oldest && (!most || list.length > most.length || (list.length === most.length && oldest.at < (most[0]?.at ?? '')))) most = list;
    }
    const victim = most?.shift();
    if (!victim) break;
    size -= bytes(victim.key);
    delete data[victim.key];
    left--;
    dropped++;
  }
  return dropped;
}
