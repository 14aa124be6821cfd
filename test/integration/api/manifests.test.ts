import { AdmissionregistrationV1Api } from '@kubernetes/client-node';
import type { AgentApproval, AgentPolicy, AgentTask } from '../../../src/api/schema.js';
import { exampleApproval, examplePolicy, exampleTask } from '../../builders/examples.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, read, rejection } from '../../env/kube.js';
import { boundExampleAgent, pendingRefund } from '../../env/hops.js';


interface WrongManifest {
  name: string;
  /** Builds the bad object; `create` runs first when the case is an update of a good one. */
  build: (ns: string) => object;
  /** For updates: the good object created before the bad one is applied. */
  before?: (ns: string) => { kind: string; metadata: object };
  field: string;
  message: RegExp;
}

const task = (ns: string, edit: (t: AgentTask) => void) => {
  const t = exampleTask(ns);
  edit(t);
  return t;
};
const policy = (ns: string, edit: (p: AgentPolicy) => void) => {
  const p = examplePolicy(ns);
  p.metadata.name = 'other-policy';
  edit(p);
  return p;
};
const approval = (ns: string, edit: (a: AgentApproval) => void) => {
  const a = exampleApproval(ns);
  edit(a);
  return a;
};
const aws = (t: AgentTask) => t.spec.credentials![0]!.aws;
const tags = (n: number, key = (i: number) => `k${i}`, value = () => 'v') => Object.fromEntries(Array.from({ length: n }, (_, i) => [key(i), value()]));

