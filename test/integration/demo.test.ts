import { spawn } from 'node:child_process';
import { mkdtemp } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { receivedSpans, startCollector } from '../env/otelcol.js';

const bin = path.resolve(import.meta.dirname, '../../bin/chainwarden.js');

describe('chainwarden demo', () => {
  it('tells the whole story and exits 0: AWS and MCP calls through the gateways, an approval, a violation on a real tool call, refusal, the trace, a denied AWS call; with the standard OTLP variable set, its operator sends the spans', async () => {
    const collector = await startCollector(await mkdtemp(path.join(os.tmpdir(), 'demo-otel-')));
    const child = spawn(process.execPath, [bin, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, OTEL_EXPORTER_OTLP_ENDPOINT: collector.tracesUrl.replace(/\/v1\/traces$/, '') } });
    let out = '';
    child.stdout.on('data', (c: Buffer) => (out += c.toString()));
    child.stderr.on('data', (c: Buffer) => (out += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    expect(code, out).toBe(0);
    // Through the gateway: the SDK holds a placeholder, and AWS saw the task's session.
    expect(out).toMatch(/placeholder key ASIACW[A-Z2-7]{14}/);
    expect(out).toMatch(/GetCallerIdentity: arn:aws:sts::123456789012:assumed-role\/support-agent\//);
    expect(out).toMatch(/s3:\/\/support-customers\/4711.json: \{"customer":"Ada"/);
    expect(out).toMatch(/payments refund order\/981 \(42\) +→ pending_approval/);
    expect(out).toMatch(/approved by alice@example.com \(support-leads\)/);
    // Tool calls through the MCP gateway: the server gets the Secret's credential and a token it verifies; the email after PII never reaches its server.
    expect(out).toMatch(/tools\/list on tickets: read, comment \(/);
    expect(out).toMatch(/tickets read \{ticketId: 4711\} → \{"ticket":"4711".*\(hop h1_/);
    expect(out).toMatch(/the tickets server got Authorization from Secret tickets-mcp .* Txn-Token: verified against \/keys; scope tickets:comment/);
    expect(out).toMatch(/email send \{to: ada@example.com\} → error -32001: .*denied by no-exfiltration \(hop h2_/);
    expect(out).toMatch(/the email server received 0 calls/);
    expect(out).toMatch(/GET \/v1\/credentials → 403 .*task_not_active/);
    expect(out).toMatch(/S3 GetObject through the gateway → AccessDenied: .*is Violated/);
    expect(out).toMatch(/tools\/call read on tickets → error -32001: .*is Violated/);
    expect(out).toMatch(/chain verified: \d+ records, head matches the task's status/);
    expect(out).toMatch(/email send mail\/ada@example.com → deny \[no-exfiltration\]/);
    // A denied AWS call: the SDK's AccessDenied names the rule and hop; the object is untouched.
    expect(out).toMatch(/S3 DeleteObject s3:\/\/support-customers\/4711.json → AccessDenied: s3:DeleteObject on arn:aws:s3:::support-customers\/4711.json was denied by default-deny \(hop h1_/);
    expect(out).toMatch(/the record is untouched in the emulator: \{"customer":"Ada"/);
    // The spans of the story's task, from the operator the demo started.
    await expect.poll(async () => (await receivedSpans(collector.file)).filter((s) => s.attributes['chainwarden.task'] === 'support/ticket-4711').map((s) => s.name), { timeout: 10_000 }).toEqual(expect.arrayContaining(['task admitted', 'hop tickets read', 'violation']));
    await collector.stop();
  }, 180_000);
});
