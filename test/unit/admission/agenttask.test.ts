import { describe, expect, it } from 'vitest';
import { agentTaskPlugin, checkSessionPolicy, checkTaskAgainstPolicy, taskFinalizerPlugin } from '../../../src/admission/plugins/agenttask.js';
import type { AdmissionRequest } from '../../../src/admission/review.js';
import type { AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { parsePermittedRoleArn, PermittedRoles } from '../../../src/credentials/permitted.js';

const policy = (spec: AgentPolicy['spec'] = {}): AgentPolicy => ({ apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: { name: 'pol' }, spec });
const task = (spec: Partial<AgentTask['spec']> = {}): AgentTask => ({
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't' },
  spec: { serviceAccountName: 'sa', policyRef: { name: 'pol' }, ttl: '30m', ...spec },
});
const role = (arn: string, extra: object = {}) => [{ name: 'default', aws: { roleArn: arn, ...extra } }];
/** The review the API server sends for a task written by a tenant: a create, or an update from `oldObject`. */
const review = (object: AgentTask, namespace: string, oldObject?: AgentTask): AdmissionRequest => ({
  uid: 'u',
  kind: { group: 'chainwarden.io', version: 'v1alpha1', kind: 'AgentTask' },
  resource: { group: 'chainwarden.io', version: 'v1alpha1', resource: 'agenttasks' },
  operation: oldObject ? 'UPDATE' : 'CREATE',
  namespace,
  userInfo: { username: 'alice' },
  object,
  oldObject,
});

describe('checkTaskAgainstPolicy', () => {
  it.each([
    { name: 'within every limit', t: task({ credentials: role('arn:aws:iam::111122223333:role/support-a') }), p: policy({ aws: { allowedRoleArns: ['arn:aws:iam::111122223333:role/support-*'] } }), fields: [] },
    { name: 'ttl over the default 1h maximum', t: task({ ttl: '90m' }), p: policy(), fields: ['spec.ttl'] },
    { name: 'ttl at exactly the maximum', t: task({ ttl: '2h' }), p: policy({ maxTaskTTL: '2h' }), fields: [] },
    { name: 'role not matched by any glob', t: task({ credentials: role('arn:aws:iam::111122223333:role/admin') }), p: policy({ aws: { allowedRoleArns: ['arn:aws:iam::111122223333:role/support-*'] } }), fields: ['spec.credentials[0].aws.roleArn'] },
    { name: 'role glob ? matches one character only', t: task({ credentials: role('arn:aws:iam::111122223333:role/agent-10') }), p: policy({ aws: { allowedRoleArns: ['arn:aws:iam::111122223333:role/agent-?'] } }), fields: ['spec.credentials[0].aws.roleArn'] },
    { name: 'no roles allowed at all', t: task({ credentials: role('arn:aws:iam::111122223333:role/a') }), p: policy(), fields: ['spec.credentials[0].aws.roleArn'] },
    { name: 'session longer than the default 1h', t: task({ credentials: role('arn:aws:iam::1:role/a', { duration: '61m' }) }), p: policy({ aws: { allowedRoleArns: ['*'] } }), fields: ['spec.credentials[0].aws.duration'] },
    { name: 'limits above the policy', t: task({ limits: { maxHops: 101, maxDepth: 7 } }), p: policy(), fields: ['spec.limits.maxHops', 'spec.limits.maxDepth'] },
    { name: 'limits equal to the policy', t: task({ limits: { maxHops: 10, maxDepth: 2 } }), p: policy({ limits: { maxHops: 10, maxDepth: 2 } }), fields: [] },
  ])('$name', ({ t, p, fields }) => {
    expect(checkTaskAgainstPolicy(t, p).map((v) => v.field)).toEqual(fields);
  });

  it('says which roles the policy allows', () => {
    const [v] = checkTaskAgainstPolicy(task({ credentials: role('arn:aws:iam::1:role/x') }), policy({ aws: { allowedRoleArns: ['arn:aws:iam::1:role/y*'] } }));
    expect(v?.message).toBe('arn:aws:iam::1:role/x is not allowed by AgentPolicy pol (allowed: arn:aws:iam::1:role/y*)');
  });
});

