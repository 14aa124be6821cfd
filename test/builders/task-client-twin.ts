import { ownedStatus, type StatusOwner } from '../../src/api/ownership.js';
import type { AgentTask, AgentTaskStatus } from '../../src/api/schema.js';
import { ownerWriter, type TaskClient, type TaskStatusWriter, type WriteOutcome } from '../../src/kube/tasks.js';
import type { JsonPatchOperation } from '../../src/runtime/apply.js';

/** `part` without the fields `written` states: top-level fields, `credentials` fields, conditions by type. */
function without(part: AgentTaskStatus, written: AgentTaskStatus): AgentTaskStatus {
  const out: AgentTaskStatus = { ...part };
  for (const key of Object.keys(written) as (keyof AgentTaskStatus)[]) if (key !== 'credentials' && key !== 'conditions') delete out[key];
  if (out.credentials && written.credentials) {
    const credentials = { ...out.credentials };
    for (const key of Object.keys(written.credentials) as (keyof typeof credentials)[]) delete credentials[key];
    if (Object.keys(credentials).length > 0) out.credentials = credentials;
    else delete out.credentials;
  }
  if (out.conditions && written.conditions) {
    const types = new Set(written.conditions.map((c) => c.type));
    out.conditions = out.conditions.filter((c) => !types.has(c.type));
  }
  return out;
}

/**
 * An in-memory TaskClient for unit tests, with the semantics the API server gives the real one:
 * writes conditional on the resourceVersion read, server-side apply per field manager (each
 * owner's applied fields replace only what that owner applied before), and JSON patches whose
 * `test` operations must hold.
 */
export class TaskClientTwin implements TaskClient {
  private stored: AgentTask | undefined;
  private version = 1;
  private readonly applied = new Map<StatusOwner, AgentTaskStatus>();
  readonly events: { type: string; reason: string; message: string }[] = [];
  readonly writes: { owner: StatusOwner; status: AgentTaskStatus }[] = [];
  /** Set to make the next n status writes answer 'conflict' (another writer got there first). */
  conflicts = 0;

  constructor(task: AgentTask) {
    this.stored = { ...structuredClone(task), metadata: { ...structuredClone(task.metadata), resourceVersion: '1' } };
    if (task.status) for (const owner of ['controller', 'journal', 'broker', 'notifier'] as const) this.applied.set(owner, ownedStatus(owner, task.status));
  }

  get task(): AgentTask | undefined {
    return this.stored && structuredClone(this.stored);
  }

  private bump(): void {
    if (this.stored) this.stored.metadata.resourceVersion = String(++this.version);
  }

  read(): Promise<AgentTask | undefined> {
    return Promise.resolve(this.task);
  }

  delete(): void {
    this.stored = undefined;
  }

  statusWriter(owner: StatusOwner): TaskStatusWriter {
    return ownerWriter(owner, this, (task, status) => Promise.resolve(this.apply(owner, task, status)));
  }

  private apply(owner: StatusOwner, task: AgentTask, status: AgentTaskStatus): { outcome: WriteOutcome; task?: AgentTask } {
    if (!this.stored) return { outcome: 'gone' };
    if (this.conflicts > 0 || task.metadata.resourceVersion !== this.stored.metadata.resourceVersion) {
      this.conflicts = Math.max(0, this.conflicts - 1);
      return { outcome: 'conflict' };
    }
    const mine = ownedStatus(owner, status);
    this.writes.push({ owner, status: mine });
    // A field two owners share is the last writer's value: the other's earlier one no longer counts.
    for (const [other, part] of this.applied) if (other !== owner) this.applied.set(other, without(part, mine));
    this.applied.set(owner, mine);
    const parts = [...this.applied.values()];
    const merged: AgentTaskStatus = Object.assign({}, ...parts) as AgentTaskStatus;
    const credentials = Object.assign({}, ...parts.map((p) => p.credentials ?? {})) as AgentTaskStatus['credentials'];
    if (credentials && Object.keys(credentials).length > 0) merged.credentials = credentials;
    else delete merged.credentials;
    const conditions = parts.flatMap((p) => p.conditions ?? []);
    if (conditions.length > 0) merged.conditions = conditions;
    else delete merged.conditions;
    this.stored = { ...this.stored, status: merged };
    this.bump();
    return { outcome: 'written', task: this.task };
  }

  patch(task: AgentTask, ops: JsonPatchOperation[]): Promise<WriteOutcome> {
    if (!this.stored) return Promise.resolve('gone');
    const doc = structuredClone(this.stored) as unknown as Record<string, unknown>;
    for (const op of ops) {
      const parts = op.path.split('/').slice(1);
      const last = parts.pop() ?? '';
      let parent = doc;
      for (const p of parts) parent = (parent[p] ?? (parent[p] = {})) as Record<string, unknown>;
      if (op.op === 'test') {
        if (JSON.stringify(parent[last] ?? null) !== JSON.stringify(op.value ?? null)) return Promise.resolve('conflict');
      } else if (op.op === 'remove') {
        if (Array.isArray(parent)) parent.splice(Number(last), 1);
        else delete parent[last];
      } else if (Array.isArray(parent)) {
        if (op.op === 'add') parent.splice(last === '-' ? parent.length : Number(last), 0, op.value);
        else parent[Number(last)] = op.value;
      } else {
        parent[last] = op.value;
      }
    }
    void task;
    this.stored = doc as unknown as AgentTask;
    this.bump();
    return Promise.resolve('written');
  }

  recordEvent(_task: AgentTask, type: 'Normal' | 'Warning', reason: string, message: string): Promise<void> {
    this.events.push({ type, reason, message });
    return Promise.resolve();
  }
}
