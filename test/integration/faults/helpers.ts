import { readFile } from 'node:fs/promises';
import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { readAuditRecords } from '../../../src/audit/verify.js';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, podToken } from '../../env/agents.js';
import { createRole } from '../../env/aws.js';
import { create } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';

const ACCOUNT = '123456789012';

/** A bound task with one Direct credential on a role of this test's own; the agent's pod token. */
export async function boundTask(admin: KubeConfig, env: EnvironmentDescription, namespace: string, name = 'ticket-4711') {
  const roleName = `support-agent-${namespace}`;
  const roleArn = await createRole(env, roleName).catch(() => `arn:aws:iam::${ACCOUNT}:role/${roleName}`);
  if (name === 'ticket-4711') {
    const policy: AgentPolicy = examplePolicy(namespace);
    policy.spec.aws = { allowedRoleArns: [`arn:aws:iam::${ACCOUNT}:role/support-*`], maxDuration: '1h', allowDirect: true };
    await create(admin, policy);
    await createServiceAccount(admin, namespace, 'support-agent');
  }
  const task = exampleTask(namespace);
  task.metadata.name = name;
  task.spec.credentials = [{ name: 'default', aws: { roleArn, duration: '15m', delivery: 'Direct' } }];
  await create(admin, task);
  const pod: V1Pod = await createAgentPod(admin, namespace, { name: `${name}-agent`, task: name, serviceAccount: 'support-agent' });
  const bound = await waitForTask(admin, namespace, name, (t) => t.status?.state === 'Bound', 30_000);
  const token = await podToken(admin, pod);
  return { roleName, roleArn, task: bound, token };
}

/** GET /v1/credentials as the AWS SDK's container provider asks: a timeout, and an abandoned request counts as failed. */
export async function fetchCredentials(env: EnvironmentDescription, token: string, timeoutMs = 10_000): Promise<{ status: number; body: unknown }> {
  const timeout = new Promise<{ status: number; body: unknown }>((resolve) => setTimeout(() => resolve({ status: 0, body: 'client timeout' }), timeoutMs));
  return Promise.race([brokerRequest(env, 'GET', '/v1/credentials', { token }), timeout]);
}

/** The task's records in the audit stream the operator writes. */
export async function auditOf(env: EnvironmentDescription, uid: string | undefined) {
  return readAuditRecords(await readFile(env.auditFile ?? '', 'utf8')).filter((e) => e.record.taskUid === uid);
}
