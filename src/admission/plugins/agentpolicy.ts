import { parseAgentPolicy, type FieldViolation } from '../../api/parse.js';
import { APPROVAL_TIMEOUT_RULE, MAX_HOP_RESOURCE, MAX_POLICY_GLOB_WORK, type AgentPolicy } from '../../api/schema.js';
import { validateCedar } from '../../policy/cedar-validate.js';
import { globWork } from '../../policy/glob.js';
import { rawPolicies } from '../../policy/compile.js';
import { ChainwardenError, errorMessage } from '../../errors.js';
import type { SecretAuthor, SecretReader } from '../../mcp/secrets.js';
import { forbiddenReceiverAddress } from '../../notify/transport.js';
import { allow, deny, keepsSpec, parseForAdmission, parseToJudge, type AdmissionPlugin } from '../review.js';

/** Rules must refer only to systems and data classes the policy declares; raw Cedar must validate. */
export function checkPolicy(policy: AgentPolicy): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const systems = new Set((policy.spec.systems ?? []).map((s) => s.name));
  const dataClasses = new Set((policy.spec.systems ?? []).flatMap((s) => s.dataClasses ?? []));

  const notifyUrl = policy.spec.approval?.notify?.url;
  const notifyHost = notifyUrl && URL.canParse(notifyUrl) ? new URL(notifyUrl).hostname.replace(/^\[|\]$/g, '') : '';
  if (forbiddenReceiverAddress(notifyHost)) {
    violations.push({ field: 'spec.approval.notify.url', message: `${notifyHost} is a link-local address, or another where a cloud serves instance metadata and credentials; the operator does not post there: name the receiver's own address` });
  }

  (policy.spec.rules ?? []).forEach((rule, i) => {
    // The CRD refuses it too; said here as well for `policy replay`, which does not run the CRD's rules.
    if (rule.name === APPROVAL_TIMEOUT_RULE) violations.push({ field: `spec.rules[${i}].name`, message: `${APPROVAL_TIMEOUT_RULE} is the reason chainwarden gives a hop whose approval never came; name the rule otherwise` });
    rule.when?.afterDataClasses?.forEach((dc, j) => {
      if (!dataClasses.has(dc)) {
        violations.push({
          field: `spec.rules[${i}].when.afterDataClasses[${j}]`,
          message: `data class "${dc}" is not declared by any system; add it to a system's dataClasses in spec.systems or fix the name`,
        });
      }
    });
    rule.when?.afterSystems?.forEach((name, j) => {
      if (!systems.has(name)) {
        violations.push({ field: `spec.rules[${i}].when.afterSystems[${j}]`, message: `system "${name}" is not declared in spec.systems; declare it or fix the name` });
      }
    });
  });

  violations.push(...checkGlobWork(policy));

  if (policy.spec.cedar !== undefined && policy.spec.cedar.trim() !== '') {
    const diagnostics = validateCedar(policy.spec.cedar);
    for (const d of diagnostics) {
      violations.push({ field: 'spec.cedar', message: `line ${d.line}, column ${d.column}: ${d.message}` });
    }
    if (diagnostics.length === 0) violations.push(...checkCedarIds(policy));
  }
  return violations;
}

/**
 * Every hop is matched against the policy's globs, on every replica's one event loop: globs
 * crafted to backtrack (`*aaaa…ab`, hundreds of them) would hold each decision for seconds. What
 * they may cost in all is bounded; the refusal names the globs that cost most and how to write
 * them cheaply. Realistic policies are far below it: a glob that ends in its star costs nothing.
 */
function checkGlobWork(policy: AgentPolicy): FieldViolation[] {
  const globs: { field: string; work: number }[] = [];
  const add = (field: string, list: readonly string[] | undefined) => list?.forEach((glob, j) => globs.push({ field: `${field}[${j}]`, work: globWork(glob) }));
  (policy.spec.rules ?? []).forEach((rule, i) => {
    add(`spec.rules[${i}].tools`, rule.tools);
    add(`spec.rules[${i}].actions`, rule.actions);
    add(`spec.rules[${i}].resources`, rule.resources);
  });
  (policy.spec.systems ?? []).forEach((system, i) => add(`spec.systems[${i}].resources`, system.resources));
  cedarLikePatterns(policy.spec.cedar ?? '').forEach((pattern, j) => globs.push({ field: `spec.cedar (like pattern ${j + 1})`, work: globWork(pattern) }));
  let total = 0;
  for (const g of globs) total += g.work;
  if (total <= MAX_POLICY_GLOB_WORK) return [];
  const costliest = globs
    .filter((g) => g.work > 0)
    .sort((a, b) => b.work - a.work)
    .slice(0, 3);
  return [
    {
      field: costliest[0]?.field ?? 'spec',
      message:
        `the policy's patterns hold ${total} characters after a wildcard (*), more than the ${MAX_POLICY_GLOB_WORK} a policy may: each is compared again at every character of a hop's resource (up to ${MAX_HOP_RESOURCE}), on every decision. ` +
        `The costliest: ${costliest.map((g) => `${g.field} (${g.work})`).join(', ')}. End patterns with their wildcard (arn:aws:s3:::bucket/*), name the values, or shorten what follows a wildcard`,
    },
  ];
}

