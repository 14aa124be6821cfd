import { describe, expect, it } from 'vitest';
import type { AgentTask, AgentTaskStatus } from '../../../src/api/schema.js';
import { decodeUnsent, TaskJournal } from '../../../src/audit/journal.js';
import type { AuditRecord } from '../../../src/audit/record.js';
import { verifyChains } from '../../../src/audit/verify.js';
import type { TaskStatusWriter } from '../../../src/kube/tasks.js';
import { silentLogger } from '../../../src/log.js';

const hop = (i: number) => ({ type: 'hop_decided' as const, at: '2026-11-21T10:00:00Z', data: { hopId: `h1_${i}`, decision: 'allow' } });

/** One task on a shared "API server", written by journals of several processes. */
function server() {
  let current: AgentTask = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', metadata: { namespace: 'ns', name: 't', uid: 'u1' }, spec: { policyRef: { name: 'p' }, serviceAccountName: 'sa', ttl: '1h' }, status: {} };
  const update: TaskStatusWriter['update'] = (_ns, _name, edit) => {
    const status: AgentTaskStatus | undefined = edit(structuredClone(current));
    if (status) current = { ...current, status };
    return Promise.resolve(current);
  };
  const stream: AuditRecord[] = [];
  /** A process's journal; `emits` false: it dies after each write, before emitting anything. */
  const process = (name: string, emits = true) => new TaskJournal({ writer: { update }, emit: (r) => void (emits && stream.push(r)), log: silentLogger(), flushMs: 0, process: name });
  return { process, stream, task: () => current };
}

describe("the journal's outbox", () => {
  it('a process that dies between writing a head and emitting its records leaves no hole: the next writer emits them first', async () => {
    const s = server();
    const dying = s.process('replica-a/1', false);
    await dying.commit(s.task(), { hopCount: 2, events: [hop(1), hop(2)] });
    expect(s.task().status?.audit).toMatchObject({ count: 2, writer: 'replica-a/1', unsent: [expect.any(String), expect.any(String)] as unknown });

    await s.process('replica-a/2').commit(s.task(), { hopCount: 1, events: [hop(3)] });
    const { chains, breaks } = verifyChains(s.stream.map((record, i) => ({ record, line: i + 1 })));
    expect(breaks).toEqual([]);
    expect(chains[0]).toMatchObject({ count: 3, head: s.task().status?.audit?.head });
    expect(s.stream.map((r) => r.data.hopId)).toEqual(['h1_1', 'h1_2', 'h1_3']);
  });

  it('a process does not emit its own records twice, and the outbox holds only the latest write', async () => {
    const s = server();
    const one = s.process('replica-a/1');
    await one.commit(s.task(), { hopCount: 1, events: [hop(1)] });
    await one.commit(s.task(), { hopCount: 1, events: [hop(2)] });
    expect(s.stream.map((r) => r.data.hopId)).toEqual(['h1_1', 'h1_2']);
    expect((s.task().status?.audit?.unsent ?? []).map((u) => (decodeUnsent(u) as AuditRecord).data.hopId)).toEqual(['h1_2']);
  });
});
