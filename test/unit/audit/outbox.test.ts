import { createHash } from 'node:crypto';
import { deflateRawSync } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it, vi } from 'vitest';
import type { AgentTask, AgentTaskStatus } from '../../../src/api/schema.js';
import { decodeOutbox, encodeOutbox, ORPHANED_OUTBOX_MS, TaskJournal } from '../../../src/audit/journal.js';
import { GENESIS, hashRecord, linkRecords, type AuditRecord } from '../../../src/audit/record.js';
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
  let now = Date.parse('2026-11-21T10:00:00Z');
  const clock = { now: () => now };
  /**
   * A process's journal; `emits` false: it dies after each write, before emitting anything.
   * `writes`: how many writes it makes before it is dead.
   */
  const process = (name: string, emits = true, writes = Infinity, answersLost = 0) => {
    let left = writes;
    let lose = answersLost;
    const limited: TaskStatusWriter['update'] = async (...args) => {
      if (left-- <= 0) throw new Error(`${name} is dead`);
      const written = await update(...args);
      // The API server committed it; the connection dropped before the answer.
      if (lose > 0 && written === current) {
        lose -= 1;
        throw new Error('socket hang up');
      }
      return written;
    };
    return new TaskJournal({ writer: { update: limited }, emit: (r) => void (emits && stream.push(r)), log: silentLogger(), flushMs: 0, process: name, clock });
  };
  const end = () => void (current = { ...current, status: { ...current.status, state: 'Completed' } });
  const advance = (ms: number) => void (now += ms);
  return { process, stream, task: () => current, end, advance };
}

const settled = () => new Promise((r) => setImmediate(r));
const verified = (stream: AuditRecord[]) => verifyChains(stream.map((record, i) => ({ record, line: i + 1 })));

