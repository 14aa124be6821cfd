import { inject } from 'vitest';
import type { KubeConfig } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { sourceIdentityFor } from '../../../src/credentials/plan.js';
import { brokerRequest } from '../../env/agents.js';
import { AwsFaults, type Fault } from '../../env/aws-faults.js';
import { recordedCalls, revocationPolicy } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { condition, readTask, waitForTask } from '../operator/helpers.js';
import { boundTask as bound, fetchCredentials } from './helpers.js';

/** A bound task, and the fault proxy's handle on calls naming its role. */
async function boundTask(admin: KubeConfig, env: EnvironmentDescription, namespace: string) {
  const b = await bound(admin, env, namespace);
  return { ...b, faults: new AwsFaults(inject('awsFaults'), b.roleName) };
}

// The operator's STS and IAM calls pass through a proxy in front of the emulator (test/env/aws-faults.ts);
// each test makes it misbehave for its own role only. What reached the emulator is read from the
// emulator's own request log; what the operator tried, from the proxy's.

/** An agent that asks again every `everyMs` until `until` says stop; every answer, in order. */
async function keepAsking(env: EnvironmentDescription, token: string, opts: { everyMs: number; forMs: number; timeoutMs?: number; until?: (a: { status: number }) => boolean }) {
  const answers: { at: number; status: number; body: unknown }[] = [];
  const end = Date.now() + opts.forMs;
  while (Date.now() < end) {
    const answer = await fetchCredentials(env, token, opts.timeoutMs);
    answers.push({ at: Date.now(), ...answer });
    if (opts.until?.(answer)) break;
    await new Promise((r) => setTimeout(r, opts.everyMs));
  }
  return answers;
}

const errorCode = (body: unknown) => (body as { error?: { code?: string } })?.error?.code;

describe('STS misbehaves', () => {
  const outages: { name: string; fault: Fault; awsWords: RegExp }[] = [
    { name: 'throttles', fault: { kind: 'throttle' }, awsWords: /Throttling/ },
    { name: 'answers 503', fault: { kind: 'status', status: 503 }, awsWords: /ServiceUnavailable|503/ },
    { name: 'resets connections', fault: { kind: 'reset' }, awsWords: /socket hang up|ECONNRESET|TimeoutError/ },
  ];

  test.for(outages)('while STS $name, the task reports StsUnavailable, the broker backs off instead of hammering STS, and credentials issue once it heals', async ({ fault, awsWords }, { admin, env, namespace }) => {
    const { token, faults, roleArn } = await boundTask(admin, env, namespace);
    await faults.inject([{ service: 'sts', actions: ['AssumeRole'], fault }]);

    // An agent whose SDK asks again four times a second, for six seconds of outage.
    const during = await keepAsking(env, token, { everyMs: 250, forMs: 6_000 });
    expect(during.length).toBeGreaterThan(3);
    for (const a of during) expect({ status: a.status, code: errorCode(a.body) }).toEqual({ status: 503, code: 'sts_unavailable' });
    const reported = await readTask(admin, namespace, 'ticket-4711');
    const issued = condition(reported!, 'CredentialsIssued');
    expect(issued).toMatchObject({ status: 'False', reason: 'StsUnavailable' });
    expect(issued?.message).toContain(`STS did not issue credentials for ${roleArn}`);
    expect(issued?.message).toMatch(awsWords);

    // One issuance is retried by the SDK (3 attempts); between issuances the broker waits 1–2 s,
    // then 2–4 s, 4–8 s…: at most three issuances fit in six seconds, where an agent asking
    // twenty-four times would otherwise cause up to seventy-two calls.
    const attempts = await faults.calls('AssumeRole');
    expect(attempts.length).toBeGreaterThan(1);
    expect(attempts.length).toBeLessThanOrEqual(9);

    await faults.heal();
    const healedAt = Date.now();
    const after = await keepAsking(env, token, { everyMs: 250, forMs: 25_000, until: (a) => a.status === 200 });
    expect(after.at(-1)?.status).toBe(200);
    // No later than the longest wait the broker's backoff can have reached by now (4–8 s), and the SDK's own retries.
    expect((after.at(-1)?.at ?? Infinity) - healedAt).toBeLessThan(12_000);
    const recovered = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'CredentialsIssued')?.status === 'True');
    expect(condition(recovered, 'CredentialsIssued')?.reason).toBe('Issued');
    expect(recovered.status?.credentials?.sessions?.map((s) => s.accessKeyId)).toEqual([(after.at(-1)?.body as { AccessKeyId: string }).AccessKeyId]);
  });

  test('an answer held back past the SDK\'s patience does not hold the task\'s credentials hostage: the agent\'s retries join one issuance, and one session is delivered and recorded', async ({ admin, env, namespace }) => {
    const { token, faults, roleArn, task } = await boundTask(admin, env, namespace);
    // STS does the work, then its answer takes a minute to come back.
    await faults.inject([{ service: 'sts', actions: ['AssumeRole'], fault: { kind: 'delay', ms: 60_000 }, times: 1 }]);
    const started = Date.now();
    // The SDK's container provider gives up after about a second and the agent asks again.
    const answers = await keepAsking(env, token, { everyMs: 200, forMs: 30_000, timeoutMs: 1_000, until: (a) => a.status === 200 });
    const delivered = answers.at(-1);
    expect(delivered?.status).toBe(200);
    expect((delivered?.at ?? Infinity) - started).toBeLessThan(20_000);
    const accessKeyId = (delivered?.body as { AccessKeyId: string }).AccessKeyId;

    // Many requests from the agent, and still one recorded session: the one it holds.
    expect(answers.length).toBeGreaterThan(3);
    const after = await readTask(admin, namespace, 'ticket-4711');
    expect(after?.status?.credentials?.sessions?.map((s) => s.accessKeyId)).toEqual([accessKeyId]);
    // STS saw the held call and one retry, not one call per agent request; both sessions carry the
    // task's marker, so the held one (which nobody received) dies with the task's revocation.
    const reached = (await recordedCalls(env, 'AssumeRole')).filter((p) => p.get('RoleArn') === roleArn);
    expect(reached.length).toBe(2);
    for (const call of reached) expect(call.get('SourceIdentity')).toBe(sourceIdentityFor(task));
    // A later fetch is served from the broker's cache.
    expect((await fetchCredentials(env, token)).body).toMatchObject({ AccessKeyId: accessKeyId });
    expect((await recordedCalls(env, 'AssumeRole')).filter((p) => p.get('RoleArn') === roleArn)).toHaveLength(2);
  });

  test('a connection reset after STS answered: the SDK\'s retry is the one session delivered and recorded, and the revocation\'s deny outlives the one lost on the wire', async ({ admin, env, namespace }) => {
    const { token, faults, roleArn, roleName, task } = await boundTask(admin, env, namespace);
    await faults.inject([{ service: 'sts', actions: ['AssumeRole'], fault: { kind: 'reset', after: true }, times: 1 }]);
    const answer = await fetchCredentials(env, token);
    expect(answer.status).toBe(200);
    const reached = (await recordedCalls(env, 'AssumeRole')).filter((p) => p.get('RoleArn') === roleArn);
    expect(reached).toHaveLength(2);
    const sessions = (await readTask(admin, namespace, 'ticket-4711'))?.status?.credentials?.sessions ?? [];
    expect(sessions.map((s) => s.accessKeyId)).toEqual([(answer.body as { AccessKeyId: string }).AccessKeyId]);

    const lostAt = (await faults.calls('AssumeRole'))[0]?.at ?? 0;
    await brokerRequest(env, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True');
    const deny = await revocationPolicy(env, roleName);
    const statement = deny?.Statement.find((s) => ([] as string[]).concat(s.Condition.StringEquals?.['aws:SourceIdentity'] ?? []).includes(sourceIdentityFor(task)));
    expect(statement?.Effect).toBe('Deny');
    const pruneAfter = Number(/(\d+)$/.exec(statement?.Sid ?? '')?.[1]) * 1000;
    expect(pruneAfter).toBeGreaterThan(lostAt + Number(reached[0]?.get('DurationSeconds')) * 1000);
  });
});

