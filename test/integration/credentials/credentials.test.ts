import { readFile } from 'node:fs/promises';
import { CoreV1Api, CustomObjectsApi } from '@kubernetes/client-node';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { localAws, type EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { planCredentialDuration, roleSessionName, sessionTags, sourceIdentityFor, TRANSITIVE_TAG_KEYS } from '../../../src/credentials/plan.js';
import { AwsStsPort } from '../../../src/credentials/sts.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, getJson, podToken, startAgentProcess } from '../../env/agents.js';
import { createRole, queryList, recordedCalls, revocationPolicy, startAwsAgent } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, grant } from '../../env/kube.js';
import { rawRequest } from '../../../src/kube/raw.js';
import type { KubeConfig } from '@kubernetes/client-node';
import { condition, eventReasons, readTask, waitForTask } from '../operator/helpers.js';

const ACCOUNT = '123456789012';

/** The example policy and task, moved to the emulator's account and a role of this test's own. */
async function setup(admin: KubeConfig, env: EnvironmentDescription, namespace: string, edit: (t: AgentTask) => void = () => {}) {
  const roleName = `support-agent-${namespace}`;
  const roleArn = await createRole(env, roleName);
  const policy: AgentPolicy = examplePolicy(namespace);
  // Direct delivery: these tests are about the STS sessions the agent itself is handed.
  policy.spec.aws = { allowedRoleArns: [`arn:aws:iam::${ACCOUNT}:role/support-*`], maxDuration: '1h', allowDirect: true };
  await create(admin, policy);
  await createServiceAccount(admin, namespace, 'support-agent');
  const task = exampleTask(namespace);
  task.spec.credentials![0]!.aws.roleArn = roleArn;
  task.spec.credentials![0]!.aws.delivery = 'Direct';
  edit(task);
  await create(admin, task);
  const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
  const bound = await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
  return { roleName, roleArn, pod, task: bound };
}

