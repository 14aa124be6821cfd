import { createReadStream } from 'node:fs';
import type { Readable } from 'node:stream';
import { CustomObjectsApi } from '@kubernetes/client-node';
import type { AgentTask } from '../api/schema.js';
import { DEFAULT_NAMESPACE } from '../api/task.js';
import { printable } from '../api/text.js';
import { AUDIT_HEADS, AuditHeadStore, type SealedHead } from '../audit/heads.js';
import { renderTrace } from '../audit/trace.js';
import { ChainVerifier, checkHead, eachAuditRecord, location, verifyChains, type AuditEntry } from '../audit/verify.js';
import { ChainwardenError, errorMessage } from '../errors.js';
import { silentLogger } from '../log.js';
import { systemClock } from '../runtime/clock.js';
import { isNotFound } from '../kube/errors.js';
import { loadKubeConfig } from './kube.js';
import { parseCommandArgs } from './common.js';

/**
 * Each record of every stream named (`-` is stdin; none given: stdin), each entry knowing its
 * file, read line by line: an audit log may be far larger than memory allows as one string.
 */
async function eachRecord(files: readonly string[], each: (entry: AuditEntry) => void): Promise<void> {
  if (files.length === 0) return eachAuditRecord(stdin(), undefined, each);
  const named = files.length > 1;
  for (const file of files) await eachAuditRecord(file === '-' ? stdin() : createReadStream(file), named ? (file === '-' ? 'stdin' : file) : undefined, each);
}

function stdin(): Readable {
  if (process.stdin.isTTY) throw new ChainwardenError('usage', 'give audit streams as FILEs, or pipe one in (e.g. kubectl logs deploy/chainwarden | chainwarden audit verify)');
  return process.stdin;
}

/** Everything printed from a stream goes through `printable`: the stream may have been written by anyone. */
const say = (text: string) => process.stdout.write(`${printable(text)}\n`);

/**
 * `chainwarden audit verify [FILE...]`: every task chain in the streams is intact, or exit 1
 * naming each break. The streams of several replicas may be given in any order, or merged. The
 * streams alone cannot show a chain's end cut off: `trace` compares it with the task's head.
 */
export async function runAudit(args: string[]): Promise<number> {
  const { positionals } = parseCommandArgs('audit', args, {});
  const [verb, ...files] = positionals;
  if (verb !== 'verify') throw new ChainwardenError('usage', 'use: chainwarden audit verify [FILE...]');
  // Checked as read, keeping only what linking needs of each record: a long stream verifies in little memory.
  const verifier = new ChainVerifier(false);
  await eachRecord(files, (e) => verifier.add(e));
  const { chains, breaks } = verifier.finish();
  // A name deleted and created again has a chain per task: told apart by uid.
  const names = new Map<string, number>();
  for (const c of chains) names.set(c.task, (names.get(c.task) ?? 0) + 1);
  for (const c of chains) say(`${c.task}${(names.get(c.task) ?? 0) > 1 ? ` (${c.taskUid})` : ''}: ${c.count} records, head ${c.head}`);
  for (const b of breaks) say(`BROKEN ${b.task} seq ${b.seq} (${location(b)}): ${b.problem}`);
  if (verifier.count === 0) {
    process.stderr.write('no audit records found in the stream\n');
    return 1;
  }
  say(breaks.length === 0 ? `ok: ${chains.length} chains, ${verifier.count} records intact` : `${breaks.length} breaks found`);
  // The chain has no key: a tail cut off, or a chain rewritten whole, is consistent in itself.
  process.stderr.write('the streams were checked against themselves; that no record was cut off the end of a chain, and that none was rewritten whole, is checked against the task\'s head: chainwarden trace NAMESPACE/TASK\n');
  return breaks.length === 0 ? 0 : 1;
}

/**
 * `chainwarden trace <ns>/<task> [FILE...]`: the task's hop tree from the audit streams, after
 * checking the task's chain against the head kept in the task's status. The streams may hold
 * earlier tasks of the same name (deleted, then created again): each of those is checked against
 * the head sealed when it was deleted, so none of them can be cut short unseen either.
 */
