import { spawnSync } from 'node:child_process';
import { createWriteStream, mkdtempSync, writeFileSync } from 'node:fs';
import { Readable } from 'node:stream';
import { finished } from 'node:stream/promises';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { applyDelta, emptyDelta } from '../../../src/audit/journal.js';
import { canonicalJson, GENESIS, hashRecord, linkRecords, recordJson, type AuditRecord } from '../../../src/audit/record.js';
import { ChainVerifier, duplicateAuditKey, readAuditRecords, readAuditStream, verifyChains } from '../../../src/audit/verify.js';
import type { AgentTask } from '../../../src/api/schema.js';

const events = Array.from({ length: 5 }, (_, i) => ({ type: 'hop_decided' as const, at: `2026-11-21T10:00:0${i}Z`, data: { hopId: `h1_${i}`, decision: 'allow' } }));
/** Each chain links events of its own, as the journal does: a record holds its event's data, so a test that edits one leaves the next chain untouched. */
const fresh = (list: typeof events) => list.map((e) => ({ ...e, data: { ...e.data } }));
const chain = (): AuditRecord[] => linkRecords({ key: 'ns/t', uid: 'u1' }, GENESIS, 0, fresh(events));
const lines = (records: AuditRecord[]) => records.map((r) => JSON.stringify({ level: 30, time: 'x', audit: r })).join('\n');
/** The breaks found, the same whether the records are kept (trace) or only their links (audit verify). */
const verify = (records: AuditRecord[]) => {
  const entries = readAuditRecords(lines(records));
  const kept = verifyChains(entries);
  const slim = new ChainVerifier(false);
  for (const e of entries) slim.add(e);
  const linked = slim.finish();
  expect(linked.breaks).toEqual(kept.breaks);
  expect(linked.chains).toEqual(kept.chains.map((c) => ({ ...c, records: [] })));
  expect(slim.count).toBe(entries.length);
  return kept.breaks;
};
const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');

