import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { readAuditRecords } from '../../../src/audit/verify.js';
import { examplePolicy } from '../../builders/examples.js';
import { boundExampleAgent } from '../../env/hops.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { run, TASK } from './helpers.js';

describe('policy replay on a recorded audit stream', () => {
  test('a stricter policy shows the decisions it would change and exits 1; the recorded policy exits 0; a broken file names the field', async ({ admin, env, namespace }) => {
    // Recorded under a policy that lets the agent email after reading customer data.
    const lenient = (p: AgentPolicy) => void (p.spec.rules = (p.spec.rules ?? []).filter((r) => r.name !== 'no-exfiltration'));
    const agent = await boundExampleAgent(admin, env, namespace, { policy: lenient });
    const read = await agent.hop({ tool: 'tickets', action: 'read', resource: 'ticket/7' });
    const email = await agent.hop({ tool: 'email', action: 'send', resource: 'customer@example.com' });
    expect([read.body.decision, email.body.decision]).toEqual(['allow', 'allow']);
    const mine = async () => readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).filter((e) => e.record.task === `${namespace}/${TASK}` && e.record.type === 'hop_decided');
    await expect.poll(async () => (await mine()).length, { timeout: 10_000 }).toBe(2);

    const dir = await mkdtemp(path.join(os.tmpdir(), 'cw-replay-'));
    const strict = path.join(dir, 'strict.yaml');
    await writeFile(strict, stringify(examplePolicy(namespace)));
    const recorded = examplePolicy(namespace);
    lenient(recorded);
    const same = path.join(dir, 'same.yaml');
    await writeFile(same, stringify(recorded));

    const changed = await run(['policy', 'replay', '--policy', strict, env.auditFile ?? '']);
    expect(changed.code, changed.stderr).toBe(1);
    expect(changed.stdout.trim().split('\n')).toEqual([
      `${namespace}/${TASK} hop ${email.body.hopId} email send customer@example.com: allow (reply-by-email) → deny (no-exfiltration)`,
      expect.stringMatching(new RegExp(`^1 of 2 recorded decisions would change under AgentPolicy ${namespace}/support-agent \\(mode Enforce\\)(; \\d+ tasks under other policies or namespaces left out)?$`)),
    ]);

    // The same stream on stdin, under the policy it was recorded with: nothing changes.
    const unchanged = await run(['policy', 'replay', '--policy', same, '-'], { stdin: await readFile(env.auditFile ?? '', 'utf8') });
    expect(unchanged.code, unchanged.stderr).toBe(0);
    expect(unchanged.stdout).toMatch(/^0 of 2 recorded decisions would change/);

    const broken = examplePolicy(namespace) as unknown as { spec: Record<string, unknown> };
    broken.spec.mode = 'Sometimes';
    const bad = path.join(dir, 'bad.yaml');
    await writeFile(bad, stringify(broken));
    const invalid = await run(['policy', 'replay', '--policy', bad, env.auditFile ?? '']);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toMatch(/bad\.yaml: AgentPolicy is invalid: spec\.mode: /);
  });
});