/** The patterns of raw Cedar's `like` operators, their escapes (`\*` is a literal star) read as non-stars. */
function cedarLikePatterns(cedar: string): string[] {
  return [...cedar.matchAll(/\blike\s*"((?:[^"\\]|\\.)*)"/g)].map((m) => (m[1] ?? '').replace(/\\./g, '.'));
}

/**
 * Decisions cite policies by id, and the compiled policy set is keyed by id: two raw policies
 * with one `@id`, or a raw `@id` equal to a rule's name, would make a reason ambiguous (which
 * `no-exfiltration` denied the hop?). Refused, naming the id and the fix.
 */
function checkCedarIds(policy: AgentPolicy): FieldViolation[] {
  const violations: FieldViolation[] = [];
  const rules = new Set((policy.spec.rules ?? []).map((r) => r.name));
  const seen = new Map<string, number>();
  rawPolicies(policy.spec.cedar ?? '').forEach((raw, i) => {
    if (raw.id === undefined) return;
    const first = seen.get(raw.id);
    if (first !== undefined) {
      violations.push({ field: 'spec.cedar', message: `policy ${i + 1} has @id("${raw.id}"), which policy ${first + 1} already has; give each raw Cedar policy its own @id` });
    } else if (rules.has(raw.id)) {
      violations.push({ field: 'spec.cedar', message: `policy ${i + 1} has @id("${raw.id}"), which is the name of a rule in spec.rules; rename the @id or the rule` });
    }
    if (first === undefined) seen.set(raw.id, i);
  });
  return violations;
}

/**
 * Every credential a policy names (MCP systems', the approval notification's) must exist when the
 * policy is applied: a missing Secret or key would otherwise surface only as the agent's failed
 * calls or as notifications nobody gets.
 */
export async function checkMcpCredentials(policy: AgentPolicy, secrets: Pick<SecretReader, 'value' | 'mayRead'>, author?: SecretAuthor, known: ReadonlySet<string> = new Set()): Promise<FieldViolation[]> {
  const namespace = policy.metadata.namespace ?? '';
  const checks = credentialUses(policy).map(async ({ ref, field, sent }): Promise<FieldViolation | undefined> => {
    try {
      await secrets.value(namespace, ref.name, ref.key, field);
      // The gateway sends the credential to the policy's server: a policy names only a Secret its
      // author may read, or writing a policy would be a way to read any Secret of the namespace.
      if (author && !known.has(sent) && !(await secrets.mayRead(author, namespace, ref.name))) {
        return { field, message: `${author.username ?? 'the requesting user'} may not get Secret ${namespace}/${ref.name}; a policy may name only a Secret its author can read, since the gateway sends its value to the policy's server` };
      }
      return undefined;
    } catch (err) {
      const message = err instanceof ChainwardenError && err.code === 'mcp_credential_missing' ? err.message : `could not read Secret ${namespace}/${ref.name}: ${errorMessage(err)}; retry`;
      return { field, message };
    }
  });
  return (await Promise.all(checks)).filter((v): v is FieldViolation => v !== undefined);
}

type Credential = { secretRef: { name: string; key: string }; header?: string; prefix?: string };

/**
 * Each credential a policy names, with where it is sent: by whom, the Secret's key, the URL, the
 * header and its prefix. An MCP system's and the approval notification's are read and sent alike.
 */