export async function runTrace(args: string[]): Promise<number> {
  const { positionals, values } = parseCommandArgs('trace', args, { kubeconfig: { type: 'string' }, 'operator-namespace': { type: 'string' }, uid: { type: 'string' } });
  const [target, ...files] = positionals;
  const m = /^([a-z0-9-]+)\/([a-z0-9.-]+)$/.exec(target ?? '');
  if (!m) throw new ChainwardenError('usage', `${target === undefined ? 'the task is missing' : `${JSON.stringify(target)} is not NAMESPACE/TASK`}: name the task with its namespace, e.g. support/ticket-4711\nuse: chainwarden trace <namespace>/<task> [--uid UID] [FILE...]`);
  const [, namespace = '', name = ''] = m;
  // Only the records of tasks of this name are kept as the streams are read.
  const all: AuditEntry[] = [];
  await eachRecord(files, (e) => {
    if (e.record.task === `${namespace}/${name}`) all.push(e);
  });
  let task: AgentTask | undefined;
  const kc = loadKubeConfig(values.kubeconfig);
  try {
    task = (await kc
      .makeApiClient(CustomObjectsApi)
      .getNamespacedCustomObject({ group: 'chainwarden.io', version: 'v1alpha1', namespace, plural: 'agenttasks', name })) as AgentTask;
  } catch (err) {
    if (!isNotFound(err)) throw err;
  }
  const byUid = new Map<string, AuditEntry[]>();
  for (const e of all) {
    // A record without a uid as text is a forged one: kept apart, where the verifier breaks it.
    const uid = typeof e.record.taskUid === 'string' ? e.record.taskUid : '(no uid)';
    const list = byUid.get(uid);
    if (list) list.push(e);
    else byUid.set(uid, [e]);
  }
  // Followed: the task named by --uid, else the one that exists now, else the one with the
  // latest record (by time: line order means nothing across replicas).
  const at = (e: AuditEntry) => (typeof e.record.at === 'string' ? e.record.at : '');
  const latest = all.reduce<AuditEntry | undefined>((a, b) => (a === undefined || at(b) > at(a) ? b : a), undefined);
  const uid = values.uid ?? task?.metadata.uid ?? (typeof latest?.record.taskUid === 'string' ? latest.record.taskUid : '(no uid)');
  if (!byUid.has(uid)) throw new ChainwardenError('not_found', `no audit records for ${namespace}/${name}${values.uid === undefined ? '' : ` with uid ${values.uid}`} in the stream${byUid.size > 0 ? ` (it holds the tasks of this name with uids ${[...byUid.keys()].join(', ')})` : ''}`);
  // A deleted task's head was sealed in the operator's namespace when it went.
  const operatorNamespace = values['operator-namespace'] ?? DEFAULT_NAMESPACE;
  const sealedWhere = `the head sealed when the task was deleted (${operatorNamespace}/${AUDIT_HEADS})`;
  const needsSealed = [...byUid.keys()].some((u) => u !== task?.metadata.uid);
  let sealedUnread: string | undefined;
  const sealedHeads = needsSealed
    ? await new AuditHeadStore(kc, operatorNamespace, systemClock, silentLogger()).all().catch((err: unknown) => {
        sealedUnread = `its sealed head cannot be read from ConfigMap ${operatorNamespace}/${AUDIT_HEADS}: ${errorMessage(err)}`;
        const none: Record<string, SealedHead> = {};
        return none;
      })
    : {};
  const checked = [...byUid].map(([u, entries]) => {
    const live = task?.metadata.uid === u ? task : undefined;
    const { chains, breaks } = verifyChains(entries);
    const chain = chains[0] ?? { count: 0, head: '', records: [] };
    const problems = breaks.map((b) => `seq ${b.seq} (${location(b)}): ${b.problem}`);
    const sealed = live ? undefined : sealedHeads[u];
    const head = live ? live.status?.audit : sealed;
    const where = live ? "the task's status" : sealedWhere;
    // What cannot be checked, as against what is found wrong: for the task followed both fail the command, for the others only what is found wrong.
    let unchecked: string | undefined;
    if (!live && sealedUnread) unchecked = `the task no longer exists and ${sealedUnread}`;
    else if (!live && !sealed) unchecked = 'the task no longer exists and no head was sealed for it (or it made room for newer ones), so the stream cannot be checked against its head';
    else if (live && !head) unchecked = 'the task has no audit head in its status';
    if (head) {
      const problem = checkHead(chain, head);
      if (problem) problems.push(problem.replace("the task's status", where));
    }
    const state = live?.status?.state ?? (sealed ? `deleted ${sealed.sealedAt}` : 'unknown');
    return { uid: u, chain, problems, unchecked, where, state };
  });
  const found = checked.find((c) => c.uid === uid) ?? checked[0];
  if (!found) throw new ChainwardenError('not_found', `no audit records for ${namespace}/${name} in the stream`);
  const followed = { ...found, problems: found.unchecked ? [...found.problems, found.unchecked] : found.problems };
  const others = checked.filter((c) => c !== found);
  const failed = others.filter((c) => c.problems.length > 0);
  say(`${namespace}/${name} (${uid}) ${followed.state}`);
  if (followed.problems.length === 0) say(`chain verified: ${followed.chain.count} records, head ${followed.chain.head.slice(0, 16)}… matches ${followed.where}`);
  else {
    say('CHAIN NOT VERIFIED:');
    for (const p of followed.problems) say(`  - ${p}`);
  }
  if (others.length > 0) say(`other tasks of this name in the stream:${failed.length > 0 ? ' NOT ALL VERIFIED' : ''}`);
  for (const c of others) {
    const verdict = c.problems.length > 0 ? 'CHAIN NOT VERIFIED:' : c.unchecked ? `${c.chain.count} records intact, not checked against a head: ${c.unchecked}` : `chain verified: ${c.chain.count} records, head matches ${c.where}`;
    say(`  ${c.uid} ${c.state}: ${verdict}`);
    for (const p of c.problems) say(`    - ${p}`);
  }
  process.stdout.write(`${renderTrace(followed.chain.records)}\n`);
  return followed.problems.length === 0 && failed.length === 0 ? 0 : 1;
}
