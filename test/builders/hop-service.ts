import { parseAgentPolicy, parseAgentTask } from '../../src/api/parse.js';
import type { AgentPolicy, AgentTask } from '../../src/api/schema.js';
import { TaskJournal } from '../../src/audit/journal.js';
import { HopIds } from '../../src/broker/hopids.js';
import { HopService, type HopServiceDeps } from '../../src/broker/hops.js';
import { ChainwardenError } from '../../src/errors.js';
import type { TaskStatusWriter } from '../../src/kube/tasks.js';
import { silentLogger } from '../../src/log.js';
import { PolicyEngine } from '../../src/policy/engine.js';
import { Metrics } from '../../src/runtime/metrics.js';
import { examplePolicy, exampleTask } from './examples.js';
import { TaskClientTwin } from './task-client-twin.js';

/** A real HopService, for unit tests: its journal writes to a twin of the API server. */

export interface ServiceOptions {
  mode?: 'Enforce' | 'Audit';
  /** Journal writes that fail (a 504) before they land. */
  failingWrites?: number;
  /** Every journal write hangs, as with a frozen etcd. */
  hangs?: boolean;
  /** Journal writes wait for this before they reach the API server. */
  gate?: () => Promise<void>;
  endShown?: HopServiceDeps['endShown'];
  chainShown?: HopServiceDeps['chainShown'];
  freshTask?: HopServiceDeps['freshTask'];
  approvals?: HopServiceDeps['approvals'];
  /** Changes the support policy before it is parsed. */
  adjust?: (policy: AgentPolicy) => void;
  /** The task's own limits, which take precedence over the policy's. */
  taskLimits?: NonNullable<AgentTask['spec']['limits']>;
  /** What a hop that names a credential is handed with its answer. */
  credentials?: HopServiceDeps['credentials'];
  /** The journal reads the task as the watch shows it: the twin's copy, as the operator's journal reads the informer's. */
  watch?: boolean;
}

export const NOW = Date.parse('2026-11-21T10:30:00Z');

/** A HopService over the support policy and one bound task, its journal writing to a twin of the API server. */
export function serviceFor({ mode = 'Enforce', failingWrites = 0, hangs = false, gate, endShown, chainShown, freshTask, approvals = () => [], adjust, taskLimits, credentials, watch = false }: ServiceOptions = {}) {
  const raw = examplePolicy('support');
  raw.spec.mode = mode;
  adjust?.(raw);
  const policy = parseAgentPolicy(raw);
  const rawTask = exampleTask('support');
  // Created ten minutes before NOW: its 30 m life runs past every test's clock.
  rawTask.metadata = { ...rawTask.metadata, uid: 't-uid', creationTimestamp: '2026-11-21T10:20:00Z' };
  if (taskLimits) rawTask.spec.limits = taskLimits;
  const task = parseAgentTask(rawTask);
  const twin = new TaskClientTwin(task);
  const metrics = new Metrics();
  const writer = twin.statusWriter('journal');
  let failing = failingWrites;
  let writes = 0;
  const flaky: Pick<TaskStatusWriter, 'update'> = {
    update: async (...args) => {
      writes++;
      if (hangs) return new Promise(() => undefined);
      await gate?.();
      if (failing-- > 0) throw new ChainwardenError('api_error', 'the API server answered 504');
      return writer.update(...args);
    },
  };
  const journal = new TaskJournal({ writer: flaky, emit: () => undefined, log: silentLogger(), flushMs: 0, ...(watch ? { cached: () => twin.task } : {}) });
  const service = new HopService({
    engine: new PolicyEngine(),
    journal,
    ids: new HopIds(Buffer.alloc(32, 3)),
    policy: () => policy,
    approvals,
    credentials: credentials ?? (undefined as never),
    clock: { now: () => NOW },
    log: silentLogger(),
    metrics,
    endShown,
    chainShown,
    freshTask,
  });
  const who = { namespace: 'support', podName: 'agent-0', podUid: 'p', serviceAccount: 'support-agent', task, spiffeId: 'spiffe://x' };
  return { service, who, twin, journal, metrics, writes: () => writes };
}

