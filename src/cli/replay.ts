import { createReadStream } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { parseAllDocuments } from 'yaml';
import { InvalidObjectError, parseAgentPolicy } from '../api/parse.js';
import type { AgentPolicy } from '../api/schema.js';
import { printable } from '../api/text.js';
import { checkPolicy } from '../admission/plugins/agentpolicy.js';
import { readAuditStream } from '../audit/verify.js';
import { replayRecords, type ReplayChange } from '../broker/replay.js';
import { ChainwardenError, errorMessage } from '../errors.js';
import { PolicyEngine } from '../policy/engine.js';
import { parseCommandArgs } from './common.js';

const USAGE = 'use: chainwarden policy replay --policy FILE [AUDIT_FILE|-]';

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

export function renderChange(c: ReplayChange): string {
  const rules = (r: string[]) => (r.length ? ` (${r.join(', ')})` : '');
  return printable(`${c.task} hop ${c.hopId} ${c.tool} ${c.action} ${c.resource || '-'}: ${c.before}${rules(c.beforeRules)} → ${c.after}${rules(c.afterRules)}`);
}

/** The stream to replay, read line by line (a log may be larger than memory allows as one string). */
function openStream(file: string | undefined): Readable {
  if (file !== undefined && file !== '-') return createReadStream(file);
  if (process.stdin.isTTY) throw new ChainwardenError('usage', `give the audit stream as AUDIT_FILE, or pipe one in (e.g. kubectl logs deploy/chainwarden | chainwarden policy replay --policy FILE)\n${USAGE}`);
  return process.stdin;
}

/**
 * `chainwarden policy replay --policy FILE [AUDIT_FILE|-]`: exit 1 when a recorded decision would
 * change, 0 when none would, and 2 (like diff) when the policy or the stream cannot be used.
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

async function replay(args: string[]): Promise<number> {
  const { positionals, values } = parseCommandArgs('policy', args, { policy: { type: 'string' } });
  const [verb, stream, ...extra] = positionals;
  if (verb !== 'replay' || extra.length > 0) throw new ChainwardenError('usage', USAGE);
  if (!values.policy) throw new ChainwardenError('usage', `--policy FILE is required: the AgentPolicy (YAML) to replay the stream under\n${USAGE}`);
  const policy = loadPolicyText(await readFile(values.policy, 'utf8'), values.policy);
  const records = (await readAuditStream(openStream(stream))).map((e) => e.record);
  if (records.length === 0) throw new ChainwardenError('no_audit_records', 'no audit records found in the stream');
  const engine = new PolicyEngine();
  const result = replayRecords(records, policy, (...a) => engine.evaluate(...a));
  for (const c of result.changes) process.stdout.write(`${renderChange(c)}\n`);
  const scope = `${policy.metadata.namespace ? `${policy.metadata.namespace}/` : ''}${policy.metadata.name ?? ''}`;
  const skipped = result.otherPolicy.length ? `; ${result.otherPolicy.length} tasks under other policies or namespaces left out` : '';
  process.stdout.write(`${result.changes.length} of ${result.decided} recorded decisions would change under AgentPolicy ${scope} (mode ${policy.spec.mode ?? 'Enforce'})${skipped}\n`);
  return result.changes.length > 0 ? 1 : 0;
}