describe('audit chain', () => {
  it('encodes canonically: key order does not change the bytes', () => {
    expect(canonicalJson({ b: 1, a: { d: [1, { f: 2, e: 1 }], c: null } })).toBe('{"a":{"c":null,"d":[1,{"e":1,"f":2}]},"b":1}');
  });

  it('encodes every value exactly as streams already written were hashed (fuzz): sorted keys by code unit, undefined left out, no whitespace', () => {
    // The form every record so far was hashed in; a change of a single byte would break every stream's chain.
    const written = (value: unknown): string => {
      if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
      if (Array.isArray(value)) return `[${value.map(written).join(',')}]`;
      const entries = Object.entries(value as Record<string, unknown>)
        .filter(([, v]) => v !== undefined)
        .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
      return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${written(v)}`).join(',')}}`;
    };
    const key = fc.oneof(fc.string(), fc.string({ unit: 'grapheme' }), fc.constantFrom('a', 'A', 'é', 'e\u0301', '\uD83D\uDE00', '\uFFFF', '', '__proto__x', '10', '9'));
    const value = fc.letrec((tie) => ({
      any: fc.oneof({ depthSize: 'small' }, fc.constant(undefined), fc.constant(null), fc.boolean(), fc.double(), fc.integer(), fc.string({ unit: 'binary' }), fc.array(tie('any'), { maxLength: 4 }), fc.dictionary(key, tie('any'), { maxKeys: 5 })),
    })).any;
    fc.assert(fc.property(value, (v) => canonicalJson(v) === written(v)), { numRuns: 5_000 });
    // Objects with more keys than the in-place sort takes, and the same keys again (quoted from memory the second time).
    const wide = fc.dictionary(key, fc.oneof(fc.string(), fc.integer(), fc.constant(undefined)), { minKeys: 10, maxKeys: 40 });
    fc.assert(fc.property(wide, (v) => canonicalJson(v) === written(v) && canonicalJson(v) === written(v)), { numRuns: 2_000 });
  });

  it('links each record to the one before, from the genesis hash', () => {
    const records = chain();
    expect(records[0]?.prev).toBe(GENESIS);
    expect(records[1]?.prev).toBe(records[0]?.hash);
    expect(records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
    expect(verify(records)).toEqual([]);
  });

  it('writes a linked record as the bytes its hash was taken over, with the hash added; any other record as JSON.stringify gives it', () => {
    for (const record of chain()) {
      const { hash, ...body } = record;
      const line = recordJson(record);
      expect(line).toBe(`${canonicalJson(body).slice(0, -1)},"hash":"${hash}"}`);
      expect(JSON.parse(line)).toStrictEqual(record);
      expect(hashRecord(JSON.parse(line) as AuditRecord)).toBe(hash);
      expect(recordJson({ ...record })).toBe(JSON.stringify(record));
    }
  });

  it("verifies a stream that mixes an earlier version's lines (fields in insertion order) with this one's, an exact copy in the other order counting once", () => {
    const records = chain();
    const earlier = (r: AuditRecord) => JSON.stringify({ time: 'x', audit: r });
    const now = (r: AuditRecord) => `{"time":"x","audit":${recordJson(r)}}`;
    expect(now(records[0]!)).not.toBe(earlier(records[0]!));
    const text = [earlier(records[0]!), now(records[1]!), earlier(records[2]!), now(records[2]!), now(records[3]!), earlier(records[4]!)].join('\n');
    const { chains, breaks } = verifyChains(readAuditRecords(text));
    expect(breaks).toEqual([]);
    expect(chains[0]?.records.map((r) => r.seq)).toEqual([1, 2, 3, 4, 5]);
  });

  it('calls two chains intact exactly when nothing was changed and nothing but their ends removed, keeping whole records or links alone (fuzz)', () => {
    const other = () => linkRecords({ key: 'ns/u', uid: 'u9' }, GENESIS, 0, fresh(events.slice(0, 3)));
    const op = fc.oneof(
      fc.record({ kind: fc.constant('edit' as const), at: fc.nat(), to: fc.constantFrom('deny', 'allow') }),
      fc.record({ kind: fc.constant('drop' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('copy' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('forge' as const), at: fc.nat() }),
      fc.record({ kind: fc.constant('reseq' as const), at: fc.nat(), seq: fc.integer({ min: 1, max: 9 }) }),
      fc.record({ kind: fc.constant('swap' as const), at: fc.nat(), with: fc.nat() }),
      fc.record({ kind: fc.constant('malform' as const), at: fc.nat() }),
    );
    fc.assert(
      fc.property(fc.array(op, { maxLength: 6 }), (ops) => {
        const records: AuditRecord[] = [...chain(), ...other()];
        for (const o of ops) {
          const i = o.at % records.length;
          const r = records[i]!;
          if (o.kind === 'edit') records[i] = { ...r, data: { ...r.data, decision: o.to } };
          else if (o.kind === 'drop' && records.length > 1) records.splice(i, 1);
          else if (o.kind === 'copy') records.push({ ...r });
          else if (o.kind === 'forge') records.push({ ...r, data: { hopId: 'forged' } });
          else if (o.kind === 'reseq') records[i] = { ...r, seq: o.seq };
          else if (o.kind === 'swap') [records[i], records[o.with % records.length]] = [records[o.with % records.length]!, r];
          else if (o.kind === 'malform') records[i] = { ...r, prev: 'x' };
        }
        // Intact exactly when every record left is an original, exactly, and what is gone of a chain is its end alone (which `trace` catches).
        const originals = [...chain(), ...other()];
        const forms = new Set(originals.map((r) => canonicalJson(r)));
        const left = new Set(records.map((r) => canonicalJson(r)));
        const kept = originals.filter((r) => left.has(canonicalJson(r)));
        const lastKept = (task: string) => Math.max(0, ...kept.filter((r) => r.task === task).map((r) => r.seq));
        const intact = [...left].every((f) => forms.has(f)) && originals.every((r) => left.has(canonicalJson(r)) || r.seq > lastKept(r.task));
        expect(verify(records).length === 0).toBe(intact);
      }),
      { numRuns: 1_000 },
    );
  });

  it('tells an exact copy (one record) from an edit that keeps the hash (two records claiming one seq)', () => {
    const records = chain();
    const edited = { ...records[2]!, data: { ...records[2]!.data, decision: 'deny' } };
    const breaks = verify([...records, { ...records[1]! }, edited]);
    expect(breaks.map((b) => [b.seq, b.problem.replace(/ \(.*/, '')])).toEqual([
      [3, 'its content does not match its hash'],
      [3, '2 different records claim seq 3'],
    ]);
  });

  it('orders records by their links, not by line order: a reversed stream is intact', () => {
    expect(verify(chain().reverse())).toEqual([]);
  });

  it.each([
    ['an edited record', (r: AuditRecord[]) => ((r[2]!.data.decision = 'deny'), r)],
    ['a removed record', (r: AuditRecord[]) => (r.splice(2, 1), r)],
    ['two records swapping their seq', (r: AuditRecord[]) => ([r[1]!.seq, r[2]!.seq] = [r[2]!.seq, r[1]!.seq], r)],
    ['an inserted record', (r: AuditRecord[]) => (r.splice(3, 0, { ...r[2]!, data: { hopId: 'forged' } }), r)],
    ['a re-hashed edit (the next link breaks)', (r: AuditRecord[]) => {
      const [forged] = linkRecords({ key: 'ns/t', uid: 'u1' }, r[1]!.hash, 2, [{ ...events[2]!, data: { hopId: 'h1_2', decision: 'deny' } }]);
      r[2] = forged!;
      return r;
    }],
  ])('detects %s', (_name, tamper) => {
    const breaks = verify(tamper(chain()));
    expect(breaks.length).toBeGreaterThan(0);
  });

  it('chainwarden audit verify exits 0 on an intact stream and 1 naming the break otherwise', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'verify-'));
    const good = path.join(dir, 'good.jsonl');
    writeFileSync(good, `not json\n${lines(chain())}\n`);
    const ok = spawnSync(process.execPath, [bin, 'audit', 'verify', good], { encoding: 'utf8' });
    expect(ok.status).toBe(0);
    expect(ok.stdout).toMatch(/ok: 1 chains, 5 records intact/);
    const records = chain();
    records.splice(1, 1);
    const bad = path.join(dir, 'bad.jsonl');
    writeFileSync(bad, lines(records));
    const broken = spawnSync(process.execPath, [bin, 'audit', 'verify', bad], { encoding: 'utf8' });
    expect(broken.status).toBe(1);
    expect(broken.stdout).toMatch(/BROKEN ns\/t seq 2 \(line 2\): record 2 is missing \(record 3 is the next in the stream, at line 2\)/);
  });

  it('breaks a record that holds a key twice, which JSON.parse would read as its last copy; the logger repeating its own keys is no break', () => {
    const [first] = chain();
    const line = JSON.stringify({ level: 30, time: 'x', audit: first });
    // A forged first copy: the hash still matches what JSON.parse keeps, the last.
    const forged = line.replace('"decision":"allow"', '"decision":"deny","decision":"allow"');
    expect(JSON.parse(forged)).toEqual(JSON.parse(line));
    const [entry] = readAuditRecords(forged);
    expect(verifyChains(entry ? [entry] : []).breaks).toEqual([expect.objectContaining({ seq: 1, problem: expect.stringContaining('it holds the key "decision" twice') as string })]);
    // Two audit objects on one line, the same key spelled with an escape, a repeated key of the logger's: the first two break, the third does not.
    expect(readAuditRecords(`{"audit":${JSON.stringify({ v: 2 })},${line.slice(1)}`)[0]?.problem).toContain('"audit" twice');
    expect(readAuditRecords(forged.replace('"decision":"deny"', '"decisio\\u006e":"deny"'))[0]?.problem).toContain('"decision" twice');
    expect(readAuditRecords(`{"level":30,"task":"a","task":"b",${line.slice(1)}`)[0]?.problem).toBeUndefined();
  });

  it('breaks a record holding a number the hash reads as another: too large for a double, past 2^53, -0, or written another way', () => {
    const [first] = chain();
    const line = JSON.stringify({ level: 30, time: 'x', audit: first });
    for (const [written, hashedAs] of [['1e400', 'null'], ['9007199254740993', '9007199254740992'], ['-0', '0'], ['1.0', '1'], ['1E0', '1']]) {
      const forged = line.replace('"data":{', `"data":{"amount":${written},`);
      const original = line.replace('"data":{', `"data":{"amount":${hashedAs},`);
      // The hash cannot tell them apart: both parse to the same value.
      expect(JSON.stringify(JSON.parse(forged))).toBe(JSON.stringify(JSON.parse(original)));
      expect(readAuditRecords(forged)[0]?.problem).toBe(`it holds the number ${written}, which the hash covers as ${hashedAs}: a person or another reader sees another value than the one hashed (edited)`);
      expect(readAuditRecords(original)[0]?.problem).toBeUndefined();
    }
    // The logger's own fields are not the record's.
    expect(readAuditRecords(`{"level":30.0,${line.slice(1)}`)[0]?.problem).toBeUndefined();
  });

  it('finds a repeated key at any depth of any record, and none in what JSON.stringify writes (fuzz)', () => {
    const key = fc.string({ maxLength: 6 });
    fc.assert(
      fc.property(fc.dictionary(key, fc.jsonValue({ maxDepth: 3 }), { minKeys: 1 }), fc.string({ maxLength: 6 }), (data, text) => {
        const line = JSON.stringify({ level: 30, note: [text, { audit: text }], audit: { v: 1, data } });
        expect(duplicateAuditKey(line)).toBeUndefined();
        expect(readAuditRecords(line)[0]?.problem).toBeUndefined();
        const [name] = Object.keys(data);
        const repeated = line.replace('"data":{', () => `"data":{${JSON.stringify(name)}:${JSON.stringify(text)},`);
        expect(duplicateAuditKey(repeated)).toBe(name);
      }),
      { numRuns: 2_000 },
    );
  });

  it('chainwarden audit verify tells apart the tasks of one name by uid, and only then', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'verify-'));
    const file = path.join(dir, 'two.jsonl');
    writeFileSync(file, `${lines(chain())}\n${lines(linkRecords({ key: 'ns/t', uid: 'u9' }, GENESIS, 0, events.slice(0, 2)))}\n${lines(linkRecords({ key: 'ns/other', uid: 'u3' }, GENESIS, 0, events))}\n`);
    const out = spawnSync(process.execPath, [bin, 'audit', 'verify', file], { encoding: 'utf8' });
    expect(out.status).toBe(0);
    expect(out.stdout).toMatch(/^ns\/t \(u1\): 5 records, head [0-9a-f]{64}\nns\/t \(u9\): 2 records, head [0-9a-f]{64}\nns\/other: 5 records/);
  });

  it('reads a log arriving in pieces cut anywhere, even inside a character, as it reads the whole text (fuzz)', async () => {
    const record = (i: number) => JSON.stringify({ level: 30, time: `t${i}`, audit: { ...chain()[i % 5], data: { note: 'é€😀' } } });
    const line = fc.oneof(fc.nat({ max: 9 }).map(record), fc.string({ unit: 'binary' }), fc.constant(''), fc.constant('{"audit":{"v":2}}'), fc.constant('{not json'));
    await fc.assert(
      fc.asyncProperty(fc.array(line, { maxLength: 12 }), fc.constantFrom('\n', '\r\n'), fc.array(fc.nat(), { maxLength: 8 }), async (ls, eol, cuts) => {
        const bytes = Buffer.from(ls.join(eol));
        const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
        const pieces = [0, ...at].map((from, i) => bytes.subarray(from, at[i] ?? bytes.length));
        const streamed = await readAuditStream(Readable.from(pieces, { objectMode: false }), 'f');
        expect(streamed).toEqual(readAuditRecords(bytes.toString('utf8'), 'f'));
      }),
      { numRuns: 500 },
    );
  });

  it('chainwarden audit verify checks a log of 150,000 records, more than a spread of arguments takes', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'verify-'));
    const big = path.join(dir, 'big.jsonl');
    const out = createWriteStream(big);
    const count = 150_000;
    let head = GENESIS;
    for (let from = 0; from < count; from += 5_000) {
      const records = linkRecords({ key: 'ns/long', uid: 'u2' }, head, from, Array.from({ length: 5_000 }, (_, i) => ({ type: 'hop_decided' as const, at: '2026-11-21T10:00:00Z', data: { hopId: `h1_${from + i}`, decision: 'allow' } })));
      head = records.at(-1)?.hash ?? head;
      out.write(`${lines(records)}\n`);
    }
    out.end();
    await finished(out);
    const ok = spawnSync(process.execPath, [bin, 'audit', 'verify', big], { encoding: 'utf8' });
    expect(ok.stderr).not.toMatch(/RangeError|Maximum call stack/);
    expect(ok.stdout).toMatch(new RegExp(`ns/long: ${count} records, head ${head}`));
    expect(ok.status).toBe(0);
  }, 120_000);
});

