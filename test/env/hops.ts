import type { KubeConfig, V1Pod } from '@kubernetes/client-node';
import type { EnvironmentDescription } from '../../src/controlplane/environment.js';
import { examplePolicy, exampleTask } from '../builders/examples.js';
import { waitForTask } from '../integration/operator/helpers.js';
import { brokerRequest, createAgentPod, createServiceAccount, podToken } from './agents.js';
import { create } from './kube.js';

export interface HopAnswer {
  hopId: string;
  decision: 'allow' | 'deny' | 'pending_approval';
  reasons: { rule: string; effect: string }[];
  depth: number;
  timeoutAt?: string;
  credentials?: Record<string, string>;
}

export interface BoundAgent {
  pod: V1Pod;
  token: string;
  hop(body: Record<string, unknown>): Promise<{ status: number; body: HopAnswer & { error?: { code: string; message: string; field?: string } } }>;
  poll(hopId: string): Promise<{ status: number; body: HopAnswer & { error?: { code: string } } }>;
}

/** The example policy and task, a bound agent pod, and a way to ask for hops as that pod. */
export async function boundExampleAgent(admin: KubeConfig, env: EnvironmentDescription, namespace: string, edit: { policy?: (p: ReturnType<typeof examplePolicy>) => void; task?: (t: ReturnType<typeof exampleTask>) => void } = {}): Promise<BoundAgent> {
  const policy = examplePolicy(namespace);
  edit.policy?.(policy);
  await create(admin, policy);
  await createServiceAccount(admin, namespace, 'support-agent');
  const task = exampleTask(namespace);
  edit.task?.(task);
  await create(admin, task);
  const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: task.metadata.name ?? '', serviceAccount: 'support-agent' });
  await waitForTask(admin, namespace, task.metadata.name ?? '', (t) => t.status?.state === 'Bound');
  const token = await podToken(admin, pod);
  return {
    pod,
    token,
    hop: (body) => brokerRequest(env, 'POST', '/v1/hops', { token, body }) as Promise<{ status: number; body: HopAnswer & { error?: { code: string; message: string; field?: string } } }>,
    poll: (hopId) => brokerRequest(env, 'GET', `/v1/hops/${hopId}`, { token }) as Promise<{ status: number; body: HopAnswer & { error?: { code: string } } }>,
  };
}

/** A refund hop left waiting for approval; returns its id. */
export async function pendingRefund(agent: BoundAgent, order = '1'): Promise<string> {
  const answer = await agent.hop({ tool: 'payments', action: 'refund', resource: `order/${order}`, attributes: { amount: 42 } });
  if (answer.body.decision !== 'pending_approval') throw new Error(`expected pending_approval, got ${JSON.stringify(answer.body)}`);
  return answer.body.hopId;
}
