import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { CoordinationV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import type { AgentTask } from '../../../src/api/schema.js';
import { KubeTaskClient } from '../../../src/kube/tasks.js';
import { createLogger } from '../../../src/log.js';
import { startOperator, type RunningOperator } from '../../../src/operator/operator.js';
import type { brokerRequest } from '../../env/agents.js';

export async function readTask(kc: KubeConfig, namespace: string, name: string): Promise<AgentTask | undefined> {
  return new KubeTaskClient(kc).read(namespace, name);
}

/**
 * Polls the task until `check` holds; returns it. A read that fails (the API server restarting)
 * is tried again, as expect.poll would; a plain loop rather than expect.poll, which belongs to
 * one running test, so that tests running side by side can use it too.
 */
export async function waitForTask(kc: KubeConfig, namespace: string, name: string, check: (t: AgentTask) => boolean, timeout = 20_000): Promise<AgentTask> {
  const until = Date.now() + timeout;
  let last: AgentTask | undefined;
  let failure: unknown;
  for (;;) {
    try {
      last = await readTask(kc, namespace, name);
      failure = undefined;
      if (last !== undefined && check(last)) return last;
    } catch (err) {
      failure = err;
    }
    if (Date.now() >= until) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const seen =
    failure !== undefined ? `the last read failed: ${failure instanceof Error ? failure.message : JSON.stringify(failure)}` : last === undefined ? 'it does not exist' : `its state is ${last.status?.state ?? '(none)'}, conditions ${JSON.stringify(last.status?.conditions?.map((c) => `${c.type}=${c.status}`) ?? [])}`;
  throw new Error(`AgentTask ${namespace}/${name} did not get there within ${timeout / 1000}s: ${seen}`);
}

export const condition = (task: AgentTask, type: string) => task.status?.conditions?.find((c) => c.type === type);

export async function eventReasons(kc: KubeConfig, namespace: string, task: string): Promise<string[]> {
  const events = await kc.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${task}` });
  return events.items.sort((a, b) => String(a.metadata?.creationTimestamp).localeCompare(String(b.metadata?.creationTimestamp))).map((e) => e.reason ?? '');
}

/**
 * A replica that never leads: the Lease it would elect on is held, for an hour, by a replica
 * that no longer exists. It serves the broker from its own caches and runs no controller.
 */
export async function leaderlessReplica(kubeconfig: string, namespace: string, watchLagMs?: number): Promise<RunningOperator> {
  const kc = new KubeConfig();
  kc.loadFromString(await readFile(kubeconfig, 'utf8'));
  const now = new Date().toISOString().replace('Z', '000Z');
  await kc.makeApiClient(CoordinationV1Api).createNamespacedLease({
    namespace,
    body: { metadata: { name: 'chainwarden-controller' }, spec: { holderIdentity: 'departed-replica', leaseDurationSeconds: 3600, acquireTime: now as never, renewTime: now as never } },
  });
  return startOperator({ kc, log: createLogger({ level: 'silent' }), namespace, watchNamespace: namespace, identity: 'standby', watchLagMs });
}

export interface Broker {
  url: string;
  /** The file holding the CA its serving certificate chains to. */
  caFile: string;
}

export async function brokersOf(env: Parameters<typeof brokerRequest>[0], standby: RunningOperator): Promise<Broker[]> {
  const caFile = path.join(await mkdtemp(path.join(os.tmpdir(), 'standby-')), 'ca.pem');
  await writeFile(caFile, standby.caPem);
  return [
    { url: env.brokerUrl ?? '', caFile: env.brokerCA ?? '' },
    { url: standby.url, caFile },
  ];
}
