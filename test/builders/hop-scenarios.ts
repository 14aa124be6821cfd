import type { AgentPolicy, AgentTask } from '../../src/api/schema.js';

/**
 * Hop-policy scenarios over the example support policy and task: the decision and the rules
 * that decide each. The unit table runs them all over `decideHop`; the integration suite runs a
 * few through the real broker with real pod-bound tokens.
 */
export interface Scenario {
  name: string;
  policy?: (p: AgentPolicy) => void;
  task?: (t: AgentTask) => void;
  /** Hops asked for before the one under test; each may name the previous one as parent with `parent: true`. */
  before?: (Record<string, unknown> & { parent?: boolean })[];
  hop: Record<string, unknown> & { parent?: boolean };
  decision: 'allow' | 'deny' | 'pending_approval';
  rules: string[];
  depth?: number;
}

// Denials here must not end the task (that is tested on its own), so violations only deny.
const denyOnly = (p: AgentPolicy) => void (p.spec.onViolation = 'Deny');
const withRule = (rule: NonNullable<AgentPolicy['spec']['rules']>[number]) => (p: AgentPolicy) => {
  denyOnly(p);
  p.spec.rules = [...(p.spec.rules ?? []), rule];
};
const withCedar = (cedar: string) => (p: AgentPolicy) => {
  denyOnly(p);
  p.spec.cedar = cedar;
};
const read = { tool: 'tickets', action: 'read', resource: 'ticket/4711' };