describe('agentTaskPlugin', () => {
  it('refuses a spec change to a task being deleted, which its finalizers keep bound; its finalizers may still go', async () => {
    const policies = { get: () => Promise.resolve(policy({ aws: { allowedRoleArns: ['arn:aws:iam::1:role/a'] } })) };
    const held = task({ credentials: role('arn:aws:iam::1:role/a') });
    held.metadata = { ...held.metadata, deletionTimestamp: '2026-01-01T00:00:00Z', finalizers: ['chainwarden.io/revoke'] };
    const edited = structuredClone(held);
    edited.spec.credentials = role('arn:aws:iam::1:role/admin');
    const verdict = await agentTaskPlugin(policies).admit(review(edited, 'support', held));
    expect(verdict).toMatchObject({ allowed: false, message: expect.stringMatching(/spec: AgentTask t is being deleted and keeps its spec until it is gone/) as string });
    const released = structuredClone(held);
    released.metadata.finalizers = [];
    expect(await agentTaskPlugin(policies as never).admit(review(released, 'support', held))).toMatchObject({ allowed: true });
  });
});

describe('checkSessionPolicy', () => {
  it('accepts an IAM policy document', () => {
    expect(checkSessionPolicy('{"Version":"2012-10-17","Statement":[]}', 'f')).toEqual([]);
  });
  it.each([
    ['not JSON', '{', /is not valid JSON/],
    ['an array', '[]', /must be a JSON object/],
    ['no Statement', '{"Version":"2012-10-17"}', /has no Statement/],
  ])('refuses %s', (_name, text, message) => {
    const [v] = checkSessionPolicy(text, 'spec.credentials[0].aws.sessionPolicy');
    expect(v?.field).toBe('spec.credentials[0].aws.sessionPolicy');
    expect(v?.message).toMatch(message);
  });
});

describe('taskFinalizerPlugin', () => {
  const admit = (metadata: unknown) =>
    taskFinalizerPlugin().admit({ uid: 'u', operation: 'CREATE', namespace: 'ns', userInfo: { username: 'alice' }, object: { ...task(), metadata } } as unknown as AdmissionRequest);

  it('puts the revocation finalizer on a new task that has none', async () => {
    expect(await admit({ name: 't' })).toEqual({ allowed: true, patch: [{ op: 'add', path: '/metadata/finalizers', value: ['chainwarden.io/revoke'] }] });
  });

  it("appends it after the tenant's own finalizers, which stay", async () => {
    expect(await admit({ name: 't', finalizers: ['example.com/hold'] })).toEqual({ allowed: true, patch: [{ op: 'add', path: '/metadata/finalizers/-', value: 'chainwarden.io/revoke' }] });
  });

  it('leaves a task that already carries it, or whose finalizers are malformed (the API server refuses those), as it is', async () => {
    expect(await admit({ name: 't', finalizers: ['chainwarden.io/revoke'] })).toEqual({ allowed: true });
    expect(await admit({ name: 't', finalizers: 'chainwarden.io/revoke' })).toEqual({ allowed: true });
  });
});

describe('the roles the cluster permits each namespace (--permitted-role-arn)', () => {
  // A tenant's own policy, allowing every role the operator could assume.
  const policies = { get: () => Promise.resolve(policy({ aws: { allowedRoleArns: ['arn:aws:iam::*:role/*'] } })) };
  const permitted = new PermittedRoles(['arn:aws:iam::111122223333:role/{namespace}-*']);

  it("refuses a role outside what the cluster permits the task's namespace, naming the field, what is permitted and who sets it", async () => {
    const verdict = await agentTaskPlugin(policies, permitted).admit(review(task({ credentials: role('arn:aws:iam::111122223333:role/team-b-payments') }), 'team-a'));
    expect(verdict).toMatchObject({ allowed: false });
    expect(verdict.allowed ? '' : verdict.message).toMatch(/spec\.credentials\[0\]\.aws\.roleArn: arn:aws:iam::111122223333:role\/team-b-payments is not among the roles this cluster permits tasks of namespace team-a \(arn:aws:iam::111122223333:role\/team-a-\*\).*--permitted-role-arn/);
  });

  it("admits the namespace's own roles, and without the flag every role its policy allows", async () => {
    expect(await agentTaskPlugin(policies, permitted).admit(review(task({ credentials: role('arn:aws:iam::111122223333:role/team-a-reader') }), 'team-a'))).toMatchObject({ allowed: true });
    expect(await agentTaskPlugin(policies).admit(review(task({ credentials: role('arn:aws:iam::111122223333:role/team-b-payments') }), 'team-a'))).toMatchObject({ allowed: true });
  });

  it('takes only globs over role ARNs, {namespace} their one placeholder', () => {
    expect(parsePermittedRoleArn('arn:aws:iam::111122223333:role/{namespace}-*')).toBe('arn:aws:iam::111122223333:role/{namespace}-*');
    for (const bad of ['team-a-*', 'arn:aws:s3:::bucket/*', 'arn:aws:iam::111122223333:role/{name}-*', 'arn:aws:iam::111122223333:user/x']) {
      expect(() => parsePermittedRoleArn(bad)).toThrow(/--permitted-role-arn takes a glob over IAM role ARNs/);
    }
  });
});