describe('applyDelta', () => {
  const task: AgentTask = {
    apiVersion: 'chainwarden.io/v1alpha1',
    kind: 'AgentTask',
    metadata: { name: 't', namespace: 'ns', uid: 'u1' },
    spec: { serviceAccountName: 'sa', policyRef: { name: 'p' }, ttl: '1h' },
    status: {
      state: 'Bound',
      hops: { allowed: 0, denied: 0, pending: 1 },
      pendingHops: [{ hopId: 'h1_x', digest: 'd', tool: 'payments', action: 'refund', resource: 'o', depth: 1, rules: ['r'], requestedAt: 'a', timeoutAt: 'b' }],
    },
  };
  const resolution = { hopId: 'h1_x', decision: 'allow' as const, systems: ['payments'], dataClasses: ['payment'], recent: { hopId: 'h1_x', decision: 'allow', rules: ['approval:a'], at: 'now' }, events: [{ type: 'approval' as const, at: 'now', data: {} }] };

  it('counts a resolution once, even when two replicas send it', () => {
    const once = applyDelta(task, { ...emptyDelta(), resolutions: [resolution] });
    expect(once.status.hops).toEqual({ allowed: 1, denied: 0, pending: 0 });
    expect(once.records).toHaveLength(1);
    const twice = applyDelta({ ...task, status: once.status }, { ...emptyDelta(), resolutions: [resolution] });
    expect(twice.status.hops).toEqual({ allowed: 1, denied: 0, pending: 0 });
    expect(twice.records).toHaveLength(0);
  });

  it('counts a rejected or timed-out hop among the chain\'s prior denials, once, as raw Cedar reads them; an approved one not', () => {
    const rejectedOnce = applyDelta(task, { ...emptyDelta(), resolutions: [{ ...resolution, decision: 'deny' as const, systems: [], dataClasses: [] }] });
    expect(rejectedOnce.status.hops).toEqual({ allowed: 0, denied: 1, pending: 0 });
    expect(rejectedOnce.status.chain?.priorDenials).toBe(1);
    const again = applyDelta({ ...task, status: rejectedOnce.status }, { ...emptyDelta(), resolutions: [{ ...resolution, decision: 'deny' as const, systems: [], dataClasses: [] }] });
    expect(again.status.chain?.priorDenials).toBe(1);
    expect(applyDelta(task, { ...emptyDelta(), resolutions: [resolution] }).status.chain?.priorDenials ?? 0).toBe(0);
  });

  it('records the violation as a fact, the first one only, and leaves state to the controller', () => {
    const { status } = applyDelta(task, { ...emptyDelta(), violation: { hopId: 'h1_y', rule: 'never-admin', message: 'm' } });
    expect(status.violation?.hopId).toBe('h1_y');
    expect(status.state).toBe('Bound');
    expect(status.conditions).toBeUndefined();
    const again = applyDelta({ ...task, status }, { ...emptyDelta(), violation: { hopId: 'h1_z', rule: 'other', message: 'm' } });
    expect(again.status.violation?.hopId).toBe('h1_y');
  });
});
