import { CustomObjectsApi, type KubeConfig } from '@kubernetes/client-node';
import { API_VERSION, GROUP, VERSION, type AgentApproval, type AgentTask } from '../api/schema.js';
import { agentCell, MAX_CELL, PLAIN_ATTRIBUTE, printable } from '../api/text.js';
import { ChainwardenError } from '../errors.js';
import { isNotFound, kubeErrorMessage, statusCode } from '../kube/errors.js';
import { loadKubeConfig } from './kube.js';
import { parseCommandArgs } from './common.js';

/** One hop as an approver sees it: what was asked, why, and what became of it. */
export interface HopRow {
  task: string;
  hopId: string;
  /** pending, allow, deny, or allow (would deny) for a hop allowed by a policy in Audit mode. */
  decision: string;
  tool: string;
  action: string;
  resource: string;
  attributes: Record<string, string>;
  intent: string;
  rules: string[];
  /** A pending hop in Audit mode: the rules or limits that would deny it under Enforce. */
  wouldDenyBy?: string[];
  /** When it was asked for (pending) or decided. */
  at: string;
  /** A pending hop's deadline. */
  timeoutAt?: string;
}

/**
 * The hops the task's status knows: every waiting hop, whole, then the latest decided ones,
 * newest last. A decided hop's attributes and intent are in its audit record, not in status.
 */
export function hopRows(task: AgentTask, pendingOnly = false): HopRow[] {
  const name = task.metadata.name ?? '';
  const pending: HopRow[] = (task.status?.pendingHops ?? []).map((h) => ({
    task: name,
    hopId: h.hopId,
    decision: 'pending',
    tool: h.tool,
    action: h.action,
    resource: h.resource,
    attributes: h.attributes ?? {},
    intent: h.intent ?? '',
    rules: h.rules,
    ...(h.wouldDenyBy ? { wouldDenyBy: h.wouldDenyBy } : {}),
    at: h.requestedAt,
    timeoutAt: h.timeoutAt,
  }));
  if (pendingOnly) return pending;
  const recent: HopRow[] = (task.status?.recentHops ?? []).map((h) => ({
    task: name,
    hopId: h.hopId,
    decision: h.wouldDeny ? 'allow (would deny)' : h.decision,
    tool: h.tool ?? '',
    action: h.action ?? '',
    resource: h.resource ?? '',
    attributes: {},
    intent: '',
    rules: h.rules,
    at: h.at,
  }));
  return [...pending, ...recent];
}

