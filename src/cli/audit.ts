import { readFile } from 'node:fs/promises';
import { CustomObjectsApi } from '@kubernetes/client-node';
import type { AgentTask } from '../api/schema.js';
import { renderTrace } from '../audit/trace.js';
import { readAuditRecords, verifyChains } from '../audit/verify.js';
import { ChainwardenError } from '../errors.js';
import { isNotFound } from '../kube/errors.js';
import { loadKubeConfig } from './kube.js';
import { parseCommandArgs } from './main.js';

async function readStream(file: string | undefined): Promise<string> {
  if (file && file !== '-') return readFile(file, 'utf8');
  if (process.stdin.isTTY) throw new ChainwardenError('usage', 'give an audit stream as FILE, or pipe one in (e.g. kubectl logs deploy/chainwarden | chainwarden audit verify)');
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

/** `chainwarden audit verify [FILE]`: every task chain in the stream is intact, or exit 1 naming each break. */
export async function runAudit(args: string[]): Promise<number> {
  const { positionals } = parseCommandArgs('audit', args, {});
  const [verb, file] = positionals;
  if (verb !== 'verify') throw new ChainwardenError('usage', 'use: chainwarden audit verify [FILE]');
  const records = readAuditRecords(await readStream(file));
  const { chains, breaks } = verifyChains(records);
  for (const c of chains) process.stdout.write(`${c.task}: ${c.count} records, head ${c.head}\n`);
  for (const b of breaks) process.stdout.write(`BROKEN ${b.task} seq ${b.seq} (line ${b.line}): ${b.problem}\n`);
  if (records.length === 0) {
    process.stderr.write('no audit records found in the stream\n');
    return 1;
  }
  process.stdout.write(breaks.length === 0 ? `ok: ${chains.length} chains, ${records.length} records intact\n` : `${breaks.length} breaks found\n`);
  return breaks.length === 0 ? 0 : 1;
}

/**
 * `chainwarden trace <ns>/<task> [FILE]`: the task's hop tree from the audit stream, after
 * checking the stream's chain against the head kept in the task's status.
 */
export async function runTrace(args: string[]): Promise<number> {
  const { positionals, values } = parseCommandArgs('trace', args, { kubeconfig: { type: 'string' } });
  const [target, file] = positionals;
  const m = /^([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(target ?? '');
  if (!m) throw new ChainwardenError('usage', 'use: chainwarden trace <namespace>/<task> [FILE]');
  const [, namespace = '', name = ''] = m;
  const all = readAuditRecords(await readStream(file)).filter((r) => r.record.task === `${namespace}/${name}`);
  let task: AgentTask | undefined;
  try {
    task = (await loadKubeConfig(values.kubeconfig)
      .makeApiClient(CustomObjectsApi)
      .getNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name })) as AgentTask;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  // The stream may hold an earlier task of the same name; follow the one that exists now, or the latest.
  const uid = task?.metadata.uid ?? all.at(-1)?.record.taskUid;
  const records = all.filter((r) => r.record.taskUid === uid);
  if (records.length === 0) throw new ChainwardenError('not_found', `no audit records for ${namespace}/${name} in the stream`);
  const { breaks } = verifyChains(records);
  const last = records.at(-1)?.record;
  const head = task?.status?.audit;
  const problems = breaks.map((b) => `seq ${b.seq} (line ${b.line}): ${b.problem}`);
  if (!task) problems.push('the task no longer exists, so the stream cannot be checked against its head');
  else if (!head) problems.push('the task has no audit head in its status');
  else if (head.count > (last?.seq ?? 0)) problems.push(`the stream ends at record ${last?.seq ?? 0} but the task's status counts ${head.count}: records are missing (truncated)`);
  else if (head.count < (last?.seq ?? 0)) problems.push(`the stream has ${last?.seq ?? 0} records but the task's status counts only ${head.count}`);
  else if (head.head !== last?.hash) problems.push("the stream's last record does not hash to the head in the task's status");
  const state = task?.status?.state ?? 'unknown';
  process.stdout.write(`${namespace}/${name} (${uid ?? '?'}) ${state}\n`);
  process.stdout.write(problems.length === 0 ? `chain verified: ${records.length} records, head ${last?.hash.slice(0, 16) ?? ''}… matches the task's status\n` : `CHAIN NOT VERIFIED:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
  process.stdout.write(`${renderTrace(records.map((r) => r.record))}\n`);
  return problems.length === 0 ? 0 : 1;
}
