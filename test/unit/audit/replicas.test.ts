import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AUDIT_EVENTS, GENESIS, linkRecords, type AuditRecord } from '../../../src/audit/record.js';
import { checkHead, readAuditRecords, verifyChains, type AuditEntry } from '../../../src/audit/verify.js';

const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');

const event = fc.record({
  type: fc.constantFrom(...AUDIT_EVENTS),
  at: fc.integer({ min: 0, max: 10 ** 9 }).map((s) => new Date(1_790_000_000_000 + s * 1000).toISOString()),
  data: fc.dictionary(fc.string({ maxLength: 6 }), fc.oneof(fc.string({ maxLength: 8 }), fc.integer(), fc.boolean()), { maxKeys: 3 }),
});
/** Several tasks' chains, each written in one or more batches, as a journal would. */
const tasks = fc.uniqueArray(fc.tuple(fc.stringMatching(/^[a-z]{1,6}$/), fc.array(event, { minLength: 1, maxLength: 8 })), { minLength: 1, maxLength: 4, selector: ([name]) => name }).map((ts) =>
  ts.map(([name, events]) => linkRecords({ key: `ns/${name}`, uid: `uid-${name}` }, GENESIS, 0, events)),
);
/** The records of all tasks, split over up to 3 replica files and shuffled. */
const merged = (chains: AuditRecord[][], order: number[], files: number[]): AuditEntry[] =>
  chains
    .flat()
    .map((record, i) => ({ record: structuredClone(record), key: order[i] ?? i, source: `replica-${(files[i] ?? 0) % 3}.jsonl` }))
    .sort((a, b) => a.key - b.key)
    .map(({ record, source }, i) => ({ record, line: i + 1, source }));
const shuffle = fc.array(fc.integer(), { minLength: 40, maxLength: 40 });