/** `kubectl`'s age: 45s, 12m, 3h, 2d. */
export function age(at: string, now: number): string {
  const seconds = Math.max(0, Math.floor((now - Date.parse(at)) / 1000));
  if (!Number.isFinite(seconds)) return '?';
  if (seconds < 120) return `${seconds}s`;
  if (seconds < 2 * 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 2 * 86400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86400)}d`;
}

/** The most of one attribute's value it shows. */
const MAX_ATTRIBUTE_VALUE = 40;

const attributesText = (a: Record<string, string>) =>
  Object.entries(a)
    .map(([k, v]) => `${agentCell(k, MAX_ATTRIBUTE_VALUE, PLAIN_ATTRIBUTE)}=${agentCell(v, MAX_ATTRIBUTE_VALUE, PLAIN_ATTRIBUTE)}`)
    .join(',');

/** The rows as a kubectl-style table; agent-supplied text is quoted and cut (`agentCell`), and every cell goes through `printable`. */
export function renderHops(rows: HopRow[], now: number, withTask: boolean): string {
  const header = [...(withTask ? ['TASK'] : []), 'HOP', 'DECISION', 'TOOL', 'ACTION', 'RESOURCE', 'ATTRIBUTES', 'INTENT', 'RULES', 'AGE'];
  // Agent-written cells are made safe by `agentCell` (its JSON escapes are meant to be read as they are); the rest by `printable`.
  const cells = rows.map((r) => [
    ...(withTask ? [printable(r.task)] : []),
    printable(r.hopId),
    printable(r.wouldDenyBy ? `${r.decision} (would deny)` : r.decision),
    r.tool ? agentCell(r.tool) : '-',
    r.action ? agentCell(r.action) : '-',
    r.resource ? agentCell(r.resource) : '-',
    attributesText(r.attributes) || '-',
    r.intent ? agentCell(r.intent) : '-',
    printable((r.rules.join(',') || '-') + (r.wouldDenyBy ? `; Enforce would deny: ${r.wouldDenyBy.join(',') || '-'}` : '')),
    age(r.at, now),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...cells.map((c) => (c[i] ?? '').length)));
  const line = (c: string[]) => c.map((v, i) => (i === c.length - 1 ? v : v.padEnd(widths[i] ?? 0))).join('   ');
  return [line(header), ...cells.map(line)].join('\n');
}

/** Why a hop cannot be decided any more, as the task's status tells it; undefined if it is waiting. */
export function notPendingReason(task: AgentTask, hopId: string): string | undefined {
  const target = `AgentTask ${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`;
  if ((task.status?.pendingHops ?? []).some((h) => h.hopId === hopId)) return undefined;
  const decided = (task.status?.recentHops ?? []).find((h) => h.hopId === hopId);
  if (decided) {
    const how = decided.rules.join(', ') || 'no rule';
    return `hop ${hopId} of ${target} is not pending any more: it was decided ${decided.wouldDeny ? 'allow (would deny)' : decided.decision} by ${how} at ${decided.at}`;
  }
  return `hop ${hopId} is not pending in ${target}, nor among its recent hops: it may be an older hop, or a typo; see the pending ones with: chainwarden hops -n ${task.metadata.namespace ?? ''} ${task.metadata.name ?? ''} --pending`;
}

/**
 * The AgentApproval for one hop. The approver and the hop digest are left out: admission stamps
 * them from the requesting user and from the pending hop, so nothing the CLI sends can pick them.
 */
export function approvalFor(namespace: string, task: string, hopId: string, decision: 'Approve' | 'Reject', reason: string): AgentApproval {
  // generateName: a hop takes one decision, and admission says who made it if there already is one.
  const prefix = `${task.slice(0, 200)}-${decision === 'Approve' ? 'approve' : 'reject'}-`;
  return {
    apiVersion: API_VERSION,
    kind: 'AgentApproval',
    metadata: { namespace, generateName: prefix } as AgentApproval['metadata'],
    spec: { taskRef: { name: task }, hopId, decision, reason },
  };
}

const objects = (kc: KubeConfig) => kc.makeApiClient(CustomObjectsApi);

/** The namespace of the kubeconfig's current context, as kubectl would use it. */
function contextNamespace(kc: KubeConfig): string {
  const context = kc.getContextObject(kc.getCurrentContext());
  return context?.namespace ?? 'default';
}

const userOf = (kc: KubeConfig) => kc.getCurrentUser()?.name ?? 'the current user';

async function readTask(kc: KubeConfig, namespace: string, name: string): Promise<AgentTask> {
  try {
    return (await objects(kc).getNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'agenttasks', name })) as AgentTask;
  } catch (err) {
    if (isNotFound(err)) throw new ChainwardenError('not_found', `AgentTask ${namespace}/${name} does not exist; list the tasks with: kubectl get agenttasks -n ${namespace}`);
    throw apiRefusal(err, `reading AgentTask ${namespace}/${name}`, `get agenttasks.${GROUP} in namespace ${namespace}`);
  }
}

/** The API server's own message, with the RBAC a refusal asks for. */
function apiRefusal(err: unknown, doing: string, permission: string): ChainwardenError {
  const message = kubeErrorMessage(err);
  if (statusCode(err) === 403) return new ChainwardenError('forbidden', `${doing}: the API server refused: ${message}\nask a cluster admin for RBAC allowing ${permission}`);
  return new ChainwardenError('api_error', `${doing}: ${message}`);
}

/**
 * `chainwarden hops [-n NS] [TASK] [--pending] [-o json]`: the hops of a task, or of every task
 * in the namespace, from the tasks' status.
 */
export async function runHops(args: string[]): Promise<number> {
  const { positionals, values } = parseCommandArgs('hops', args, {
    namespace: { type: 'string', short: 'n' },
    pending: { type: 'boolean' },
    output: { type: 'string', short: 'o' },
    kubeconfig: { type: 'string' },
  });
  if (positionals.length > 1) throw new ChainwardenError('usage', 'use: chainwarden hops [-n NAMESPACE] [TASK] [--pending] [-o json]');
  if (values.output !== undefined && values.output !== 'json') throw new ChainwardenError('usage', `-o takes json (got "${values.output}"); leave it out for a table`);
  const kc = loadKubeConfig(values.kubeconfig);
  const namespace = values.namespace ?? contextNamespace(kc);
  const [name] = positionals;
  let tasks: AgentTask[];
  if (name) tasks = [await readTask(kc, namespace, name)];
  else {
    try {
      const list = (await objects(kc).listNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'agenttasks' })) as { items: AgentTask[] };
      tasks = list.items;
    } catch (err) {
      throw apiRefusal(err, `listing AgentTasks in ${namespace}`, `list agenttasks.${GROUP} in namespace ${namespace}`);
    }
  }
  const rows = tasks.flatMap((t) => hopRows(t, values.pending));
  if (values.output === 'json') {
    process.stdout.write(`${JSON.stringify({ namespace, hops: rows }, null, 2)}\n`);
    return 0;
  }
  if (rows.length === 0) {
    process.stderr.write(`no ${values.pending ? 'pending ' : ''}hops in ${name ? `AgentTask ${namespace}/${name}` : `namespace ${namespace}`}\n`);
    return 0;
  }
  process.stdout.write(`${renderHops(rows, Date.now(), !name)}\n`);
  return 0;
}

/** `chainwarden approve|reject NS/TASK HOP --reason TEXT`: an AgentApproval, created as the kubeconfig's user. */
export function decisionCommand(decision: 'Approve' | 'Reject'): (args: string[]) => Promise<number> {
  const verb = decision === 'Approve' ? 'approve' : 'reject';
  return async (args) => {
    const { positionals, values } = parseCommandArgs(verb, args, { reason: { type: 'string' }, kubeconfig: { type: 'string' } });
    const usage = `use: chainwarden ${verb} NAMESPACE/TASK HOP --reason "why"`;
    const [target, hopId, ...extra] = positionals;
    const m = /^([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(target ?? '');
    if (!m) throw new ChainwardenError('usage', `${target === undefined ? 'the task is missing' : `${JSON.stringify(target)} is not NAMESPACE/TASK`}: name the task with its namespace, e.g. support/ticket-4711\n${usage}`);
    if (!hopId || extra.length > 0) throw new ChainwardenError('usage', `${hopId ? `unexpected ${extra.join(' ')}` : 'the hop id is missing'}: give the task and one hop id; chainwarden hops -n NAMESPACE TASK --pending lists them\n${usage}`);
    const reason = values.reason?.trim() ?? '';
    if (!reason) throw new ChainwardenError('usage', `--reason is required: it is recorded in the audit trail with your decision\n${usage}`);
    const [, namespace = '', name = ''] = m;
    const kc = loadKubeConfig(values.kubeconfig);
    const task = await readTask(kc, namespace, name);
    const gone = notPendingReason(task, hopId);
    if (gone) throw new ChainwardenError('hop_not_pending', gone);
    const hop = (task.status?.pendingHops ?? []).find((h) => h.hopId === hopId);
    let created: AgentApproval;
    try {
      created = (await objects(kc).createNamespacedCustomObject({ group: GROUP, version: VERSION, namespace, plural: 'agentapprovals', body: approvalFor(namespace, name, hopId, decision, reason) })) as AgentApproval;
    } catch (err) {
      const code = statusCode(err);
      if (code === 403) throw apiRefusal(err, `creating the AgentApproval as ${userOf(kc)}`, `create agentapprovals.${GROUP} in namespace ${namespace}`);
      // Admission's refusal names the field and the fix: not an approver under the policy, already decided, no longer waiting.
      throw new ChainwardenError('approval_refused', `the API server refused the ${decision === 'Approve' ? 'approval' : 'rejection'}: ${kubeErrorMessage(err)}`);
    }
    // What was decided, attributes too. The agent wrote all of it, and on this one line a value with
    // spaces could read as the rest of the sentence ("order/1) of prod/payments as cfo"), so each is
    // quoted unless it is one plain word.
    const word = (v: string) => agentCell(v, MAX_CELL, PLAIN_ATTRIBUTE);
    const what = hop ? [word(hop.tool), word(hop.action), word(hop.resource), attributesText(hop.attributes ?? {})].filter(Boolean).join(' ') : hopId;
    process.stdout.write(
      `${printable(`agentapproval.${GROUP}/${created.metadata.name ?? ''} created: ${decision} hop ${hopId} (${what}) of ${namespace}/${name} as ${created.spec.approver?.username ?? 'unknown'}`)}\n`,
    );
    return 0;
  };
}
