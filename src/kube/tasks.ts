import { randomBytes } from 'node:crypto';
import type { KubeConfig } from '@kubernetes/client-node';
import { API_VERSION, GROUP, VERSION, type AgentTask, type AgentTaskStatus } from '../api/schema.js';
import { ChainwardenError } from '../errors.js';
import { rawRequest } from './raw.js';

export type WriteResult = 'written' | 'conflict' | 'gone';

const taskPath = (namespace: string, name: string) => `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/agenttasks/${name}`;

function outcome(status: number, what: string, body: unknown): WriteResult {
  if (status < 300) return 'written';
  if (status === 409) return 'conflict';
  if (status === 404) return 'gone';
  throw new ChainwardenError('api_error', `${what}: ${status} ${(body as { message?: string } | undefined)?.message ?? JSON.stringify(body).slice(0, 200)}`);
}

/** The writes the operator makes to AgentTasks; each is conditional on the resourceVersion read. */
export class TaskWriter {
  constructor(private readonly kc: KubeConfig) {}

  async read(namespace: string, name: string): Promise<AgentTask | undefined> {
    const res = await rawRequest(this.kc, 'GET', taskPath(namespace, name));
    if (res.status === 404) return undefined;
    if (res.status !== 200) throw new ChainwardenError('api_error', `reading AgentTask ${namespace}/${name}: ${res.status}`);
    return res.body as AgentTask;
  }

  /** Replaces the status subresource; 'conflict' when the task changed since it was read. */
  async writeStatus(task: AgentTask, status: AgentTaskStatus): Promise<WriteResult> {
    const { namespace = '', name = '' } = task.metadata;
    const res = await rawRequest(this.kc, 'PUT', `${taskPath(namespace, name)}/status`, { ...task, apiVersion: API_VERSION, kind: 'AgentTask', status });
    return outcome(res.status, `writing the status of AgentTask ${namespace}/${name}`, res.body);
  }

  async setFinalizers(task: AgentTask, finalizers: string[]): Promise<WriteResult> {
    const { namespace = '', name = '', resourceVersion } = task.metadata;
    const res = await rawRequest(this.kc, 'PATCH', taskPath(namespace, name), { metadata: { finalizers, resourceVersion } }, 'application/merge-patch+json');
    return outcome(res.status, `updating the finalizers of AgentTask ${namespace}/${name}`, res.body);
  }

  /**
   * Changes the status through `edit` on a fresh read, retrying on conflicts. `edit` returns
   * undefined to leave the task as it is. Returns the task as written (or as found).
   */
  async updateStatus(namespace: string, name: string, edit: (task: AgentTask) => AgentTaskStatus | undefined, cached?: () => AgentTask | undefined): Promise<AgentTask | undefined> {
    for (let attempt = 0; attempt < 8; attempt++) {
      // First try the caller's cached copy (saves a read); after a conflict, read fresh.
      const task = attempt === 0 && cached?.() ? cached() : await this.read(namespace, name);
      if (!task) return undefined;
      const status = edit(task);
      if (!status) return task;
      const result = await this.writeStatus(task, status);
      if (result === 'written') return { ...task, status };
      if (result === 'gone') return undefined;
    }
    throw new ChainwardenError('conflict', `AgentTask ${namespace}/${name} kept changing; try again`);
  }

  /** A core/v1 Event on the task, as `kubectl describe` shows them. */
  async recordEvent(task: AgentTask, type: 'Normal' | 'Warning', reason: string, message: string, component = 'chainwarden'): Promise<void> {
    const { namespace = '', name = '', uid } = task.metadata;
    const now = new Date().toISOString();
    await rawRequest(this.kc, 'POST', `/api/v1/namespaces/${namespace}/events`, {
      apiVersion: 'v1',
      kind: 'Event',
      metadata: { name: `${name}.${randomBytes(8).toString('hex')}`, namespace },
      involvedObject: { apiVersion: API_VERSION, kind: 'AgentTask', name, namespace, uid },
      reason,
      message: message.slice(0, 1024),
      type,
      source: { component },
      firstTimestamp: now,
      lastTimestamp: now,
      count: 1,
      reportingComponent: component,
    });
  }
}
