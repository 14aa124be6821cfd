import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { parseAllDocuments } from 'yaml';
import { InvalidObjectError, parseAgentPolicy } from '../api/parse.js';
import type { AgentPolicy } from '../api/schema.js';
import { agentCell, MAX_CELL, PLAIN_ATTRIBUTE, printable } from '../api/text.js';
import { checkPolicy } from '../admission/plugins/agentpolicy.js';
import { eachAuditRecord, location } from '../audit/verify.js';
import { StreamReplay, type ReplayChange, type ReplayResult } from '../broker/replay.js';
import { ChainwardenError, errorMessage } from '../errors.js';
import { PolicyEngine } from '../policy/engine.js';
import { parseCommandArgs } from './common.js';

const USAGE = 'use: chainwarden policy replay --policy FILE [--allow-breaks] [AUDIT_FILE|-]';

/**
 * The AgentPolicy in a YAML file, checked as admission checks it (the schema with its defaults,
 * the rules' references, the raw Cedar), so a replay never runs a policy the cluster would refuse.
 */
export function loadPolicyText(text: string, file: string): AgentPolicy {
  let docs: unknown[];
  try {
    const parsed = parseAllDocuments(text);
    const broken = parsed.flatMap((d) => d.errors);
    if (broken[0]) throw new Error(broken[0].message);
    docs = parsed.map((d) => d.toJS() as unknown).filter((d) => d !== null && d !== undefined);
  } catch (err) {
    throw new ChainwardenError('invalid_policy', `${file} is not YAML: ${errorMessage(err)}`);
  }
  const candidates = docs.filter((d) => (d as { kind?: unknown }).kind === 'AgentPolicy');
  if (candidates.length !== 1) throw new ChainwardenError('invalid_policy', `${file} must hold one AgentPolicy (kind: AgentPolicy); it holds ${candidates.length}`);
  let policy: AgentPolicy;
  try {
    policy = parseAgentPolicy(candidates[0]);
  } catch (err) {
    if (err instanceof InvalidObjectError) throw new ChainwardenError('invalid_policy', `${file}: ${err.message}`, { field: err.violations[0]?.field });
    throw err;
  }
  const violations = checkPolicy(policy);
  if (violations[0]) throw new ChainwardenError('invalid_policy', `${file}: AgentPolicy is invalid: ${violations.map((v) => `${v.field}: ${v.message}`).join('; ')}`, { field: violations[0].field });
  // The engine keys its compiled policies by uid and generation: the file's policy is its own.
  policy.metadata = { ...policy.metadata, uid: `replay:${file}`, generation: 1 };
  return policy;
}

/** What an agent wrote (a hop's tool, action, resource), or a forger in the stream: as it is when it is one plain word, else quoted and cut, so no text of its own reads as the line's verdict. */
const agentWord = (v: string) => (v ? agentCell(v, MAX_CELL, PLAIN_ATTRIBUTE) : '-');

export function renderChange(c: ReplayChange): string {
  const rules = (r: string[]) => (r.length ? ` (${r.join(', ')})` : '');
  // `agentCell`'s escapes are meant to be read as they are; the rest goes through `printable`.
  return `${printable(`${c.task} hop ${c.hopId}`)} ${agentWord(c.tool)} ${agentWord(c.action)} ${agentWord(c.resource)}: ${printable(`${c.before}${rules(c.beforeRules)} → ${c.after}${rules(c.afterRules)}`)}`;
}

/** The stream to replay, read line by line (a log may be larger than memory allows as one string). */
function openStream(file: string | undefined): Readable {
  if (file !== undefined && file !== '-') return createReadStream(file);
  if (process.stdin.isTTY) throw new ChainwardenError('usage', `give the audit stream as AUDIT_FILE, or pipe one in (e.g. kubectl logs deploy/chainwarden | chainwarden policy replay --policy FILE)\n${USAGE}`);
  return process.stdin;
}

/**
 * `chainwarden policy replay --policy FILE [--allow-breaks] [AUDIT_FILE|-]`: exit 1 when a
 * recorded decision would change, 0 when none would, and 2 (like diff) when the policy or the
 * stream cannot be used: a break in the stream's chains (unless `--allow-breaks`), or no task in
 * it that ran under the policy.
 */
export async function runPolicy(args: string[]): Promise<number> {
  try {
    return await replay(args);
  } catch (err) {
    const code = err instanceof ChainwardenError ? ` [${err.code}]` : '';
    process.stderr.write(`chainwarden policy: ${errorMessage(err)}${code}\n`);
    return 2;
  }
}

/** Everything printed from a stream goes through `printable`: the stream may have been written by anyone. */
const warn = (text: string) => process.stderr.write(`${printable(text)}\n`);
const tasks = (n: number) => `${n} ${n === 1 ? 'task' : 'tasks'}`;