function credentialUses(policy: AgentPolicy | undefined): { ref: Credential['secretRef']; field: string; sent: string }[] {
  // Who sends it is part of where: the operator posts notifications, an agent's sidecar calls MCP
  // servers, and one URL's name may resolve to another server from the tenant's pod.
  const use = (sender: 'notify' | 'mcp', credentials: Credential | undefined, url: string | undefined, field: string) =>
    credentials ? [{ ref: credentials.secretRef, field, sent: JSON.stringify([sender, credentials.secretRef.name, credentials.secretRef.key, url, credentials.header ?? null, credentials.prefix ?? null]) }] : [];
  const spec = policy?.spec;
  const notify = spec?.approval?.notify;
  return [
    ...(spec?.systems ?? []).flatMap((system, i) => use('mcp', system.mcp?.credentials, system.mcp?.url, `spec.systems[${i}].mcp.credentials.secretRef`)),
    ...use('notify', notify?.secretRef ? { secretRef: notify.secretRef, header: notify.header, prefix: notify.prefix } : undefined, notify?.url, 'spec.approval.notify.secretRef'),
  ];
}

/**
 * The credentials an update keeps as they were, to the same URL, header and prefix: their author
 * was checked when they were written. The same Secret sent anywhere else is checked anew, or an
 * editor who may not read it could point an existing reference at a server of their own.
 */
function knownSecretRefs(old: unknown): Set<string> {
  // Read as the new object is, defaults filled in, so an unchanged credential compares equal.
  return new Set(credentialUses(parseForAdmission(parseAgentPolicy, old)).map((use) => use.sent));
}

export function agentPolicyPlugin(secrets?: Pick<SecretReader, 'value' | 'mayRead'>): AdmissionPlugin {
  return {
    name: 'agentpolicy-well-formed',
    resources: ['agentpolicies'],
    operations: ['CREATE', 'UPDATE'],
    async admit(request) {
      // Label, annotation and finalizer edits go through even if a Secret the policy names is gone
      // since; the API server does not call the webhook for them at all (registration.ts).
      if (keepsSpec(request)) return allow();
      const { object: policy, refusal } = parseToJudge('AgentPolicy', parseAgentPolicy, request.object);
      if (refusal) return refusal;
      // Being deleted, it is still in force (a finalizer holds it): a spec changed now would go unchecked by anything.
      if (policy.metadata.deletionTimestamp) {
        return deny('AgentPolicy', [{ field: 'spec', message: `AgentPolicy ${policy.metadata.name ?? ''} is being deleted and keeps its spec until it is gone; wait for it to go (or remove its finalizers), then create it again with the new spec` }]);
      }
      const violations = [...checkPolicy(policy), ...(secrets ? await checkMcpCredentials(policy, secrets, request.userInfo, request.operation === 'UPDATE' ? knownSecretRefs(request.oldObject) : undefined) : [])];
      const namespace = request.namespace ?? policy.metadata.namespace ?? '';
      return violations.length > 0 ? deny('AgentPolicy', violations) : allow(undefined, [...mcpWarnings(policy), ...notifyWarnings(policy), ...approverWarnings(policy, namespace)]);
    },
  };
}

/** An approver that pods of the policy's own namespace can run as decides only while its tasks' accounts may create none. */
export function approverWarnings(policy: AgentPolicy, namespace: string): string[] {
  return (policy.spec.approval?.approvers?.users ?? []).flatMap((user, i) =>
    user.startsWith(`system:serviceaccount:${namespace}:`)
      ? [`spec.approval.approvers.users[${i}] is a service account of namespace ${namespace}, which any pod there can run as: its approvals are refused while a task's service account may create pods in ${namespace}; prefer an approver from another namespace`]
      : [],
  );
}

/** A receiver's credential sent over plain HTTP crosses the network readable by anyone on the way. */
export function notifyWarnings(policy: AgentPolicy): string[] {
  const notify = policy.spec.approval?.notify;
  if (!notify?.secretRef || !URL.canParse(notify.url) || new URL(notify.url).protocol !== 'http:') return [];
  return [`spec.approval.notify.url is plain http and spec.approval.notify.secretRef sends a credential with every notification: anyone on the way can read it; use an https receiver`];
}

/**
 * What admission allows but an author should know: the agent's container shares the pod's
 * network with the sidecar, so nothing at the network separates the two. What keeps the agent
 * from calling an MCP server itself is a credential only the gateway sends.
 */
export function mcpWarnings(policy: AgentPolicy): string[] {
  return (policy.spec.systems ?? []).flatMap((system, i) =>
    system.mcp && !system.mcp.credentials
      ? [`spec.systems[${i}].mcp has no credentials: the agent's container shares the pod's network with the sidecar and can call ${system.mcp.url} itself, undecided; give the server a credential only the gateway sends (spec.systems[${i}].mcp.credentials), or have it verify Txn-Tokens`]
      : [],
  );
}