describe("the journal's outbox", () => {
  it('a process that dies between writing a head and emitting its records leaves no hole: the next writer emits them first', async () => {
    const s = server();
    const dying = s.process('replica-a/1', false);
    await dying.commit(s.task(), { hopCount: 2, events: [hop(1), hop(2)] });
    expect(s.task().status?.audit).toMatchObject({ count: 2, writer: 'replica-a/1' });
    expect(decodeOutbox(s.task().status?.audit?.unsent ?? []).map((r) => r.data.hopId)).toEqual(['h1_1', 'h1_2']);

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
    expect(decodeOutbox(s.task().status?.audit?.unsent ?? []).map((r) => r.data.hopId)).toEqual(['h1_2']);
  });

  it("the writer of an ended task's last head marks the outbox emitted once its records are out: nothing is left for anyone to emit again", async () => {
    const s = server();
    const writer = s.process('replica-a/1');
    await writer.commit(s.task(), { hopCount: 1, events: [hop(1)] });
    expect(s.task().status?.audit?.unsent).toHaveLength(1);
    s.end();
    writer.record(s.task(), { events: [{ type: 'completion', at: '2026-11-21T10:00:01Z', data: { reason: 'AgentReported' } }] });
    await vi.waitFor(() => expect(s.task().status?.audit).toMatchObject({ count: 2, writer: 'replica-a/1', emitted: true }));
    // Another process later finds nothing to do.
    s.advance(ORPHANED_OUTBOX_MS * 2);
    expect(await s.process('replica-b/1').settleOutbox(s.task())).toBeUndefined();
    expect(s.stream.map((r) => r.seq)).toEqual([1, 2]);
  });

  it("an ended task's last writer died before emitting: another process waits out the orphan delay, then emits the records and marks the outbox", async () => {
    const s = server();
    await s.process('replica-a/1').commit(s.task(), { hopCount: 1, events: [hop(1)] });
    s.end();
    await s.process('replica-a/2', false, 1).commit(s.task(), { events: [{ type: 'completion', at: '2026-11-21T10:00:01Z', data: { reason: 'AgentReported' } }] });
    await settled();
    // The head covers two records; the stream has one: as `chainwarden audit verify` would see it, truncated.
    expect(s.task().status?.audit?.count).toBe(2);
    expect(verified(s.stream).chains[0]?.count).toBe(1);

    const leader = s.process('replica-b/1');
    // A live writer empties its own within moments: a fresh outbox is not taken for orphaned.
    expect(await leader.settleOutbox(s.task())).toBe(ORPHANED_OUTBOX_MS);
    s.advance(ORPHANED_OUTBOX_MS / 2);
    expect(await leader.settleOutbox(s.task())).toBe(ORPHANED_OUTBOX_MS / 2);
    expect(s.stream).toHaveLength(1);
    s.advance(ORPHANED_OUTBOX_MS / 2);
    expect(await leader.settleOutbox(s.task())).toBeUndefined();
    const { chains, breaks } = verified(s.stream);
    expect(breaks).toEqual([]);
    expect(chains[0]).toMatchObject({ count: 2, head: s.task().status?.audit?.head });
    expect(s.task().status?.audit?.emitted).toBe(true);
    // Marked: nobody emits them again.
    s.advance(ORPHANED_OUTBOX_MS * 2);
    expect(await s.process('replica-c/1').settleOutbox(s.task())).toBeUndefined();
    expect(s.stream).toHaveLength(2);
  });

  it('a task still running keeps its outbox for the next write to carry out: nobody empties it early', async () => {
    const s = server();
    await s.process('replica-a/1', false, 1).commit(s.task(), { hopCount: 1, events: [hop(1)] });
    const other = s.process('replica-b/1');
    s.advance(ORPHANED_OUTBOX_MS * 3);
    expect(await other.settleOutbox(s.task())).toBeUndefined();
    expect(s.task().status?.audit?.unsent).toHaveLength(1);
    expect(s.stream).toEqual([]);
  });

  it('a write that records a violation marks its own outbox emitted at once: the task ends, and nobody else emits its records again', async () => {
    const s = server();
    const replica = s.process('replica-b/1');
    await replica.commit(s.task(), { hopCount: 1, denied: 1, violation: { hopId: 'h1_1', rule: 'no-exfiltration', message: 'email send' }, events: [hop(1)] });
    await settled();
    expect(s.task().status?.violation?.hopId).toBe('h1_1');
    expect(s.task().status?.audit?.emitted).toBe(true);
    s.end();
    s.advance(ORPHANED_OUTBOX_MS * 2);
    expect(await s.process('replica-a/1').settleOutbox(s.task())).toBeUndefined();
    expect(s.stream).toHaveLength(1);
  });

  it("a write whose answer was lost, with another process's write on top of it, is found under that write: each hop counted once", async () => {
    const s = server();
    const a = s.process('replica-a/1', true, Infinity, 1);
    await a.commit(s.task(), { hopCount: 1, allowed: 1, events: [hop(1)] }).catch(() => undefined);
    expect(s.task().status?.audit?.count).toBe(1);
    await s.process('replica-b/1').commit(s.task(), { hopCount: 1, allowed: 1, events: [hop(2)] });
    // replica-a writes again: its first write is not its head any more, but it is under it.
    await a.commit(s.task(), { hopCount: 1, allowed: 1, events: [hop(3)] });
    expect(s.task().status?.hops?.allowed).toBe(3);
    expect(s.task().status?.chain?.hopCount).toBe(3);
    const { chains, breaks } = verified(s.stream);
    expect(breaks).toEqual([]);
    expect(chains[0]?.records.map((r) => r.data.hopId)).toEqual(['h1_1', 'h1_2', 'h1_3']);
    expect(chains[0]).toMatchObject({ count: 3, head: s.task().status?.audit?.head });
  });

  it("an ended task's head whose answer its own writer lost is not marked emitted before its records are out", async () => {
    const s = server();
    s.end();
    const a = s.process('replica-a/1', true, Infinity, 1);
    await a.commit(s.task(), { events: [{ type: 'completion', at: '2026-11-21T10:00:01Z', data: { reason: 'AgentReported' } }] }).catch(() => undefined);
    // The write landed; its records are not out yet: the controller's look must not mark them.
    expect(s.task().status?.audit?.count).toBe(1);
    expect(await a.settleOutbox(s.task())).toBeGreaterThan(0);
    expect(s.task().status?.audit?.emitted).toBeUndefined();
    // The journal's retry finds the write landed and emits its records; no outbox is left unmarked.
    await vi.waitFor(() => expect(s.stream.map((r) => r.seq)).toEqual([1]), { timeout: 5_000 });
    await vi.waitFor(() => expect(!s.task().status?.audit?.unsent?.length || s.task().status?.audit?.emitted).toBe(true));
    s.advance(ORPHANED_OUTBOX_MS * 2);
    expect(await s.process('replica-b/1').settleOutbox(s.task())).toBeUndefined();
    expect(s.stream).toHaveLength(1);
  });

  it('a write whose answer was lost is still found under a violation written on top of it and marked emitted: counted once', async () => {
    const s = server();
    const a = s.process('replica-a/1', true, Infinity, 1);
    await a.commit(s.task(), { hopCount: 1, allowed: 1, events: [hop(1)] }).catch(() => undefined);
    await s.process('replica-b/1').commit(s.task(), { hopCount: 1, denied: 1, violation: { hopId: 'h1_2', rule: 'no-exfiltration', message: 'email send' }, events: [hop(2)] });
    await settled();
    expect(s.task().status?.audit?.emitted).toBe(true);
    await a.commit(s.task(), { hopCount: 1, denied: 1, events: [hop(3)] });
    expect(s.task().status?.hops).toMatchObject({ allowed: 1, denied: 2 });
    const { chains, breaks } = verified(s.stream);
    expect(breaks).toEqual([]);
    expect(chains[0]?.records.map((r) => r.data.hopId)).toEqual(['h1_1', 'h1_2', 'h1_3']);
  });
});

