import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, expect, it } from 'vitest';

const bin = path.resolve(import.meta.dirname, '../../bin/chainwarden.js');

describe('chainwarden demo', () => {
  it('tells the whole story and exits 0: credentials, hops, an approval, a violation, refusal, the trace', async () => {
    const child = spawn(process.execPath, [bin, 'demo'], { stdio: ['ignore', 'pipe', 'pipe'] });
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
    expect(out).toMatch(/email send customer@example.com +→ deny \[no-exfiltration\]/);
    expect(out).toMatch(/GET \/v1\/credentials → 403 .*task_not_active/);
    expect(out).toMatch(/S3 GetObject through the gateway → AccessDenied: .*is Violated/);
    expect(out).toMatch(/chain verified: \d+ records, head matches the task's status/);
  }, 180_000);
});