async function replay(args: string[]): Promise<number> {
  const { positionals, values } = parseCommandArgs('policy', args, { policy: { type: 'string' }, 'allow-breaks': { type: 'boolean' } });
  const [verb, stream, ...extra] = positionals;
  if (verb !== 'replay' || extra.length > 0) throw new ChainwardenError('usage', USAGE);
  if (!values.policy) throw new ChainwardenError('usage', `--policy FILE is required: the AgentPolicy (YAML) to replay the stream under\n${USAGE}`);
  const policy = loadPolicyText(await readFile(values.policy, 'utf8'), values.policy);
  const reading = new StreamReplay(policy);
  await eachAuditRecord(openStream(stream), undefined, (e) => reading.add(e));
  if (reading.count === 0) throw new ChainwardenError('no_audit_records', 'no audit records found in the stream');
  const breaks = reading.breaksThatMatter();
  // Worded as `audit verify` words them.
  for (const b of breaks) warn(`BROKEN ${b.task} seq ${b.seq} (${location(b)}): ${b.problem}`);
  if (breaks.length > 0 && !values['allow-breaks']) {
    process.stderr.write(`chainwarden policy: ${breaks.length} ${breaks.length === 1 ? 'break' : 'breaks'} found in the audit stream: records that do not verify may not be what was decided; replay only the chains that verify with --allow-breaks\n`);
    return 2;
  }
  const engine = new PolicyEngine();
  const result = reading.replay((...a) => engine.evaluate(...a));
  for (const t of result.broken) warn(`left out: ${t}: its chain does not verify (the breaks above)`);
  for (const u of result.unreplayable) warn(`left out: ${u.task} (line ${u.line}): its records cannot be replayed: ${u.problem}`);
  const scope = `${policy.metadata.namespace ? `${policy.metadata.namespace}/` : ''}${policy.metadata.name ?? ''}`;
  if (result.admitted === 0) throw noTaskUnder(policy.metadata.namespace ? scope : `${scope} (in any namespace)`, values.policy, result);
  // Nothing was replayed: "0 of 0" would read as safe to roll out.
  if (result.unreplayable.length === result.admitted) throw new ChainwardenError('no_audit_records', `no task admitted under AgentPolicy ${scope} can be replayed: the records of ${tasks(result.admitted)} cannot (named above)`);
  // Some were not: a verdict on the rest is given only when asked for, as with breaks.
  if (result.unreplayable.length > 0 && !values['allow-breaks']) {
    process.stderr.write(`chainwarden policy: the records of ${tasks(result.unreplayable.length)} under AgentPolicy ${scope} cannot be replayed (named above), so no verdict is given; replay the rest with --allow-breaks\n`);
    return 2;
  }
  for (const c of result.changes) process.stdout.write(`${renderChange(c)}\n`);
  process.stdout.write(`${result.changes.length} of ${result.decided} recorded decisions would change under AgentPolicy ${scope} (mode ${policy.spec.mode ?? 'Enforce'})${leftOutOf(result)}\n`);
  return result.changes.length > 0 ? 1 : 0;
}

/** The tasks the summary says were left out, and why. */
function leftOutOf(result: ReplayResult): string {
  return [
    result.otherPolicy ? `${result.otherPolicy} tasks under other policies or namespaces left out` : '',
    result.notAdmitted ? `${tasks(result.notAdmitted)} whose admission is not in the stream left out` : '',
    result.broken.length ? `${tasks(result.broken.length)} with a broken chain left out` : '',
    result.unreplayable.length ? `${tasks(result.unreplayable.length)} whose records cannot be replayed left out` : '',
  ]
    .filter(Boolean)
    .map((l) => `; ${l}`)
    .join('');
}

/**
 * No task in the stream ran under the policy: "0 of 0 would change" would read as safe to roll
 * out. Most often the candidate was renamed, or names another namespace: say what the stream holds.
 */
function noTaskUnder(scope: string, file: string, result: ReplayResult): ChainwardenError {
  const shown = result.admittedUnder.slice(0, 5).map(printable).join(', ');
  const more = result.admittedUnder.length > 5 ? ` and ${result.admittedUnder.length - 5} more` : '';
  const n = result.notAdmitted;
  const unknown = n ? ` (${n === 1 ? "1 task's admission is" : `${n} tasks' admissions are`} not in the stream)` : '';
  const broken = result.broken.length ? ` whose chain verifies (${tasks(result.broken.length)} with a broken chain left out)` : '';
  const holds = shown
    ? `: its tasks were admitted under ${shown}${more}${unknown}; give the policy in ${file} the name and namespace of the live AgentPolicy it is to replace (metadata.name, metadata.namespace)`
    : n
      ? `: it holds no task's admission${unknown}`
      : '';
  return new ChainwardenError('no_audit_records', `no task in the stream${broken} was admitted under AgentPolicy ${scope}${holds}`);
}