const cases: WrongManifest[] = [
  // AgentTask: static rules in the CRD schema
  { name: 'ttl that is not a duration', build: (ns) => task(ns, (t) => (t.spec.ttl = '30 minutes')), field: 'spec.ttl', message: /must be a duration such as 30m/ },
  { name: 'zero ttl', build: (ns) => task(ns, (t) => (t.spec.ttl = '0s')), field: 'spec.ttl', message: /more than 0s and at most 24h/ },
  { name: 'ttl over a day', build: (ns) => task(ns, (t) => (t.spec.ttl = '48h')), field: 'spec.ttl', message: /at most 24h/ },
  { name: 'no service account', build: (ns) => task(ns, (t) => Reflect.deleteProperty(t.spec, 'serviceAccountName')), field: 'spec.serviceAccountName', message: /Required value/ },
  { name: 'service account with capitals', build: (ns) => task(ns, (t) => (t.spec.serviceAccountName = 'Support_Agent')), field: 'spec.serviceAccountName', message: /lowercase DNS name/ },
  { name: 'malformed role ARN', build: (ns) => task(ns, (t) => (aws(t).roleArn = 'support-agent')), field: 'spec.credentials[0].aws.roleArn', message: /must be an IAM role ARN such as arn:aws:iam::/ },
  { name: 'session shorter than the STS floor', build: (ns) => task(ns, (t) => (aws(t).duration = '10m')), field: 'spec.credentials[0].aws.duration', message: /between 15m \(the STS minimum\)/ },
  { name: 'duplicate credential names', build: (ns) => task(ns, (t) => t.spec.credentials!.push(structuredClone(t.spec.credentials![0]!))), field: 'spec.credentials', message: /credential names must be unique/ },
  { name: 'credential name with capitals', build: (ns) => task(ns, (t) => (t.spec.credentials![0]!.name = 'Default')), field: 'spec.credentials[0].name', message: /lowercase name/ },
  { name: 'session policy over 2,048 characters', build: (ns) => task(ns, (t) => (aws(t).sessionPolicy = JSON.stringify({ Version: '2012-10-17', Statement: [], pad: 'x'.repeat(2100) }))), field: 'spec.credentials[0].aws.sessionPolicy', message: /Too long: may not be (more than|longer than) 2048/ },
  { name: 'more session tags than STS leaves room for', build: (ns) => task(ns, (t) => (aws(t).sessionTags = tags(48))), field: 'spec.credentials[0].aws.sessionTags', message: /must have at most 47 items/ },
  { name: 'session tag key over 128 characters', build: (ns) => task(ns, (t) => (aws(t).sessionTags = tags(1, () => 'k'.repeat(129)))), field: 'spec.credentials[0].aws.sessionTags', message: /tag keys must be 1-128 characters/ },
  { name: 'session tag value over 256 characters', build: (ns) => task(ns, (t) => (aws(t).sessionTags = tags(1, undefined, () => 'v'.repeat(257)))), field: 'spec.credentials[0].aws.sessionTags.k0', message: /Too long/ },
  { name: 'session tag key in the reserved prefix', build: (ns) => task(ns, (t) => (aws(t).sessionTags = { 'chainwarden:task': 'x' })), field: 'spec.credentials[0].aws.sessionTags', message: /reserved for the tags chainwarden adds/ },
  { name: 'zero max depth', build: (ns) => task(ns, (t) => (t.spec.limits = { maxDepth: 0 })), field: 'spec.limits.maxDepth', message: /greater than or equal to 1/ },
  // AgentTask: rules that need the policy (admission webhook)
  { name: 'policy that does not exist', build: (ns) => task(ns, (t) => (t.spec.policyRef = { name: 'no-such-policy' })), field: 'spec.policyRef.name', message: /AgentPolicy "no-such-policy" does not exist in namespace .*; create it first/ },
  { name: 'ttl over the policy maximum', build: (ns) => task(ns, (t) => (t.spec.ttl = '3h')), field: 'spec.ttl', message: /3h is longer than AgentPolicy support-agent's maxTaskTTL of 2h; ask for 2h or less/ },
  { name: 'role the policy does not allow', build: (ns) => task(ns, (t) => (aws(t).roleArn = 'arn:aws:iam::111122223333:role/admin')), field: 'spec.credentials[0].aws.roleArn', message: /not allowed by AgentPolicy support-agent \(allowed: arn:aws:iam::111122223333:role\/support-\*\)/ },
  { name: 'session longer than the policy allows', build: (ns) => task(ns, (t) => (aws(t).duration = '2h')), field: 'spec.credentials[0].aws.duration', message: /2h is longer than AgentPolicy support-agent's aws.maxDuration of 1h/ },
  { name: 'more hops than the policy allows', build: (ns) => task(ns, (t) => (t.spec.limits = { maxHops: 500 })), field: 'spec.limits.maxHops', message: /500 is above AgentPolicy support-agent's maxHops of 100/ },
  { name: 'session policy that is not JSON', build: (ns) => task(ns, (t) => (aws(t).sessionPolicy = '{"Version": "2012-10-17",')), field: 'spec.credentials[0].aws.sessionPolicy', message: /is not valid JSON .*write an IAM policy document/ },
  { name: 'session policy with no Statement', build: (ns) => task(ns, (t) => (aws(t).sessionPolicy = '{"Version":"2012-10-17"}')), field: 'spec.credentials[0].aws.sessionPolicy', message: /has no Statement/ },
  // AgentTask: identity fields are immutable
  { name: 'changing the ttl', before: (ns) => task(ns, () => {}), build: (ns) => task(ns, (t) => (t.spec.ttl = '1h')), field: 'spec.ttl', message: /is immutable: the deadline is fixed/ },
  { name: 'changing the service account', before: (ns) => task(ns, () => {}), build: (ns) => task(ns, (t) => (t.spec.serviceAccountName = 'someone-else')), field: 'spec.serviceAccountName', message: /is immutable/ },
  { name: 'changing the credentials', before: (ns) => task(ns, () => {}), build: (ns) => task(ns, (t) => (aws(t).roleArn = 'arn:aws:iam::111122223333:role/support-admin')), field: 'spec.credentials', message: /are immutable once the task exists/ },
  // AgentPolicy
  { name: 'raw Cedar that does not parse', build: (ns) => policy(ns, (p) => (p.spec.cedar = 'forbid (principal, action, resource) when { context.depth > };')), field: 'spec.cedar', message: /line 1, column \d+: .*unexpected token/ },
  { name: 'raw Cedar naming an attribute the schema lacks', build: (ns) => policy(ns, (p) => (p.spec.cedar = 'permit (principal, action, resource);\nforbid (principal, action, resource) when { context.deepness > 5 };')), field: 'spec.cedar', message: /line 2, column \d+: .*deepness/ },
  { name: 'rule effect that does not exist', build: (ns) => policy(ns, (p) => Object.assign(p.spec.rules![0]!, { effect: 'Maybe' })), field: 'spec.rules[0].effect', message: /Unsupported value: "Maybe"/ },
  { name: 'duplicate rule names', build: (ns) => policy(ns, (p) => p.spec.rules!.push(structuredClone(p.spec.rules![0]!))), field: 'spec.rules', message: /rule names must be unique/ },
  { name: 'rule with no tools', build: (ns) => policy(ns, (p) => (p.spec.rules![0]!.tools = [])), field: 'spec.rules[0].tools', message: /at least 1 item/ },
  { name: 'rule with an empty resource list, which would read as every resource', build: (ns) => policy(ns, (p) => (p.spec.rules![0]!.resources = [])), field: 'spec.rules[0].resources', message: /at least 1 item/ },
  { name: 'rule matching after an empty list of data classes', build: (ns) => policy(ns, (p) => (p.spec.rules![4]!.when = { afterDataClasses: [] })), field: 'spec.rules[4].when.afterDataClasses', message: /at least 1 item/ },
  { name: 'rule named as chainwarden names a timed-out approval, which traces and replay would read as one', build: (ns) => policy(ns, (p) => (p.spec.rules![0]!.name = 'approval-timeout')), field: 'spec.rules[0].name', message: /approval-timeout is the reason chainwarden gives a hop whose approval never came; name the rule otherwise/ },
  { name: 'rule on an undeclared data class', build: (ns) => policy(ns, (p) => (p.spec.rules![4]!.when = { afterDataClasses: ['secrets'] })), field: 'spec.rules[4].when.afterDataClasses[0]', message: /data class "secrets" is not declared by any system/ },
  { name: 'allowed role that is not a role ARN', build: (ns) => policy(ns, (p) => (p.spec.aws = { allowedRoleArns: ['arn:aws:s3:::bucket'] })), field: 'spec.aws.allowedRoleArns[0]', message: /must be an IAM role ARN, globs allowed/ },
  { name: 'max task ttl over a day', build: (ns) => policy(ns, (p) => (p.spec.maxTaskTTL = '25h')), field: 'spec.maxTaskTTL', message: /at most 24h/ },
  { name: 'unknown violation action', build: (ns) => policy(ns, (p) => Object.assign(p.spec, { onViolation: 'Explode' })), field: 'spec.onViolation', message: /Unsupported value: "Explode"/ },
  { name: 'globs crafted to hold every decision', build: (ns) => policy(ns, (p) => (p.spec.systems![0]!.resources = Array.from({ length: 20 }, () => `*${'a'.repeat(254)}b`))), field: 'spec.systems[0].resources[0]', message: /hold 5100 characters after a wildcard \(\*\), more than the 2048 a policy may: .*End patterns with their wildcard/ },
  { name: 'max AWS session under the STS floor', build: (ns) => policy(ns, (p) => (p.spec.aws = { maxDuration: '5m' })), field: 'spec.aws.maxDuration', message: /15m \(the STS minimum\)/ },
  // AgentApproval
  { name: 'approval of a task that does not exist', build: (ns) => approval(ns, (a) => (a.spec.taskRef = { name: 'no-such-task' })), field: 'spec.taskRef.name', message: /AgentTask "no-such-task" does not exist/ },
  { name: 'approval decision that does not exist', build: (ns) => approval(ns, (a) => Object.assign(a.spec, { decision: 'Maybe' })), field: 'spec.decision', message: /Unsupported value: "Maybe"/ },
  { name: 'approval of a hop that is not waiting for one', build: (ns) => approval(ns, () => {}), field: 'spec.hopId', message: /hop REPLACE-WITH-HOP-ID is not waiting for approval in AgentTask ticket-4711/ },
  { name: 'approval of a malformed hop id', build: (ns) => approval(ns, (a) => (a.spec.hopId = '../etc/passwd')), field: 'spec.hopId', message: /must be a hop id as the broker returned it/ },
];

describe('the API rejects wrong manifests, naming the field and the fix', () => {
  test('the example policy, task and approval apply as they are', async ({ admin, env, namespace }) => {
    const agent = await boundExampleAgent(admin, env, namespace);
    const example = exampleApproval(namespace);
    example.spec.hopId = await pendingRefund(agent);
    const stored = await create(admin, example);
    // Defaults from the schema are filled in by the API server.
    const policy = await read(admin, examplePolicy(namespace));
    expect(policy.spec.systems?.[2]?.trustBoundary).toBe('external');
    expect(stored.spec.approver?.username).toBe('chainwarden-admin');
  });

  test.for(cases)('$name', async (c, { admin, namespace }) => {
    expect(cases.length).toBeGreaterThanOrEqual(25);
    await create(admin, examplePolicy(namespace));
    await create(admin, exampleTask(namespace));
    let message = '';
    if (c.before) {
      const before = c.before(namespace);
      if (before.kind !== 'AgentTask') await create(admin, before);
      // The operator writes finalizers and status meanwhile: retry on a stale resourceVersion.
      do {
        const current = (await read(admin, before)) as { metadata: { resourceVersion?: string } };
        const bad = c.build(namespace) as { metadata: object };
        bad.metadata = { ...bad.metadata, resourceVersion: current.metadata.resourceVersion };
        message = await rejection(admin, bad, 'replace');
      } while (message.startsWith('Operation cannot be fulfilled'));
    } else {
      // A name of its own, so that only validation can refuse it.
      const bad = c.build(namespace) as { metadata: { name: string } };
      bad.metadata.name = `bad-${bad.metadata.name}`;
      message = await rejection(admin, bad);
    }
    expect(message).toContain(c.field);
    expect(message).toMatch(c.message);
  });

  test('the webhooks are registered with a URL and CA bundle, fail closed, and are really called', async ({ admin, namespace, env }) => {
    const api = admin.makeApiClient(AdmissionregistrationV1Api);
    const validating = await api.readValidatingWebhookConfiguration({ name: 'chainwarden' });
    const hook = validating.webhooks?.[0];
    expect(hook?.clientConfig.url).toBe(`${env.webhookUrl}/validate`);
    expect(Buffer.from(hook?.clientConfig.caBundle ?? '', 'base64').toString()).toContain('BEGIN CERTIFICATE');
    expect(hook?.failurePolicy).toBe('Fail');
    expect(hook?.timeoutSeconds).toBeLessThanOrEqual(10);
    // Only the webhook knows which policies exist: this message comes from it.
    const message = await rejection(admin, task(namespace, (t) => (t.spec.policyRef = { name: 'absent' })));
    expect(message).toMatch(/admission webhook "resources.validate.chainwarden.io" denied the request/);
  });

  test('a task that breaks its policy in several ways lists every violation in one answer', async ({ admin, namespace }) => {
    await create(admin, examplePolicy(namespace));
    const message = await rejection(
      admin,
      task(namespace, (t) => {
        t.spec.ttl = '3h';
        t.spec.limits = { maxHops: 500, maxDepth: 10 };
        aws(t).roleArn = 'arn:aws:iam::111122223333:role/admin';
      }),
    );
    for (const field of ['spec.ttl', 'spec.limits.maxHops', 'spec.limits.maxDepth', 'spec.credentials[0].aws.roleArn']) expect(message).toContain(field);
  });
});