describe('per-task AWS credentials', () => {
  test('an unmodified AWS SDK in the agent gets its task\'s role, and after completion its next fetch is refused and the role denies its marker', async ({ admin, env, namespace }) => {
    const { roleName, pod, task } = await setup(admin, env, namespace);
    const stored = await admin.makeApiClient(CoreV1Api).readNamespacedPod({ name: 'agent-0', namespace });
    const sidecar = await startAgentProcess(env, await podToken(admin, pod));
    const agent = startAwsAgent(env, stored.spec?.containers[0]?.env ?? [], sidecar.url, sidecar.callerTokenFile);
    try {
      const first = await agent.call();
      expect(first).toMatchObject({ ok: true, arn: `arn:aws:sts::${ACCOUNT}:assumed-role/${roleName}/${roleSessionName(task, 'default')}` });

      const issued = await readTask(admin, namespace, 'ticket-4711');
      expect(issued?.status?.credentials?.sourceIdentity).toBe(`chainwarden-${task.metadata.uid}`);
      expect(issued?.status?.credentials?.sessions?.[0]).toMatchObject({ credential: 'default', sessionName: roleSessionName(task, 'default') });
      expect(issued?.status?.credentials?.sessions?.[0]?.accessKeyId).toMatch(/^ASIA/);
      expect(condition(issued!, 'CredentialsIssued')).toMatchObject({ status: 'True', reason: 'Issued' });

      const done = await getJson(`${sidecar.url}/v1/tasks/${namespace}/ticket-4711/complete`, { method: 'POST', headers: await sidecar.headers() });
      expect(done.status).toBe(200);

      const refused = await agent.call();
      expect(refused.ok).toBe(false);
      const direct = await getJson(`${sidecar.url}/v1/credentials`, { headers: await sidecar.headers() });
      expect(direct).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });

      const revoked = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True');
      expect(revoked.status?.credentials).toMatchObject({ awsDenyInPlace: true });
      expect(condition(revoked, 'Revoked')).toMatchObject({ reason: 'DenyWritten' });
      // The emulator does not evaluate this policy; what we can prove is that it is there, keyed on the task's marker.
      const deny = await revocationPolicy(env, roleName);
      const statement = deny?.Statement.find((s) => ([] as string[]).concat(s.Condition.StringEquals?.['aws:SourceIdentity'] ?? []).includes(`chainwarden-${task.metadata.uid}`));
      expect(statement?.Effect).toBe('Deny');
      await expect.poll(() => eventReasons(admin, namespace, 'ticket-4711')).toContain('Revoked');
    } finally {
      agent.stop();
      await sidecar.stop();
    }
  });

  test('an agent that asks before its task has bound its pod is answered once the binding lands, the first time it asks', async ({ admin, env, namespace }) => {
    const roleArn = await createRole(env, `support-agent-${namespace}`);
    const policy: AgentPolicy = examplePolicy(namespace);
    policy.spec.aws = { allowedRoleArns: [roleArn], maxDuration: '1h', allowDirect: true };
    await create(admin, policy);
    await createServiceAccount(admin, namespace, 'support-agent');
    const task = exampleTask(namespace);
    task.spec.credentials![0]!.aws = { ...task.spec.credentials![0]!.aws, roleArn, delivery: 'Direct' };
    await create(admin, task);
    // The task cannot bind while its policy is gone: the agent's pod starts, and asks, before it does.
    const policies = admin.makeApiClient(CustomObjectsApi);
    const ref = { group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agentpolicies' };
    await policies.deleteNamespacedCustomObject({ ...ref, name: policy.metadata.name ?? '' });
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Ready')?.reason === 'PolicyNotFound');
    const token = await podToken(admin, pod);
    // One ask, no retry (SDKs give the credentials endpoint a second, and some never ask again); the policy returns meanwhile.
    const asked = brokerRequest(env, 'GET', '/v1/credentials', { token });
    await create(admin, policy);
    expect(await asked).toMatchObject({ status: 200, body: { AccessKeyId: expect.stringMatching(/^ASIA/) as unknown } });
    expect((await readTask(admin, namespace, 'ticket-4711'))?.status?.state).toBe('Bound');
  });

  test('the STS request carries the planned duration, SourceIdentity, transitive tags and session policy', async ({ admin, env, namespace }) => {
    const { pod, task, roleArn } = await setup(admin, env, namespace);
    const answer = await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) });
    expect(answer.status).toBe(200);
    expect(Object.keys(answer.body as object).sort()).toEqual(['AccessKeyId', 'Expiration', 'SecretAccessKey', 'Token']);

    // The emulator ignores DurationSeconds, SourceIdentity, tags and the session policy, so we
    // check them on the wire: the request the emulator recorded is the request we sent.
    const sent = (await recordedCalls(env, 'AssumeRole')).filter((p) => p.get('RoleArn') === roleArn);
    expect(sent).toHaveLength(1);
    const call = sent[0]!;
    expect(call.get('DurationSeconds')).toBe('900');
    expect(call.get('RoleSessionName')).toBe(roleSessionName(task, 'default'));
    expect(call.get('SourceIdentity')).toBe(sourceIdentityFor(task));
    expect(queryList(call, 'Tags').sort()).toEqual([`chainwarden:namespace=${namespace}`, 'chainwarden:serviceaccount=support-agent', 'chainwarden:task=ticket-4711', 'team=support'].sort());
    expect(queryList(call, 'TransitiveTagKeys').sort()).toEqual([...TRANSITIVE_TAG_KEYS].sort());
    expect(call.get('Policy')).toBe(task.spec.credentials?.[0]?.aws.sessionPolicy);

    // A second fetch is served from the broker's cache: no second STS call.
    await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) });
    expect((await recordedCalls(env, 'AssumeRole')).filter((p) => p.get('RoleArn') === roleArn)).toHaveLength(1);
  });

  test('without a requested duration the session is planned from the deadline, within the policy', async ({ admin, env, namespace }) => {
    const { pod, roleArn } = await setup(admin, env, namespace, (t) => {
      delete t.spec.credentials![0]!.aws.duration;
      t.spec.ttl = '40m';
    });
    await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) });
    const [call] = (await recordedCalls(env, 'AssumeRole')).filter((p) => p.get('RoleArn') === roleArn);
    const seconds = Number(call?.get('DurationSeconds'));
    expect(seconds).toBeLessThanOrEqual(40 * 60);
    expect(seconds).toBeGreaterThan(38 * 60);
  });

  test('no issued secret access key or session token is found in Secrets, ConfigMaps, Events, task status or logs', async ({ admin, env, namespace }) => {
    const { pod } = await setup(admin, env, namespace);
    const answer = await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) });
    const { SecretAccessKey, Token, AccessKeyId } = answer.body as Record<string, string>;
    await brokerRequest(env, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token: await podToken(admin, pod) }).catch(() => undefined);
    await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True');

    const core = admin.makeApiClient(CoreV1Api);
    const { rawRequest } = await import('../../../src/kube/raw.js');
    const everything = [
      JSON.stringify((await core.listSecretForAllNamespaces()).items),
      JSON.stringify((await core.listConfigMapForAllNamespaces()).items),
      JSON.stringify((await core.listEventForAllNamespaces()).items),
      JSON.stringify((await rawRequest(admin, 'GET', '/apis/chainwarden.io/v1alpha1/agenttasks')).body),
      await readFile(env.operatorLog ?? '', 'utf8'),
    ].join('\n');
    expect(everything).toContain(AccessKeyId); // recorded, as it should be: it is not secret
    expect(everything).not.toContain(SecretAccessKey);
    expect(everything).not.toContain(Token);
  });

  test('a session STS issued but the broker never recorded (operator killed in between) is covered by the revocation', async ({ admin, env, namespace }) => {
    const { task, roleArn, roleName, pod } = await setup(admin, env, namespace);
    // What the broker does up to the moment it would record the session, then nothing: a crash.
    const aws = localAws(env);
    const sts = new AwsStsPort({ region: aws.region, endpoint: aws.stsEndpoint, credentials: aws.credentials });
    const credential = task.spec.credentials![0]!;
    const orphan = await sts.assume({
      roleArn,
      roleSessionName: roleSessionName(task, 'default'),
      durationSeconds: planCredentialDuration({ deadline: Date.parse(task.status?.deadline ?? ''), now: Date.now(), requested: credential.aws.duration, policyMax: '1h' }),
      sourceIdentity: sourceIdentityFor(task),
      tags: sessionTags(task, credential.aws),
      transitiveTagKeys: TRANSITIVE_TAG_KEYS,
      policy: credential.aws.sessionPolicy,
    });
    sts.destroy();
    expect((await readTask(admin, namespace, 'ticket-4711'))?.status?.credentials?.sessions ?? []).toEqual([]);

    await brokerRequest(env, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token: await podToken(admin, pod) });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Revoked')?.status === 'True');
    // The deny is keyed on the task's marker, which the orphan carries, and stays until it has expired.
    // (The emulator does not enforce it; we assert on the policy we wrote.)
    const deny = await revocationPolicy(env, roleName);
    const statement = deny?.Statement.find((s) => ([] as string[]).concat(s.Condition.StringEquals?.['aws:SourceIdentity'] ?? []).includes(sourceIdentityFor(task)));
    expect(statement).toBeDefined();
    const pruneAfter = Number(/(\d+)$/.exec(statement?.Sid ?? '')?.[1]) * 1000;
    expect(pruneAfter).toBeGreaterThan(orphan.expiration.getTime());
  });

  test('deleting a task writes the deny before its finalizer goes', async ({ admin, env, namespace }) => {
    const { task, roleName, pod } = await setup(admin, env, namespace);
    await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) });
    const { CustomObjectsApi } = await import('@kubernetes/client-node');
    await admin.makeApiClient(CustomObjectsApi).deleteNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name: 'ticket-4711' });
    await expect.poll(async () => (await readTask(admin, namespace, 'ticket-4711')) === undefined, { timeout: 15_000 }).toBe(true);
    const deny = await revocationPolicy(env, roleName);
    expect(JSON.stringify(deny)).toContain(sourceIdentityFor(task));
  });

  test('its finalizer cannot be taken off by a tenant; one an administrator takes off before deleting the task still leaves the deny written', async ({ admin, env, namespace, userKubeConfig }) => {
    const { task, roleName, pod } = await setup(admin, env, namespace);
    await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) });
    await grant(admin, namespace, ['dev@example.com'], ['agenttasks'], ['get', 'patch', 'delete']);
    const dev = await userKubeConfig('dev@example.com');
    const path = `/apis/chainwarden.io/v1alpha1/namespaces/${namespace}/agenttasks/ticket-4711`;
    const stripped = await rawRequest(dev, 'PATCH', path, { metadata: { finalizers: null } }, 'application/merge-patch+json');
    expect(stripped.status).toBe(403);
    expect(JSON.stringify(stripped.body)).toContain('the chainwarden.io/revoke finalizer keeps an AgentTask until the chainwarden operator');
    expect((await readTask(admin, namespace, 'ticket-4711'))?.metadata.finalizers).toEqual(['chainwarden.io/revoke']);
    expect(JSON.stringify(await revocationPolicy(env, roleName) ?? {})).not.toContain(sourceIdentityFor(task));

    // An administrator unsticking a deletion: the finalizer off, then the task deleted at once, before
    // the controller could put it back. The deletion names the version without the finalizer, so on
    // a busy machine where the controller was quicker it is refused (409) and tried again: the task
    // always goes without its finalizer, which is the case this test is for.
    for (let attempt = 1; ; attempt++) {
      const patched = await rawRequest(admin, 'PATCH', path, { metadata: { finalizers: null } }, 'application/merge-patch+json');
      expect(patched.status).toBe(200);
      const resourceVersion = (patched.body as { metadata: { resourceVersion: string } }).metadata.resourceVersion;
      const deleted = await rawRequest(admin, 'DELETE', path, { apiVersion: 'v1', kind: 'DeleteOptions', preconditions: { resourceVersion } });
      if (deleted.status === 200) break;
      expect(deleted.status).toBe(409);
      expect(attempt, 'the controller put the finalizer back before every deletion').toBeLessThan(5);
    }
    expect(await readTask(admin, namespace, 'ticket-4711')).toBeUndefined();
    await expect.poll(async () => JSON.stringify(await revocationPolicy(env, roleName) ?? {}), { timeout: 15_000 }).toContain(sourceIdentityFor(task));
  });

  test('a role the policy no longer allows is refused, and the task says why', async ({ admin, env, namespace }) => {
    const { pod } = await setup(admin, env, namespace);
    const { CustomObjectsApi } = await import('@kubernetes/client-node');
    await admin.makeApiClient(CustomObjectsApi).patchNamespacedCustomObject(
      { group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agentpolicies', name: 'support-agent', body: [{ op: 'replace', path: '/spec/aws/allowedRoleArns', value: [`arn:aws:iam::${ACCOUNT}:role/other-*`] }] },
    );
    await expect
      .poll(async () => (await brokerRequest(env, 'GET', '/v1/credentials', { token: await podToken(admin, pod) })).status, { timeout: 10_000 })
      .toBe(403);
    const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => condition(t, 'Ready')?.reason === 'OutsidePolicy');
    expect(condition(task, 'Ready')?.message).toMatch(/spec.credentials\[0\].aws.roleArn: .* is not allowed by AgentPolicy support-agent/);
  });
});
