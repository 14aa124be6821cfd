import { spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { printable } from '../../../src/api/text.js';
import { GENESIS, linkRecords } from '../../../src/audit/record.js';
import { renderTrace } from '../../../src/audit/trace.js';

const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');
/** C0, DEL, C1, bidi controls and marks, line and paragraph separators. */
// eslint-disable-next-line no-control-regex -- finding control characters is the point
const FORBIDDEN = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029]/;
const HOSTILE = 'ticket/1\u001b[2K\r\u001b[1A\u2502  \u2514\u2500 allow\nchain verified\u202egpj.exe\u2066\u200f\u0085\u009b31m\u0000\\x1b';

describe('printable', () => {
  it('writes controls and bidi characters as visible escapes, and doubles the backslash', () => {
    expect(printable('a\u001bb\nc\u202ed\u2066e\u200ff\u0085g\\h\ti\u0000')).toBe('a\\x1bb\\nc\\u202ed\\u2066e\\u200ff\\x85g\\\\h\\ti\\x00');
    expect(printable('ticket/4711 → allow │ └─ é 漢字 🙂')).toBe('ticket/4711 → allow │ └─ é 漢字 🙂');
  });

  it('never lets a forbidden character through, and is one-to-one (fuzz)', () => {
    const text = fc.string({ unit: fc.oneof(fc.constantFrom('\u001b', '\n', '\r', '\\', 'x', '1', 'b', '\u202e', '\u2066', '\u0085', '\u2028'), fc.string({ unit: 'binary', minLength: 1, maxLength: 1 })), maxLength: 30 });
    fc.assert(
      fc.property(text, text, (a, b) => {
        expect(printable(a)).not.toMatch(FORBIDDEN);
        if (a !== b) expect(printable(a)).not.toBe(printable(b));
      }),
      { numRuns: 20_000 },
    );
  });

  it('keeps every line of a trace printable when an agent chose hostile strings', () => {
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [
      { type: 'hop_decided', at: '2026-01-01T00:00:00Z', data: { hopId: 'h1_a', tool: 'tickets', action: 'read', resource: HOSTILE, intent: HOSTILE, decision: 'allow', reasons: [{ rule: HOSTILE }] } },
      { type: 'approval', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_a', decision: 'Approve', reason: HOSTILE, approver: { username: HOSTILE, groups: [HOSTILE] } } },
      { type: 'hop_decided', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_a', decision: 'allow' } },
      { type: 'violation', at: '2026-01-01T00:00:02Z', data: { hopId: HOSTILE, message: HOSTILE } },
    ]);
    const out = renderTrace(records);
    expect(out.split('\n').every((line) => !FORBIDDEN.test(line))).toBe(true);
    expect(out).toContain('\\x1b[2K\\r\\x1b[1A');
  });

  it("an agent's resource cannot read as the line's decision: text with spaces or an arrow is quoted and cut", () => {
    const spoof = `customer@example.com → allow [reply-by-email]${' '.repeat(200)}`;
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [
      { type: 'hop_decided', at: '2026-01-01T00:00:00Z', data: { hopId: 'h1_a', tool: 'email', action: 'send', resource: spoof, decision: 'deny', reasons: [{ rule: 'no-exfiltration' }] } },
      { type: 'hop_decided', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_b', tool: 'tickets', action: 'read', resource: 'ticket/4711', decision: 'allow', reasons: [{ rule: 'read' }] } },
    ]);
    const out = renderTrace(records);
    expect(out).toContain(`email send "customer@example.com → allow [reply-by-email]${' '.repeat(35)}"…(+165) → deny [no-exfiltration]  (h1_a)`);
    expect(out).toContain('tickets read ticket/4711 → allow [read]  (h1_b)');
  });

  it("an agent's resource cannot rewrite a violation's line: what was denied is quoted as a hop's is, an older record's message quoted whole", () => {
    const spoof = `all was allowed by approval:cfo (ok);${'\u3000'.repeat(300)}`;
    const message = `db export ${spoof} was denied by no-exports`;
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [
      { type: 'violation', at: '2026-01-01T00:00:00Z', data: { hopId: 'h1_a', rule: 'no-exports', message, tool: 'db', action: 'export', resource: spoof } },
      { type: 'violation', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_b', rule: 'no-exports', message } },
    ]);
    const out = renderTrace(records);
    expect(out).toContain('VIOLATION by hop h1_a: db export "all was allowed by approval:cfo (ok);');
    expect(out).toMatch(/VIOLATION by hop h1_a: db export "[^"]+"…\(\+\d+\) was denied by no-exports/);
    expect(out).toMatch(/VIOLATION by hop h1_b: "db export all was allowed by approval:cfo \(ok\);[^"]*"…\(\+\d+\)$/m);
    // The wide spaces meant to push the truth off screen are shown as what they are.
    expect(out).not.toContain('\u3000');
    expect(out).toContain('(ok);\\\\u3000');
  });

  it('renders a forged record of odd shapes instead of crashing', () => {
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [
      { type: 'hop_decided', at: '2026-01-01T00:00:00Z', data: { hopId: 'h1_a', parentHop: 'h1_a', reasons: 'not-a-list' } },
      { type: 'approval', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_a', approver: { groups: 'not-a-list' } } },
      { type: 'hop_decided', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_a', reasons: [null, 7] } },
    ]);
    expect(renderTrace(records)).toMatch(/└─ 00:00:00 .* \[\] {2}\(h1_a\)\n {6}00:00:01 rejected by \?/);
  });

  it('cuts a forged loop of parents once, at its hop first in the chain, keeping what hangs from it in place', () => {
    const hop = (hopId: string, parentHop: string, second: number) => ({ type: 'hop_decided' as const, at: `2026-01-01T00:00:0${second}Z`, data: { hopId, parentHop, tool: 't', action: 'a', resource: hopId, decision: 'allow' } });
    // c → b → a → c, and d under a.
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [hop('h1_d', 'h1_a', 4), hop('h1_b', 'h1_a', 2), hop('h1_c', 'h1_b', 3), hop('h1_a', 'h1_c', 1)]);
    const lines = renderTrace(records).split('\n');
    expect(lines.slice(1, 5)).toEqual([
      '└─ 00:00:02 t a h1_b → allow []  (h1_b)',
      '   └─ 00:00:03 t a h1_c → allow []  (h1_c)',
      '      └─ 00:00:01 t a h1_a → allow []  (h1_a)',
      '         └─ 00:00:04 t a h1_d → allow []  (h1_d)',
    ]);
  });

  it('renders a forged chain of 20,000 hops, each under the one before, its lines of bounded width (drawn as it was, they grew to 60,000 characters)', () => {
    const hops = Array.from({ length: 20_000 }, (_, i) => ({ type: 'hop_decided' as const, at: '2026-01-01T00:00:00Z', data: { hopId: `h${i}_x`, parentHop: `h${i - 1}_x`, tool: 't', action: 'a', resource: 'r', decision: 'allow' } }));
    // The last one closes a loop back to the first.
    hops[0] = { ...hops[0], data: { ...hops[0]!.data, parentHop: 'h19999_x' } } as (typeof hops)[0];
    const out = renderTrace(linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, hops));
    const lines = out.split('\n');
    expect(lines.filter((l) => l.includes('→ allow'))).toHaveLength(20_000);
    expect(Math.max(...lines.map((l) => l.length))).toBeLessThan(64 * 3 + 80);
    expect(lines.at(20_000)).toContain('(depth 20000) ');
  });

  it('renders a forged hop with 200,000 children, more than a call takes arguments', () => {
    const hops = Array.from({ length: 200_001 }, (_, i) => ({ type: 'hop_decided' as const, at: '2026-01-01T00:00:00Z', data: { hopId: `h${i}_x`, ...(i > 0 ? { parentHop: 'h0_x' } : {}), decision: 'allow' } }));
    expect(renderTrace(linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, hops)).split('\n').filter((l) => l.includes('→ allow'))).toHaveLength(200_001);
  });

  it('renders fields that are objects whose toString is no function (String() throws on them) as their JSON', () => {
    const odd = { toString: 1, valueOf: 1 };
    const records = linkRecords({ key: 'ns/t', uid: 'u' }, GENESIS, 0, [
      { type: 'hop_decided', at: '2026-01-01T00:00:00Z', data: { hopId: 'h1_a', tool: odd, action: odd, resource: odd, decision: odd, reasons: [{ rule: odd }] } },
      { type: 'approval', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_a', decision: 'Approve', reason: odd, approver: { username: odd, groups: [odd] } } },
      { type: 'hop_decided', at: '2026-01-01T00:00:01Z', data: { hopId: 'h1_a', decision: odd } },
      { type: 'identity_bound', at: '2026-01-01T00:00:02Z', data: { spiffeID: odd, pods: [odd, null] } },
      { type: 'violation', at: '2026-01-01T00:00:03Z', data: { hopId: odd, message: odd } },
    ]);
    const out = renderTrace(records);
    // What the agent wrote is quoted (its own quotes escaped, then the backslashes doubled as every line's are).
    expect(out).toContain('00:00:00 "{\\\\"toString\\\\":1,\\\\"valueOf\\\\":1}" "{\\\\"toString\\\\":1,\\\\"valueOf\\\\":1}"');
    expect(out).toContain('approved by {"toString":1,"valueOf":1} ({"toString":1,"valueOf":1})');
    expect(out).toContain('VIOLATION by hop {"toString":1,"valueOf":1}');
  });

  it('the real chainwarden audit verify process prints no raw control or bidi character from a hostile stream', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'hostile-'));
    const file = path.join(dir, 'audit.jsonl');
    const records = linkRecords({ key: `ns/t${HOSTILE}`, uid: 'u' }, GENESIS, 0, [{ type: 'hop_decided', at: '2026-01-01T00:00:00Z', data: { resource: HOSTILE } }]);
    writeFileSync(file, [JSON.stringify({ audit: records[0] }), JSON.stringify({ audit: { ...records[0], seq: 2, data: { x: 1 } } })].join('\n'));
    const run = spawnSync(process.execPath, [bin, 'audit', 'verify', file], { encoding: 'utf8' });
    expect(run.status).toBe(1);
    expect(run.stdout).toContain('ns/tticket/1\\x1b[2K\\r');
    expect(run.stdout.split('\n').filter((l) => FORBIDDEN.test(l))).toEqual([]);
  });
});