describe('IAM misbehaves while a deny must be written', () => {
  const outages: { name: string; fault: Fault; times?: number }[] = [
    { name: 'answers 503', fault: { kind: 'status', status: 503 } },
    { name: 'throttles', fault: { kind: 'throttle' } },
    { name: 'holds an answer back for a minute', fault: { kind: 'delay', ms: 60_000 }, times: 1 },
  ];

  test.for(outages)('while IAM $name, the broker keeps refusing the ended task, the task says the deny is pending, and the deny lands once IAM heals', async ({ fault, times }, { admin, env, namespace }) => {
    const { token, faults, roleName, task } = await boundTask(admin, env, namespace);
    expect((await fetchCredentials(env, token)).status).toBe(200);
    await faults.inject([{ service: 'iam', fault, times }]);
    const completed = await brokerRequest(env, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token });
    expect(completed.status).toBe(200);

    if (times === undefined) {
      const pending = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.reason === 'DenyPending');
      expect(condition(pending, 'Revoked')).toMatchObject({ status: 'False', message: expect.stringContaining(`writing the AWS-side deny failed and is retried: IAM failed for role ${roleName}`) as string });
      expect(pending.status?.credentials?.awsDenyInPlace).toBe(false);
      // Meanwhile the broker refuses the task: no credentials, no hops.
      for (let i = 0; i < 3; i++) {
        expect(await fetchCredentials(env, token)).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
        expect(await brokerRequest(env, 'POST', '/v1/hops', { token, body: { tool: 'tickets', action: 'read', resource: 'ticket/4711' } })).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
        await new Promise((r) => setTimeout(r, 1_000));
      }
      expect(await revocationPolicy(env, roleName)).toBeUndefined();
      // Retried, and with backoff: each refusal above is journaled, each journal write wakes the
      // controller, and none of those wakes may become IAM calls. Five attempts (the SDK's) per
      // try, tries 1–2 s then 2–4 s apart: at most three tries in these few seconds.
      const tried = await faults.calls();
      expect(tried.length).toBeGreaterThan(1);
      expect(tried.length).toBeLessThanOrEqual(15);
      await faults.heal();
    }

    const healedAt = Date.now();
    const revoked = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True', 30_000);
    expect(Date.now() - healedAt).toBeLessThan(20_000);
    expect(condition(revoked, 'Revoked')?.reason).toBe('DenyWritten');
    expect(revoked.status?.credentials?.awsDenyInPlace).toBe(true);
    const deny = await revocationPolicy(env, roleName);
    expect(JSON.stringify(deny)).toContain(sourceIdentityFor(task));
    expect(await fetchCredentials(env, token)).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
  });
});
