import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import { expect } from 'vitest';
import type { AgentTask } from '../../../src/api/schema.js';
import { KubeTaskClient } from '../../../src/kube/tasks.js';

export async function readTask(kc: KubeConfig, namespace: string, name: string): Promise<AgentTask | undefined> {
  return new KubeTaskClient(kc).read(namespace, name);
}

/** Polls the task until `check` holds; returns it. */
export async function waitForTask(kc: KubeConfig, namespace: string, name: string, check: (t: AgentTask) => boolean, timeout = 20_000): Promise<AgentTask> {
  let last: AgentTask | undefined;
  await expect
    .poll(
      async () => {
        last = await readTask(kc, namespace, name);
        return last !== undefined && check(last);
      },
      { timeout, interval: 100 },
    )
    .toBe(true);
  return last as AgentTask;
}

export const condition = (task: AgentTask, type: string) => task.status?.conditions?.find((c) => c.type === type);

export async function eventReasons(kc: KubeConfig, namespace: string, task: string): Promise<string[]> {
  const events = await kc.makeApiClient(CoreV1Api).listNamespacedEvent({ namespace, fieldSelector: `involvedObject.name=${task}` });
  return events.items.sort((a, b) => String(a.metadata?.creationTimestamp).localeCompare(String(b.metadata?.creationTimestamp))).map((e) => e.reason ?? '');
}