describe("the outbox's encoding", () => {
  const busy = (n: number) =>
    linkRecords(
      { key: 'ns/t', uid: 'u1' },
      GENESIS,
      0,
      Array.from({ length: n }, (_, i) => ({
        type: 'hop_decided' as const,
        at: new Date(Date.parse('2026-11-21T10:00:00Z') + i * 7).toISOString(),
        data: { hopId: `h1_${i.toString(36)}x${(i * 7919).toString(36)}`, depth: 1, tool: 'tickets', action: 'read', resource: 'ticket/4711', digest: createHash('sha256').update(String(i)).digest('hex'), decision: 'allow', reasons: [{ rule: 'allow-reads', effect: 'Permit' }], pod: { name: 'agent-0', uid: 'a1b2c3d4-0000-4000-8000-000000000001' } },
      })),
    );

  it("a busy task's write carries its records in a fraction of their size: what the API server, etcd and every watch pay for on each write", () => {
    const records = busy(50);
    const json = records.map((r) => JSON.stringify(r)).join('').length;
    const written = encodeOutbox(records).join('').length;
    expect(written).toBeLessThan(json / 4);
    expect(decodeOutbox(encodeOutbox(records))).toEqual(records);
  });

  it('gives back every record byte for byte, whatever an agent put in it (newlines, quotes, any Unicode), so each hashes as it did when written', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ resource: fc.string({ unit: 'grapheme' }), intent: fc.string({ unit: 'binary' }), n: fc.integer() }, { noNullPrototype: true }), { minLength: 1, maxLength: 20 }), (data) => {
        const records = linkRecords({ key: 'ns/t', uid: 'u1' }, GENESIS, 0, data.map((d) => ({ type: 'hop_decided' as const, at: '2026-11-21T10:00:00Z', data: d })));
        const back = decodeOutbox(encodeOutbox(records));
        expect(back).toStrictEqual(records);
        expect(back.map((r) => hashRecord(r))).toEqual(records.map((r) => r.hash));
      }),
      { numRuns: 300 },
    );
  });

  it('an outbox an earlier version left (a record an entry, base64 of its JSON) is still carried out by the next writer', async () => {
    const s = server();
    await s.process('replica-a/1', false).commit(s.task(), { hopCount: 2, events: [hop(1), hop(2)] });
    const audit = s.task().status?.audit;
    const earlier = decodeOutbox(audit?.unsent ?? []).map((r) => Buffer.from(JSON.stringify(r), 'utf8').toString('base64'));
    expect(earlier).toHaveLength(2);
    s.task().status = { ...s.task().status, audit: { ...audit, head: audit?.head ?? '', count: audit?.count ?? 0, unsent: earlier } };

    await s.process('replica-b/1').commit(s.task(), { hopCount: 1, events: [hop(3)] });
    const { chains, breaks } = verified(s.stream);
    expect(breaks).toEqual([]);
    expect(chains[0]?.records.map((r) => r.data.hopId)).toEqual(['h1_1', 'h1_2', 'h1_3']);
  });

  const deflated = (text: string) => `deflate:${deflateRawSync(text).toString('base64')}`;

  it('an outbox written to inflate past its bound is not inflated: what came before it reads, nothing after it is trusted', () => {
    const good = encodeOutbox(busy(2));
    // Some 20 MiB of records, deflated to a few KiB.
    const line = JSON.stringify(busy(1)[0]);
    const bomb = deflated(Array.from({ length: Math.ceil((20 * 1024 * 1024) / line.length) }, () => line).join('\n'));
    expect(decodeOutbox([...good, bomb, ...good]).map((r) => r.seq)).toEqual([1, 2]);
  });

  it('the bound is for the whole outbox: many entries each just under it (a status write of about a MiB) are not each inflated and parsed', () => {
    // Each entry inflates to 15 MiB of lines, millions of JSON values; sixty of them used to crash the process.
    const entry = deflated('0\n'.repeat((15 * 1024 * 1024) / 2));
    const started = performance.now();
    expect(decodeOutbox(Array.from({ length: 60 }, () => entry))).toEqual([]);
    expect(performance.now() - started).toBeLessThan(5_000);
  });

  it('only what has the shape of a record comes out: null, numbers, arrays, other objects and lines that are not JSON are skipped, each alone', () => {
    const [first, second] = busy(2).map((r) => JSON.stringify(r));
    // Shaped like a record but for one field each: no data, a type no record has, data that is not an object.
    const record = busy(1)[0] as AuditRecord;
    const { data: _data, ...noData } = record;
    const almost = [noData, { ...record, type: 'deleted' }, { ...record, data: 'x' }].map((r) => JSON.stringify(r));
    const mixed = deflated([first, 'null', '0', '[1]', '{"v":1}', '{"torn":', ...almost, second].join('\n'));
    const earlier = ['null', '7', 'not json'].map((t) => Buffer.from(t).toString('base64'));
    expect(decodeOutbox([...earlier, mixed]).map((r) => r.seq)).toEqual([1, 2]);
  });
});