describe('audit streams of several replicas', () => {
  it('any shuffle of a valid multi-task stream verifies, each chain in order with its head', () => {
    fc.assert(
      fc.property(tasks, shuffle, shuffle, (chains, order, files) => {
        const { chains: found, breaks } = verifyChains(merged(chains, order, files));
        expect(breaks).toEqual([]);
        expect(found).toHaveLength(chains.length);
        for (const c of chains) {
          const f = found.find((x) => x.taskUid === c[0]?.taskUid);
          expect(f?.records.map((r) => r.seq)).toEqual(c.map((r) => r.seq));
          expect(checkHead(f!, { count: c.length, head: c.at(-1)!.hash })).toBeUndefined();
        }
      }),
      { numRuns: 500 },
    );
  });

  it('any single dropped record is reported with its task and seq (the last one against the head in status)', () => {
    fc.assert(
      fc.property(tasks, shuffle, shuffle, fc.nat(), (chains, order, files, pick) => {
        const all = chains.flat();
        const dropped = all[pick % all.length]!;
        const entries = merged(chains, order, files).filter((e) => e.record.hash !== dropped.hash);
        const { chains: found, breaks } = verifyChains(entries);
        const own = chains.find((c) => c[0]?.taskUid === dropped.taskUid)!;
        if (dropped.seq < own.length) {
          expect(breaks).toContainEqual(expect.objectContaining({ task: dropped.task, seq: dropped.seq, problem: expect.stringMatching(/missing/) as unknown }));
        } else {
          const f = found.find((x) => x.taskUid === dropped.taskUid) ?? { count: 0, head: GENESIS };
          expect(checkHead(f, { count: own.length, head: own.at(-1)!.hash })).toMatch(/truncated/);
        }
      }),
      { numRuns: 500 },
    );
  });

  it('any single altered record is reported for its task', () => {
    const alteration = fc.oneof(
      fc.constant((r: AuditRecord) => void (r.data = { ...r.data, forged: true })),
      fc.constant((r: AuditRecord) => void (r.at = '1999-01-01T00:00:00.000Z')),
      fc.constant((r: AuditRecord) => void (r.seq += 1)),
      fc.constant((r: AuditRecord) => void (r.prev = 'f'.repeat(64))),
      fc.constant((r: AuditRecord) => void (r.hash = 'e'.repeat(64))),
      fc.constant((r: AuditRecord) => void (r.type = r.type === 'approval' ? 'violation' : 'approval')),
    );
    fc.assert(
      fc.property(tasks, shuffle, shuffle, fc.nat(), alteration, (chains, order, files, pick, alter) => {
        const entries = merged(chains, order, files);
        const victim = entries[pick % entries.length]!;
        const { task } = victim.record;
        alter(victim.record);
        const { breaks } = verifyChains(entries);
        expect(breaks.some((b) => b.task === task)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('a re-hashed forgery breaks the next link, reported with that seq', () => {
    const [chain] = [linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [0, 1, 2].map((i) => ({ type: 'hop_decided' as const, at: `2026-01-01T00:00:0${i}Z`, data: { i } })))];
    const [forged] = linkRecords({ key: 'ns/t', uid: 'u' }, chain[0]!.hash, 1, [{ type: 'hop_decided', at: '2026-01-01T00:00:01Z', data: { i: 'forged' } }]);
    const entries = [chain[2]!, forged!, chain[0]!].map((record, i) => ({ record, line: i + 1 }));
    expect(verifyChains(entries).breaks).toEqual([{ task: 'ns/t', seq: 3, line: 1, problem: 'it does not link to record 2: that record was altered, or this one was' }]);
  });

  it('chainwarden audit verify takes several files, in any order, and names the file and line of a break', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'replicas-'));
    const events = Array.from({ length: 6 }, (_, i) => ({ type: 'hop_decided' as const, at: `2026-01-01T00:00:0${i}Z`, data: { hopId: `h1_${i}` } }));
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, events);
    const line = (r: AuditRecord) => JSON.stringify({ audit: r });
    const a = path.join(dir, 'a.jsonl');
    const b = path.join(dir, 'b.jsonl');
    writeFileSync(a, [records[5], records[1], records[3]].map((r) => line(r!)).join('\n'));
    writeFileSync(b, [records[4], records[0], records[2]].map((r) => line(r!)).join('\n'));
    const ok = spawnSync(process.execPath, [bin, 'audit', 'verify', b, a], { encoding: 'utf8' });
    expect(ok.stdout + ok.stderr).toMatch(/ok: 1 chains, 6 records intact/);
    expect(ok.status).toBe(0);
    // A tail cut off leaves the streams consistent: the user is told where that is checked.
    expect(ok.stderr).toContain("is checked against the task's head: chainwarden trace NAMESPACE/TASK");

    writeFileSync(b, [records[4], records[0]].map((r) => line(r!)).join('\n'));
    const broken = spawnSync(process.execPath, [bin, 'audit', 'verify', a, b], { encoding: 'utf8' });
    expect(broken.status).toBe(1);
    expect(broken.stdout).toContain(`BROKEN ns/t seq 3 (${a}:3): record 3 is missing (record 4 is the next in the stream, at ${a}:3)`);
  });

  it('reports a record of the wrong shape instead of ordering it', () => {
    const entries = readAuditRecords('{"audit":{"v":1,"task":"ns/t","seq":"1"}}\n', 'x.jsonl');
    expect(verifyChains(entries).breaks).toEqual([{ task: 'ns/t', seq: 0, line: 1, source: 'x.jsonl', problem: 'it is not a well-formed audit record' }]);
  });

  it('reports a record nested thousands deep as a break, where hashing it would have exhausted the stack', () => {
    const deep = `${'{"a":'.repeat(20_000)}1${'}'.repeat(20_000)}`;
    const forged = `{"audit":{"v":1,"task":"ns/t","taskUid":"u","seq":1,"prev":"${'0'.repeat(64)}","at":"2026-11-21T10:00:00.000Z","type":"hop_decided","data":${deep},"hash":"${'1'.repeat(64)}"}}\n`;
    expect(verifyChains(readAuditRecords(forged, 'x.jsonl')).breaks).toEqual([{ task: 'ns/t', seq: 1, line: 1, source: 'x.jsonl', problem: 'it is not a well-formed audit record' }]);
    // Deep in a field beside data, the same.
    const beside = `{"audit":{"v":1,"task":"ns/t","taskUid":"u","seq":1,"prev":"${'0'.repeat(64)}","at":"2026-11-21T10:00:00.000Z","type":"hop_decided","data":{},"extra":${deep},"hash":"${'1'.repeat(64)}"}}\n`;
    expect(verifyChains(readAuditRecords(beside, 'x.jsonl')).breaks).toEqual([{ task: 'ns/t', seq: 1, line: 1, source: 'x.jsonl', problem: 'it is not a well-formed audit record' }]);
  });

  it('thousands of forged variants of one record cost one pass: each is a break, none stalls the check that exposes them', () => {
    const [real] = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [{ type: 'hop_decided', at: '2026-11-21T10:00:00.000Z', data: { hopId: 'h1' } }]);
    const variants = Array.from({ length: 20_000 }, (_, i) => ({ ...real!, data: { hopId: 'h1', n: i } }));
    // Compared pairwise, as they once were, 20,000 variants take minutes: past this test's timeout.
    const { breaks, chains } = verifyChains([real!, ...variants].map((record, i) => ({ record, line: i + 1 })));
    expect(chains[0]?.count).toBe(1);
    expect(breaks.filter((b) => b.problem.includes('different records claim seq 1'))).toHaveLength(1);
    expect(breaks.filter((b) => b.problem.includes('does not match its hash'))).toHaveLength(20_000);
  }, 20_000);
});
