import { randomBytes } from 'node:crypto';
import type { KubeAccess } from './access.js';
import { FieldManager, ownedStatus, type StatusOwner } from '../api/ownership.js';
import { API_VERSION, GROUP, VERSION, type AgentTask, type AgentTaskStatus } from '../api/schema.js';
import { printable } from '../api/text.js';
import { ChainwardenError } from '../errors.js';
import { applyStatus, patchJson, type JsonPatchOperation, type ObjectRef, type WriteOutcome } from '../runtime/apply.js';
import { rawRequest } from './raw.js';

export type { WriteOutcome } from '../runtime/apply.js';

const taskPath = (namespace: string, name: string) => `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/agenttasks/${name}`;

const refOf = (namespace: string, name: string): ObjectRef => ({ path: taskPath(namespace, name), apiVersion: API_VERSION, kind: 'AgentTask', namespace, name });

/** How many fresh reads a read-modify-write of status tries before it reports the conflict. */
const MAX_ATTEMPTS = 10;

/** A short, jittered pause before retrying a write that lost a race, so racing writers spread out. */
const raceBackoff = (attempt: number) => new Promise((resolve) => setTimeout(resolve, Math.random() * Math.min(200, 5 * 2 ** attempt)));

/**
 * Writes one owner's part of a task's status. Every write is a read-modify-write conditional on
 * the resourceVersion read, and applies only the owner's fields: the owner's full view of them,
 * since a server-side apply removes an owned field it leaves out.
 */
export interface TaskStatusWriter {
  readonly owner: StatusOwner;
  /** Applies `status` (only the owner's fields of it) if the task is still at `task`'s resourceVersion. */
  apply(task: AgentTask, status: AgentTaskStatus): Promise<{ outcome: WriteOutcome; task?: AgentTask }>;
  /**
   * `edit` on a fresh read until the write lands: returns the task as written, or as found when
   * `edit` returns undefined (nothing to change), or undefined when the task is gone.
   * `cached` is tried first to save a read; a conflict always reads fresh.
   */
  update(namespace: string, name: string, edit: (task: AgentTask) => AgentTaskStatus | undefined, cached?: () => AgentTask | undefined): Promise<AgentTask | undefined>;
}

/** Everything the operator writes to AgentTasks. Status goes only through an owner's `TaskStatusWriter`. */
export interface TaskClient {
  read(namespace: string, name: string): Promise<AgentTask | undefined>;
  statusWriter(owner: StatusOwner): TaskStatusWriter;
  patch(task: AgentTask, ops: JsonPatchOperation[]): Promise<WriteOutcome>;
  /** A core/v1 Event on the task, as `kubectl describe` shows them. */
  recordEvent(task: AgentTask, type: 'Normal' | 'Warning', reason: string, message: string, component?: string): Promise<void>;
}

/** The TaskClient against the API server. */
export class KubeTaskClient implements TaskClient {
  constructor(private readonly kc: KubeAccess) {}

  async read(namespace: string, name: string): Promise<AgentTask | undefined> {
    const res = await rawRequest(this.kc, 'GET', taskPath(namespace, name));
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new ChainwardenError('api_error', `reading AgentTask ${namespace}/${name}: ${res.status}`);
    return res.body as AgentTask;
  }

  statusWriter(owner: StatusOwner): TaskStatusWriter {
    return ownerWriter(owner, this, async (task, status) => {
      const { namespace = '', name = '', resourceVersion } = task.metadata;
      const { outcome, object } = await applyStatus<AgentTask>(this.kc, refOf(namespace, name), FieldManager[owner], ownedStatus(owner, status), resourceVersion);
      return { outcome, task: object };
    });
  }

  patch(task: AgentTask, ops: JsonPatchOperation[]): Promise<WriteOutcome> {
    return patchJson(this.kc, refOf(task.metadata.namespace ?? '', task.metadata.name ?? ''), ops);
  }

  async recordEvent(task: AgentTask, type: 'Normal' | 'Warning', reason: string, message: string, component = 'chainwarden'): Promise<void> {
    const { namespace = '', name = '', uid } = task.metadata;
    const now = new Date().toISOString();
    await rawRequest(this.kc, 'POST', `/api/v1/namespaces/${namespace}/events`, {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: `${name}.${randomBytes(8).toString('hex')}`, namespace },
      involvedObject: { apiVersion: API_VERSION, kind: 'AgentTask', name, namespace, uid },
      reason,
      // Messages quote agent-supplied text: shown escaped, never as terminal control sequences.
      message: printable(message).slice(0, 1024),
      type,
      source: { component },
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
      reportingComponent: component,
    });
  }
}

/** The read-modify-write loop every owner shares, over any `apply` (the API server's, or a twin's). */
export function ownerWriter(
  owner: StatusOwner,
  client: Pick<TaskClient, 'read'>,
  apply: (task: AgentTask, status: AgentTaskStatus) => Promise<{ outcome: WriteOutcome; task?: AgentTask }>,
): TaskStatusWriter {
  return {
    owner,
    apply,
    async update(namespace, name, edit, cached) {
      for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
        if (attempt > 1) await raceBackoff(attempt);
        const task = attempt === 0 && cached?.() ? cached() : await client.read(namespace, name);
        if (!task) return undefined;
        const status = edit(task);
        if (!status) return task;
        const { outcome, task: written } = await apply(task, status);
        if (outcome === 'written') return written ?? { ...task, status };
        if (outcome === 'gone') return undefined;
      }
      throw new ChainwardenError('conflict', `AgentTask ${namespace}/${name} kept changing while ${FieldManager[owner]} wrote its status; try again`);
    },
  };
}