export const scenarios: Scenario[] = [
  { name: 'reading a ticket is allowed by its rule', hop: read, decision: 'allow', rules: ['read-and-comment'] },
  { name: 'commenting on a ticket is allowed', hop: { tool: 'tickets', action: 'comment', resource: 'ticket/4711' }, decision: 'allow', rules: ['read-and-comment'] },
  { name: 'a resource outside the rule\'s glob is denied by default', policy: denyOnly, hop: { tool: 'tickets', action: 'read', resource: 'invoice/1' }, decision: 'deny', rules: ['default-deny'] },
  { name: 'an action no rule names is denied by default', policy: denyOnly, hop: { tool: 'tickets', action: 'delete', resource: 'ticket/1' }, decision: 'deny', rules: ['default-deny'] },
  { name: 'a tool the policy does not know is denied by default', policy: denyOnly, hop: { tool: 'crm', action: 'export', resource: 'all' }, decision: 'deny', rules: ['default-deny'] },
  { name: 'a refund waits for a person', hop: { tool: 'payments', action: 'refund', resource: 'order/1' }, decision: 'pending_approval', rules: ['refunds-need-a-human'] },
  { name: 'payments administration is never allowed', policy: denyOnly, hop: { tool: 'payments', action: 'admin.freeze', resource: 'account/1' }, decision: 'deny', rules: ['never-admin-payments'] },
  {
    name: 'Deny wins over a broader Allow',
    policy: withRule({ name: 'all-payments', effect: 'Allow', tools: ['payments'], actions: ['*'] }),
    hop: { tool: 'payments', action: 'admin.wipe', resource: 'x' },
    decision: 'deny',
    rules: ['never-admin-payments'],
  },
  {
    name: 'RequireApproval wins over a broader Allow',
    policy: withRule({ name: 'all-payments', effect: 'Allow', tools: ['payments'], actions: ['*'] }),
    hop: { tool: 'payments', action: 'refund', resource: 'order/2' },
    decision: 'pending_approval',
    rules: ['refunds-need-a-human'],
  },
  { name: 'email is allowed before any customer data was read', hop: { tool: 'email', action: 'send', resource: 'customer' }, decision: 'allow', rules: ['reply-by-email'] },
  { name: 'no email to an external system after reading PII in the same task', policy: denyOnly, before: [read], hop: { tool: 'email', action: 'send', resource: 'customer' }, decision: 'deny', rules: ['no-exfiltration'] },
  {
    name: 'no email after an AWS read of a bucket a system classifies as PII',
    policy: (p) => {
      withRule({ name: 'read-customer-objects', effect: 'Allow', tools: ['aws:s3'], actions: ['s3:GetObject'], resources: ['arn:aws:s3:::customers/*'] })(p);
      p.spec.systems = [...(p.spec.systems ?? []), { name: 'customer-data', trustBoundary: 'internal', dataClasses: ['pii'], resources: ['arn:aws:s3:::customers/*'] }];
    },
    before: [{ tool: 'aws:s3', action: 's3:GetObject', resource: 'arn:aws:s3:::customers/4711.json' }],
    hop: { tool: 'email', action: 'send', resource: 'customer' },
    decision: 'deny',
    rules: ['no-exfiltration'],
  },
  {
    name: 'an email after an AWS read of an unclassified bucket is allowed',
    policy: withRule({ name: 'read-public-objects', effect: 'Allow', tools: ['aws:s3'], actions: ['s3:GetObject'], resources: ['arn:aws:s3:::public/*'] }),
    before: [{ tool: 'aws:s3', action: 's3:GetObject', resource: 'arn:aws:s3:::public/faq.json' }],
    hop: { tool: 'email', action: 'send', resource: 'customer' },
    decision: 'allow',
    rules: ['reply-by-email'],
  },
  {
    name: 'a denied PII read does not count as touching PII',
    policy: (p) => {
      denyOnly(p);
      p.spec.rules = p.spec.rules?.filter((r) => r.name !== 'read-and-comment');
    },
    before: [read],
    hop: { tool: 'email', action: 'send', resource: 'customer' },
    decision: 'allow',
    rules: ['reply-by-email'],
  },
  {
    name: 'a rule on systems already called',
    policy: withRule({ name: 'no-email-after-payments', effect: 'Deny', tools: ['email'], actions: ['*'], when: { afterSystems: ['tickets'] } }),
    before: [{ tool: 'tickets', action: 'comment', resource: 'ticket/1' }],
    hop: { tool: 'email', action: 'send', resource: 'x' },
    decision: 'deny',
    rules: ['no-email-after-payments', 'no-exfiltration'],
  },
  {
    name: 'a rule on crossing from internal systems to an external one',
    policy: withRule({ name: 'no-crossing', effect: 'Deny', tools: ['*'], actions: ['*'], when: { crossesTrustBoundary: true } }),
    before: [{ tool: 'tickets', action: 'comment', resource: 'ticket/1' }],
    hop: { tool: 'email', action: 'send', resource: 'x' },
    decision: 'deny',
    rules: ['no-crossing', 'no-exfiltration'],
  },
  {
    name: 'an external hop with nothing internal before it does not cross',
    policy: withRule({ name: 'no-crossing', effect: 'Deny', tools: ['*'], actions: ['*'], when: { crossesTrustBoundary: true } }),
    hop: { tool: 'email', action: 'send', resource: 'x' },
    decision: 'allow',
    rules: ['reply-by-email'],
  },
  {
    name: 'a hop touching an external system is external, whichever system the policy lists first',
    policy: (p) => {
      withRule({ name: 'no-crossing', effect: 'Deny', tools: ['*'], actions: ['*'], when: { crossesTrustBoundary: true } })(p);
      withRule({ name: 'write-objects', effect: 'Allow', tools: ['aws:s3'], actions: ['s3:PutObject'], resources: ['arn:aws:s3:::*'] })(p);
      p.spec.systems = [{ name: 'all-buckets', trustBoundary: 'internal', resources: ['arn:aws:s3:::*'] }, { name: 'public-share', trustBoundary: 'external', resources: ['arn:aws:s3:::public-share/*'] }, ...(p.spec.systems ?? [])];
    },
    before: [read],
    hop: { tool: 'aws:s3', action: 's3:PutObject', resource: 'arn:aws:s3:::public-share/dump.csv' },
    decision: 'deny',
    rules: ['no-crossing'],
  },
  {
    name: 'an external tool on a resource an internal system classifies crosses in that one hop',
    policy: withRule({ name: 'no-crossing', effect: 'Deny', tools: ['*'], actions: ['*'], when: { crossesTrustBoundary: true } }),
    hop: { tool: 'email', action: 'send', resource: 'arn:aws:s3:::support-customers/all.csv' },
    decision: 'deny',
    rules: ['no-crossing'],
  },
  {
    name: "a task's limit above its policy's, tightened since, yields to the policy's",
    policy: (p) => {
      denyOnly(p);
      p.spec.limits = { maxHops: 100, maxDepth: 1 };
    },
    task: (t) => void (t.spec.limits = { maxHops: 50, maxDepth: 4 }),
    before: [read],
    hop: { ...read, parent: true },
    decision: 'deny',
    rules: ['limit:maxDepth'],
  },
  {
    name: 'a rule from a depth on: depth 2 is still allowed',
    policy: withRule({ name: 'no-deep-comments', effect: 'Deny', tools: ['tickets'], actions: ['comment'], when: { minDepth: 3 } }),
    before: [read],
    hop: { tool: 'tickets', action: 'comment', resource: 'ticket/1', parent: true },
    decision: 'allow',
    rules: ['read-and-comment'],
    depth: 2,
  },
  {
    name: 'a rule from a depth on: depth 3 is denied',
    policy: withRule({ name: 'no-deep-comments', effect: 'Deny', tools: ['tickets'], actions: ['comment'], when: { minDepth: 3 } }),
    before: [read, { ...read, parent: true }],
    hop: { tool: 'tickets', action: 'comment', resource: 'ticket/1', parent: true },
    decision: 'deny',
    rules: ['no-deep-comments'],
    depth: 3,
  },
  {
    name: 'leaving out parentHop does not reset the depth a rule sees',
    policy: withRule({ name: 'no-deep-comments', effect: 'Deny', tools: ['tickets'], actions: ['comment'], when: { minDepth: 2 } }),
    before: [read, { ...read, parent: true }],
    hop: { tool: 'tickets', action: 'comment', resource: 'ticket/1' },
    decision: 'deny',
    rules: ['no-deep-comments'],
    depth: 2,
  },
  {
    name: 'a hop denied for going too deep went nowhere: the next hop is as deep as the deepest allowed one, and allowed',
    policy: denyOnly,
    task: (t) => void (t.spec.limits = { maxDepth: 2 }),
    before: [read, { ...read, parent: true }, { ...read, parent: true }],
    hop: read,
    decision: 'allow',
    rules: ['read-and-comment'],
    depth: 2,
  },
  {
    name: 'the task\'s maxDepth stops a chain that goes too deep',
    policy: denyOnly,
    task: (t) => void (t.spec.limits = { maxDepth: 2 }),
    before: [read, { ...read, parent: true }],
    hop: { ...read, parent: true },
    decision: 'deny',
    rules: ['limit:maxDepth'],
    depth: 3,
  },
  {
    name: 'the task\'s maxHops stops the task\'s fourth hop',
    policy: denyOnly,
    task: (t) => void (t.spec.limits = { maxHops: 3 }),
    before: [read, read, read],
    hop: read,
    decision: 'deny',
    rules: ['limit:maxHops'],
  },
  {
    name: 'raw Cedar on depth adds to the compiled rules',
    policy: (p) => {
      denyOnly(p);
      p.spec.cedar = '@id("no-deep-chains")\nforbid (principal, action, resource) when { context.depth > 2 };';
    },
    before: [read, { ...read, parent: true }],
    hop: { ...read, parent: true },
    decision: 'deny',
    rules: ['no-deep-chains'],
    depth: 3,
  },
  {
    name: 'raw Cedar can allow on the hop\'s attributes',
    policy: withCedar('@id("escalate-high")\npermit (principal, action, resource) when { context.tool == "tickets" && context.action == "escalate" && resource.hasTag("priority") && resource.getTag("priority") == "high" };'),
    hop: { tool: 'tickets', action: 'escalate', resource: 'ticket/1', attributes: { priority: 'high' } },
    decision: 'allow',
    rules: ['escalate-high'],
  },
  {
    name: 'raw Cedar\'s attribute condition does not match other values',
    policy: withCedar('@id("escalate-high")\npermit (principal, action, resource) when { context.tool == "tickets" && context.action == "escalate" && resource.hasTag("priority") && resource.getTag("priority") == "high" };'),
    hop: { tool: 'tickets', action: 'escalate', resource: 'ticket/1', attributes: { priority: 'low' } },
    decision: 'deny',
    rules: ['default-deny'],
  },
  {
    name: 'raw Cedar on prior denials stops a task that keeps probing',
    policy: withCedar('@id("three-strikes")\nforbid (principal, action, resource) when { context.priorDenials >= 2 };'),
    before: [{ tool: 'crm', action: 'export', resource: 'a' }, { tool: 'crm', action: 'export', resource: 'b' }],
    hop: read,
    decision: 'deny',
    rules: ['three-strikes'],
  },
  {
    name: 'raw Cedar on the hop count',
    policy: withCedar('@id("short-tasks")\nforbid (principal, action, resource) when { context.hopCount >= 2 };'),
    before: [read, read],
    hop: read,
    decision: 'deny',
    rules: ['short-tasks'],
  },
  {
    name: 'raw Cedar on the task itself (principal attributes)',
    policy: withCedar('@id("only-support")\nforbid (principal, action, resource) unless { principal.serviceAccount == "support-agent" };'),
    hop: read,
    decision: 'allow',
    rules: ['read-and-comment'],
  },
  {
    name: 'raw Cedar on the tool entity\'s data classes',
    policy: withCedar('@id("no-pii-tools-at-depth")\nforbid (principal, action, resource in Chainwarden::Tool::"tickets") when { context.depth > 1 };'),
    before: [read],
    hop: { ...read, parent: true },
    decision: 'deny',
    rules: ['no-pii-tools-at-depth'],
    depth: 2,
  },
];

