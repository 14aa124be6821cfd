/**
 * The v1alpha1 API, defined once. The CRDs in `crds/` are rendered from these schemas
 * (`chainwarden crds`), the TypeScript types are their static types, and the runtime parser
 * checks objects against them; a unit test fails when `crds/` drifts from what this file renders.
 *
 * Static rules live here, as OpenAPI and CEL (`x-kubernetes-validations`), so the API server
 * itself rejects a wrong manifest with the message written next to the rule. Rules that need
 * another object (the task's policy, the requesting user) live in the admission webhooks.
 */
import { Type, type Static, type TSchema } from '@sinclair/typebox';
import { DURATION_PATTERN } from './duration.js';

export const GROUP = 'chainwarden.io';
export const VERSION = 'v1alpha1';
export const API_VERSION = `${GROUP}/${VERSION}`;

interface CelRule {
  rule: string;
  message: string;
  fieldPath?: string;
  reason?: 'FieldValueInvalid' | 'FieldValueForbidden' | 'FieldValueRequired' | 'FieldValueDuplicate';
}

const cel = (...rules: CelRule[]) => ({ 'x-kubernetes-validations': rules });

/** A regular expression as a CEL string literal (CEL, like Go, reads backslash escapes). */
const celString = (regex: string) => `'${regex.replace(/\\/g, '\\\\').replace(/'/g, "\\'")}'`;
const matches = (regex: string) => `self.matches(${celString(regex)})`;

const NAME_RULE = matches(String.raw`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`);
const LABEL_RULE = matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$');
const ROLE_ARN = '^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]{1,512}$';
const ROLE_ARN_GLOB = '^arn:aws[a-z*-]*:iam::([0-9]{12}|[*]):role/[A-Za-z0-9+=,.@_/*?-]{1,512}$';
const TAG_KEY = String.raw`^[\p{L}\p{Z}\p{N}_.:/=+@-]{1,128}$`;
const TAG_VALUE = String.raw`^[\p{L}\p{Z}\p{N}_.:/=+@-]{0,256}$`;
const TOKEN = '^[A-Za-z0-9_.:/*-]+$';

/** Tags chainwarden adds to every session (task, namespace, service account); STS allows 50 in all. */
export const RESERVED_SESSION_TAGS = 3;
export const MAX_USER_SESSION_TAGS = 50 - RESERVED_SESSION_TAGS;
export const MAX_SESSION_POLICY_CHARS = 2048;
/** Sessions kept in a task's status; the oldest drop out first. */
export const MAX_RECORDED_SESSIONS = 200;
/** What a hop request may carry; a waiting hop keeps all of it in status, so 100 of them stay far below an object's size limit. */
export const MAX_HOP_INTENT = 1024;
/** The longest hop action: MCP tool names run to 128 characters. */
export const MAX_HOP_ACTION = 128;
/** A hop's resource: what the status lists of decided hops hold. */
export const MAX_HOP_RESOURCE = 1024;
export const MAX_HOP_ATTRIBUTES = 50;
export const MAX_HOP_ATTRIBUTE = 1024;
export const MAX_HOP_ATTRIBUTES_CHARS = 4096;

function durationRules(range: { min: string; minExclusive?: boolean; max: string }, hint: string): CelRule[] {
  const valid = matches(DURATION_PATTERN);
  const lower = range.minExclusive ? `duration(self) > duration('${range.min}')` : `duration(self) >= duration('${range.min}')`;
  return [
    { rule: valid, message: 'must be a duration such as 30m, 1h or 1h30m (units: s, m, h)' },
    { rule: `!${valid} || (${lower} && duration(self) <= duration('${range.max}'))`, message: hint },
  ];
}

const Duration = (
  description: string,
  range: { min: string; minExclusive?: boolean; max: string },
  hint: string,
  options: { default?: string; rules?: CelRule[] } = {},
) => {
  const { rules = [], ...extra } = options;
  return Type.String({ description, maxLength: 32, ...extra, ...cel(...durationRules(range, hint), ...rules) });
};

const Timestamp = (description: string) => Type.String({ description, format: 'date-time' });

const ObjectName = (description: string, ...rules: CelRule[]) =>
  Type.String({ description, minLength: 1, maxLength: 253, ...cel({ rule: NAME_RULE, message: 'must be a lowercase DNS name: letters, digits, "-" and "."' }, ...rules) });

const Condition = Type.Object(
  {
    type: Type.String({ description: 'Kind of condition: Ready, IdentityBound, CredentialsIssued, Completed, Violated, Revoked or Expired.', maxLength: 316 }),
    status: Type.Union([Type.Literal('True'), Type.Literal('False'), Type.Literal('Unknown')], { description: 'True, False or Unknown.' }),
    reason: Type.String({ description: 'A CamelCase word saying why; each reason is documented in the README.', maxLength: 1024 }),
    message: Type.String({ description: 'What happened and, when something is wrong, what to do about it.', maxLength: 32768 }),
    lastTransitionTime: Timestamp('When the status last changed; a repeated observation does not move it.'),
    observedGeneration: Type.Optional(Type.Integer({ description: 'The .metadata.generation this condition was computed from.', minimum: 0 })),
  },
  { description: 'A condition in the Kubernetes convention.' },
);

const Conditions = Type.Array(Condition, {
  description: 'Conditions, one per type.',
  maxItems: 16,
  'x-kubernetes-list-type': 'map',
  'x-kubernetes-list-map-keys': ['type'],
});

const Limits = (defaults: boolean) =>
  Type.Object(
    {
      maxHops: Type.Optional(
        Type.Integer({ description: 'Most hops (tool calls and handoffs) the task may make in all.', minimum: 1, maximum: 100000, ...(defaults ? { default: 100 } : {}) }),
      ),
      maxDepth: Type.Optional(
        Type.Integer({ description: 'Deepest a chain of hops may go (a hop with no parent has depth 1).', minimum: 1, maximum: 64, ...(defaults ? { default: 6 } : {}) }),
      ),
    },
    { description: defaults ? 'Limits every task under this policy must stay within.' : "Limits for this task; each must be within the policy's." },
  );

// ---------------------------------------------------------------------------------------------
// AgentPolicy


/**
 * Globs are matched without backtracking into earlier stars (`src/policy/glob.ts`, Cedar's
 * `like`): a glob costs at most its length times the value's, whatever its stars, and what a
 * policy's globs cost in all is bounded at admission (`MAX_POLICY_GLOB_WORK`). The cap on stars
 * keeps policies readable; a glob with more stars than this is almost always a mistake.
 */
export const MAX_GLOB_STARS = 8;
/**
 * What a policy's globs (its rules', its systems' resources and raw Cedar's `like` patterns) may
 * cost a hop beyond reading its values once, in characters after a star (`globWork`): against a
 * resource of the longest a hop takes, some 2 million steps of Cedar's `like`, 2 to 3 ms of one core.
 */
export const MAX_POLICY_GLOB_WORK = 2048;
const MAX_GLOB_LENGTH = 256;
/** RE2 (CEL's regex engine) is linear, so this is cheap for the API server to check. */
const STAR_LIMIT_RULE = `!${matches(`^([^*]*[*]){${MAX_GLOB_STARS + 1}}`)}`;
const STAR_LIMIT: CelRule = {
  rule: STAR_LIMIT_RULE,
  message: `may hold at most ${MAX_GLOB_STARS} wildcards (*); name the values, or split the pattern into several list entries with fewer wildcards each`,
};

const Glob = (what: string) =>
  Type.String({
    description: what,
    minLength: 1,
    maxLength: MAX_GLOB_LENGTH,
    ...cel({ rule: matches(TOKEN), message: 'may hold letters, digits and _ . : / - and the wildcard *' }, STAR_LIMIT),
  });

/** An http(s) URL the operator calls; credentials go in a header from a Secret, never in the URL. */
const HttpUrl = (description: string, example: string) =>
  Type.String({
    description,
    minLength: 1,
    maxLength: 2048,
    ...cel({ rule: "self.matches('^https?://[^/@?#\\\\s]+(/[^?#\\\\s]*)?$') && isURL(self)", message: `must be an http:// or https:// URL without credentials, query or fragment, e.g. ${example}` }),
  });

/** A key of a Secret in the policy's namespace, read by the operator (which needs get on it). */
const SecretKeyRef = (description: string) =>
  Type.Object(
    {
      name: Type.String({ description: "A Secret in the policy's namespace.", minLength: 1, maxLength: 253, ...cel({ rule: NAME_RULE, message: 'must be a Secret name' }) }),
      key: Type.String({ description: 'The key of the Secret holding the credential.', minLength: 1, maxLength: 253, ...cel({ rule: matches('^[-._a-zA-Z0-9]+$'), message: 'must be a Secret key: letters, digits, - _ .' }) }),
    },
    { description },
  );

/** Headers the gateways set themselves or that carry the transport: a credential there would break the call or misroute it. */
const RESERVED_CREDENTIAL_HEADERS = ['host', 'content-type', 'content-length', 'transfer-encoding', 'connection', 'accept', 'txn-token', 'mcp-session-id', 'mcp-protocol-version', 'last-event-id'];
const CredentialHeader = Type.String({
  description: 'The header the credential goes in.',
  default: 'Authorization',
  minLength: 1,
  maxLength: 128,
  ...cel(
    { rule: matches("^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"), message: 'must be an HTTP header name' },
    { rule: `!(self.lowerAscii() in [${RESERVED_CREDENTIAL_HEADERS.map((h) => `'${h}'`).join(', ')}])`, message: `must not be a header the gateway or the transport sets (${RESERVED_CREDENTIAL_HEADERS.join(', ')}); use Authorization or a header of the server's own` },
  ),
});
const CredentialPrefix = Type.String({ description: 'Written before the credential, e.g. "Bearer ".', maxLength: 64, ...cel({ rule: matches('^[\\x20-\\x7e]*$'), message: 'must be printable ASCII' }) });

const System = Type.Object({
  name: Type.String({ description: 'The tool or system name hops use in their `tool` field, e.g. tickets.', minLength: 1, maxLength: 63, ...cel({ rule: LABEL_RULE, message: 'must be a lowercase name: letters, digits and "-"' }) }),
  trustBoundary: Type.Optional(
    Type.Union([Type.Literal('internal'), Type.Literal('external')], { description: 'internal: inside the organisation; external: data leaving it (email, third-party APIs).', default: 'internal' }),
  ),
  dataClasses: Type.Optional(
    Type.Array(Type.String({ maxLength: 63, ...cel({ rule: LABEL_RULE, message: 'must be a lowercase name such as pii or payment-card' }) }), {
      description: 'Classes of data a hop to this system touches, e.g. pii. Rules can refer to them afterwards.',
      maxItems: 20,
    }),
  ),
  resources: Type.Optional(
    Type.Array(Glob('A hop resource glob, e.g. arn:aws:s3:::customers/*.'), {
      description: "Hops whose resource matches one of these globs touch this system too, whatever their tool: an AWS gateway hop reading arn:aws:s3:::customers/1 touches a system that lists arn:aws:s3:::customers/*, with its data classes.",
      maxItems: 20,
    }),
  ),
  mcp: Type.Optional(
    Type.Object(
      {
        url: HttpUrl("The system's MCP server (Streamable HTTP), e.g. http://tickets-mcp.support.svc:8080/mcp. Agents reach it only through the sidecar's /mcp/<system>.", 'http://tickets-mcp.support.svc:8080/mcp'),
        credentials: Type.Optional(
          Type.Object(
            { secretRef: SecretKeyRef('Where the credential is. The operator reads it; the agent never sees it.'), header: Type.Optional(CredentialHeader), prefix: Type.Optional(CredentialPrefix) },
            { description: 'The credential the gateway adds to every message it passes on to the server.' },
          ),
        ),
        resource: Type.Optional(
          Type.String({
            description: 'The hop resource of a tools/call, filled from its arguments: ticket/{ticketId}. Without it the resource is *.',
            minLength: 1,
            maxLength: 512,
            ...cel({ rule: matches('\\{[A-Za-z0-9_]+\\}'), message: 'must name at least one argument as {name}, e.g. ticket/{ticketId}' }),
          }),
        ),
      },
      { description: "The MCP server behind this system: the agent's tools/call on it are hops, decided before anything reaches the server." },
    ),
  ),
});

const RuleWhen = Type.Object(
  {
    afterDataClasses: Type.Optional(Type.Array(Type.String({ maxLength: 63 }), { description: 'Match only once the task has touched any of these data classes. Not empty: leave it out to match whatever was touched.', minItems: 1, maxItems: 20 })),
    afterSystems: Type.Optional(Type.Array(Type.String({ maxLength: 63 }), { description: 'Match only once the task has called any of these systems. Not empty: leave it out to match whatever was called.', minItems: 1, maxItems: 20 })),
    crossesTrustBoundary: Type.Optional(Type.Boolean({ description: 'Match only hops that go from internal systems to an external one (true) or that do not (false).' })),
    minDepth: Type.Optional(Type.Integer({ description: 'Match only hops at this depth or deeper.', minimum: 1, maximum: 64 })),
  },
  { description: 'Conditions on the chain so far; all given must hold.' },
);

/** The reason a held hop gets when no approval came in time; no rule may take the name. */
export const APPROVAL_TIMEOUT_RULE = 'approval-timeout';

const PolicyRule = Type.Object({
  name: Type.String({
    description: 'Unique name; decisions cite it as the reason. approval-timeout is the reason chainwarden gives a held hop whose approval never came, and no rule may take it.',
    minLength: 1,
    maxLength: 63,
    ...cel({ rule: LABEL_RULE, message: 'must be a lowercase name: letters, digits and "-"' }, { rule: `self != '${APPROVAL_TIMEOUT_RULE}'`, message: 'approval-timeout is the reason chainwarden gives a hop whose approval never came; name the rule otherwise' }),
  }),
  effect: Type.Union([Type.Literal('Allow'), Type.Literal('Deny'), Type.Literal('RequireApproval')], {
    description: 'Allow, Deny, or RequireApproval (the hop waits for an AgentApproval). Deny wins over RequireApproval, which wins over Allow.',
  }),
  tools: Type.Array(Glob('A tool name or glob, e.g. tickets or *.'), { description: 'Tools the rule applies to.', minItems: 1, maxItems: 50 }),
  actions: Type.Array(Glob('An action or glob, e.g. read or admin.*.'), { description: 'Actions the rule applies to.', minItems: 1, maxItems: 50 }),
  resources: Type.Optional(Type.Array(Glob('A resource or glob, e.g. ticket/*.'), { description: 'Resources the rule applies to; every resource when left out. Not empty: an empty list would read as every resource too.', minItems: 1, maxItems: 50 })),
  when: Type.Optional(RuleWhen),
  description: Type.Optional(Type.String({ description: 'Why the rule exists, for people reading the policy.', maxLength: 1024 })),
});

export const AgentPolicySpec = Type.Object(
  {
    maxTaskTTL: Type.Optional(
      Duration('Longest ttl a task under this policy may ask for.', { min: '0s', minExclusive: true, max: '24h' }, 'must be more than 0s and at most 24h', { default: '1h' }),
    ),
    limits: Type.Optional(Type.Object(Limits(true).properties, { description: Limits(true).description, default: {} })),
    aws: Type.Optional(
      Type.Object(
        {
          allowedRoleArns: Type.Optional(
            Type.Array(
              Type.String({
                maxLength: 600,
                ...cel(
                  { rule: matches(ROLE_ARN_GLOB), message: 'must be an IAM role ARN, globs allowed: arn:aws:iam::111122223333:role/support-*' },
                  STAR_LIMIT,
                ),
              }),
              { description: 'IAM roles tasks may assume, as ARNs with * and ? globs. None when left out.', maxItems: 50 },
            ),
          ),
          maxDuration: Type.Optional(
            Duration('Longest AWS session a task may ask for.', { min: '15m', max: '12h' }, 'must be between 15m (the STS minimum) and 12h (the STS maximum)', { default: '1h' }),
          ),
          allowDirect: Type.Optional(
            Type.Boolean({
              description: "Whether a task's credentials may use delivery: Direct, handing the agent the STS session itself. Gateway only when false: every AWS call is a hop the broker signs.",
              default: false,
            }),
          ),
        },
        { description: 'What tasks may do in AWS.' },
      ),
    ),
    systems: Type.Optional(
      Type.Array(System, {
        description: 'The tools and systems agents call; they feed the chain context rules see.',
        maxItems: 100,
        ...cel({ rule: 'self.all(s, self.exists_one(t, t.name == s.name))', message: 'system names must be unique' }),
      }),
    ),
    rules: Type.Optional(
      Type.Array(PolicyRule, {
        description: 'Hop rules. A hop no rule allows is denied; Deny and a failed limit win over Allow.',
        maxItems: 200,
        ...cel({ rule: 'self.all(r, self.exists_one(q, q.name == r.name))', message: 'rule names must be unique' }),
      }),
    ),
    cedar: Type.Optional(
      Type.String({ description: 'Raw Cedar policies added to the compiled rules; validated against the chainwarden Cedar schema.', maxLength: 65536 }),
    ),
    mode: Type.Optional(
      Type.Union([Type.Literal('Enforce'), Type.Literal('Audit')], {
        description:
          'Enforce: decisions are answered as made. Audit: decisions are made, recorded and counted as in Enforce, but a hop that would be denied is allowed (its audit record says wouldDeny, status.hops.wouldDeny counts it) and nothing is revoked; RequireApproval still waits for a person.',
        default: 'Enforce',
      }),
    ),
    onViolation: Type.Optional(
      Type.Union([Type.Literal('Revoke'), Type.Literal('Deny')], {
        description: 'Revoke: a denied hop ends the task and revokes all it holds. Deny: only that hop is refused.',
        default: 'Revoke',
      }),
    ),
    approval: Type.Optional(
      Type.Object(
        {
          timeout: Type.Optional(
            Duration('How long a hop waits for an AgentApproval before it is denied.', { min: '1m', max: '24h' }, 'must be between 1m and 24h', { default: '15m' }),
          ),
          holdFor: Type.Optional(
            Duration('How long a gateway holds a call that waits for approval before it answers that an approval is needed.', { min: '1s', max: '10m' }, 'must be between 1s and 10m', { default: '30s' }),
          ),
          approvers: Type.Optional(
            Type.Object(
              {
                users: Type.Optional(
                  Type.Array(Type.String({ minLength: 1, maxLength: 512 }), {
                    description: 'Usernames that may decide, as the API server authenticates them. A service account approves only when named here (system:serviceaccount:<namespace>:<name>).',
                    maxItems: 100,
                  }),
                ),
                groups: Type.Optional(
                  Type.Array(Type.String({ minLength: 1, maxLength: 512 }), { description: 'Groups whose members may decide; membership never lets a service account decide.', maxItems: 100 }),
                ),
              },
              {
                description: "Who may decide this policy's hops. Left out: any user RBAC lets create AgentApprovals, but no service account. A task's own service account never decides its hops.",
                ...cel({ rule: '(has(self.users) && size(self.users) > 0) || (has(self.groups) && size(self.groups) > 0)', message: 'name at least one user or group, or leave approvers out' }),
              },
            ),
          ),
          notify: Type.Optional(
            Type.Object(
              {
                url: HttpUrl('Where each hop that starts waiting is POSTed, e.g. https://hooks.example.com/chainwarden.', 'https://hooks.example.com/chainwarden'),
                format: Type.Optional(
                  Type.Union([Type.Literal('Slack'), Type.Literal('CloudEvents')], {
                    description: 'Slack: Slack-compatible JSON ({text, blocks}). CloudEvents: a CloudEvents 1.0 structured event (application/cloudevents+json) whose id is the hop id.',
                    default: 'Slack',
                  }),
                ),
                secretRef: Type.Optional(SecretKeyRef('Where the credential for the URL is; the operator needs get on Secrets in this namespace, as for MCP credentials.')),
                header: Type.Optional(CredentialHeader),
                prefix: Type.Optional(CredentialPrefix),
              },
              { description: 'Tells people a hop waits: the leader POSTs every pending hop once, retried with backoff; each failed attempt is a Warning Event on the task.' },
            ),
          ),
        },
        { description: 'How approvals work.', default: {} },
      ),
    ),
  },
  { description: 'What tasks under this policy may do.' },
);

export const AgentPolicyStatus = Type.Object(
  {
    observedGeneration: Type.Optional(Type.Integer({ description: 'The generation the status describes.', minimum: 0 })),
    rules: Type.Optional(Type.Integer({ description: 'Cedar policies in force: compiled rules plus raw Cedar.', minimum: 0 })),
    conditions: Type.Optional(Conditions),
  },
  { description: 'Written by the operator.' },
);

// ---------------------------------------------------------------------------------------------
// AgentTask

const AwsCredential = Type.Object(
  {
    roleArn: Type.String({
      description: 'The IAM role to assume; the task policy must allow it.',
      maxLength: 600,
      ...cel({ rule: matches(ROLE_ARN), message: 'must be an IAM role ARN such as arn:aws:iam::111122223333:role/support-agent' }),
    }),
    duration: Type.Optional(
      Duration('Session length; planned from the deadline when left out.', { min: '15m', max: '12h' }, 'must be between 15m (the STS minimum) and 12h (the STS maximum)'),
    ),
    sessionPolicy: Type.Optional(
      Type.String({
        description: 'Inline IAM session policy (JSON) that narrows the role for this task.',
        maxLength: MAX_SESSION_POLICY_CHARS,
      }),
    ),
    sessionTags: Type.Optional(
      Type.Record(Type.String(), Type.String({ maxLength: 256 }), {
        description: `Extra session tags. chainwarden adds ${RESERVED_SESSION_TAGS} of its own (task, namespace, service account).`,
        maxProperties: MAX_USER_SESSION_TAGS,
        ...cel(
          {
            rule: `self.all(k, k.matches(${celString(TAG_KEY)}))`,
            message: 'tag keys must be 1-128 characters of letters, digits, spaces and _ . : / = + - @',
          },
          { rule: `self.all(k, self[k].matches(${celString(TAG_VALUE)}))`, message: 'tag values must be at most 256 characters of letters, digits, spaces and _ . : / = + - @' },
          { rule: "self.all(k, !k.lowerAscii().startsWith('chainwarden'))", message: 'tag keys starting with chainwarden are reserved for the tags chainwarden adds' },
        ),
      }),
    ),
    webIdentity: Type.Optional(
      Type.Boolean({ description: "true: AssumeRoleWithWebIdentity with the task's JWT-SVID instead of the operator's own identity.", default: false }),
    ),
    delivery: Type.Optional(
      Type.Union([Type.Literal('Gateway'), Type.Literal('Direct')], {
        description:
          "Gateway: the agent gets placeholder keys and AWS_ENDPOINT_URL points its SDK at the sidecar, which has the broker decide and sign every call; the session never leaves the broker. Direct: the agent gets the STS session itself (the policy must set spec.aws.allowDirect).",
        default: 'Gateway',
      }),
    ),
  },
  { description: 'AWS credentials through STS.' },
);

const CredentialRequest = Type.Object({
  name: Type.String({
    description: 'default is served at /v1/credentials; others at /v1/credentials/{name}.',
    minLength: 1,
    maxLength: 63,
    ...cel({ rule: LABEL_RULE, message: 'must be a lowercase name: letters, digits and "-"' }),
  }),
  aws: AwsCredential,
});

export const AgentTaskSpec = Type.Object(
  {
    serviceAccountName: ObjectName('The service account the agent pods run as. They are labelled chainwarden.io/task=<task name>.'),
    policyRef: Type.Object(
      {
        name: ObjectName('Name of an AgentPolicy in the same namespace.'),
      },
      { description: 'The AgentPolicy that governs this task.' },
    ),
    ttl: Duration('How long the task may run, counted from creation; the deadline.', { min: '0s', minExclusive: true, max: '24h' }, 'must be more than 0s and at most 24h'),
    intent: Type.Optional(Type.String({ description: 'What the task is for, in a sentence; recorded in the audit trail.', maxLength: 1024 })),
    limits: Type.Optional(Limits(false)),
    credentials: Type.Optional(
      Type.Array(CredentialRequest, {
        description: 'Credentials the broker issues to the agent pods.',
        maxItems: 10,
        ...cel({ rule: 'self.all(c, self.exists_one(d, d.name == c.name))', message: 'credential names must be unique' }),
      }),
    ),
  },
  {
    description: 'One chain of agent work.',
    // Transition rules (those reading oldSelf) sit here, on the parent, with a fieldPath: the API
    // server skips a field's whole rule list on create when any rule in it reads oldSelf.
    ...cel(
      { rule: 'self.serviceAccountName == oldSelf.serviceAccountName', message: 'is immutable: the task identity is bound to it; create a new AgentTask instead', fieldPath: '.serviceAccountName' },
      { rule: 'self.policyRef == oldSelf.policyRef', message: 'is immutable; create a new AgentTask to use another policy', fieldPath: '.policyRef' },
      { rule: 'self.ttl == oldSelf.ttl', message: 'is immutable: the deadline is fixed when the task is created', fieldPath: '.ttl' },
      {
        rule: 'has(self.credentials) == has(oldSelf.credentials) && (!has(self.credentials) || self.credentials == oldSelf.credentials)',
        message: 'are immutable once the task exists; create a new AgentTask instead',
        fieldPath: '.credentials',
      },
    ),
  },
);

const BoundPod = Type.Object({
  name: Type.String({ description: 'Pod name.' }),
  uid: Type.String({ description: 'Pod UID; a replaced pod has a new one and must be bound again.' }),
});

const IssuedSession = Type.Object({
  credential: Type.String({ description: 'The credential request this session serves.' }),
  accessKeyId: Type.String({ description: 'Access key id of the session (never the secret).' }),
  expiration: Timestamp('When the session expires at STS.'),
  sessionName: Type.String({ description: 'The RoleSessionName, deterministic per task.' }),
  issuedBy: Type.Optional(Type.String({ description: 'The operator replica that issued it.' })),
  issuedAt: Type.Optional(Timestamp('When it was issued.')),
});

export const TASK_STATES = ['Pending', 'Bound', 'Completed', 'Expired', 'Violated'] as const;

export const AgentTaskStatus = Type.Object(
  {
    state: Type.Optional(
      Type.Union(
        TASK_STATES.map((s) => Type.Literal(s)),
        { description: 'Summary of the conditions: Pending, Bound, Completed, Expired or Violated.' },
      ),
    ),
    observedGeneration: Type.Optional(Type.Integer({ description: 'The generation the status describes.', minimum: 0 })),
    spiffeID: Type.Optional(Type.String({ description: 'spiffe://<trust-domain>/ns/<ns>/sa/<sa>/task/<task>' })),
    boundPods: Type.Optional(Type.Array(BoundPod, { description: 'Pods holding the task identity.', maxItems: 64 })),
    deadline: Type.Optional(Timestamp('Creation time plus ttl.')),
    credentials: Type.Optional(
      Type.Object(
        {
          sourceIdentity: Type.Optional(Type.String({ description: 'The immutable per-task marker set as STS SourceIdentity.' })),
          sessions: Type.Optional(Type.Array(IssuedSession, { description: `STS sessions issued, each recorded before it was handed out; the latest ${MAX_RECORDED_SESSIONS}.`, maxItems: MAX_RECORDED_SESSIONS })),
          expiration: Type.Optional(Timestamp('Latest expiry of any session issued.')),
          revokedAt: Type.Optional(Timestamp('When the task was revoked.')),
          awsDenyInPlace: Type.Optional(Type.Boolean({ description: "Whether the deny on the task's SourceIdentity is written to the roles." })),
        },
        { description: 'What was issued and revoked.' },
      ),
    ),
    hops: Type.Optional(
      Type.Object(
        {
          allowed: Type.Integer({ description: 'Hops allowed.', minimum: 0 }),
          denied: Type.Integer({ description: 'Hops denied.', minimum: 0 }),
          pending: Type.Integer({ description: 'Hops waiting for approval.', minimum: 0 }),
          wouldDeny: Type.Optional(Type.Integer({ description: 'Hops allowed only because the policy is in Audit mode: Enforce would have denied them.', minimum: 0 })),
        },
        { description: 'Hop counts.' },
      ),
    ),
    chain: Type.Optional(
      Type.Object(
        {
          version: Type.Integer({ description: 'Incremented with every write of the chain state.', minimum: 0 }),
          hopCount: Type.Integer({ description: 'Hops asked for so far, whatever their decision.', minimum: 0 }),
          deepest: Type.Optional(Type.Integer({ description: 'The deepest a hop of the task has gone; no later hop is shallower.', minimum: 0 })),
          priorDenials: Type.Integer({ description: 'Hops denied so far.', minimum: 0 }),
          systemsTouched: Type.Array(Type.String({ maxLength: 63 }), { description: 'Systems the task has called.', maxItems: 200 }),
          dataClassesTouched: Type.Array(Type.String({ maxLength: 63 }), { description: 'Data classes the task has touched.', maxItems: 200 }),
        },
        { description: 'The chain context hop rules see, shared by every replica.' },
      ),
    ),
    pendingHops: Type.Optional(
      Type.Array(
        Type.Object({
          hopId: Type.String({ description: 'The hop waiting.' }),
          digest: Type.String({ description: 'SHA-256 of tool, action, resource and attributes; an approval is bound to it.' }),
          tool: Type.String({ description: 'Tool.' }),
          action: Type.String({ description: 'Action.' }),
          resource: Type.String({ description: 'Resource.' }),
          depth: Type.Integer({ description: 'Depth in the chain.', minimum: 1 }),
          parentHop: Type.Optional(Type.String({ description: 'The hop it follows.' })),
          intent: Type.Optional(Type.String({ description: 'What the agent says the hop is for.', maxLength: MAX_HOP_INTENT })),
          attributes: Type.Optional(
            Type.Record(Type.String(), Type.String({ maxLength: MAX_HOP_ATTRIBUTE }), { description: 'The attributes the agent sent, which the approval is bound to.', maxProperties: MAX_HOP_ATTRIBUTES }),
          ),
          rules: Type.Array(Type.String(), { description: 'The rules that require approval.' }),
          wouldDenyBy: Type.Optional(
            Type.Array(Type.String(), { description: 'Audit mode only: the rules or limits that would deny this hop under Enforce. Approved, it is allowed and recorded as a would-be denial.' }),
          ),
          requestedAt: Timestamp('When it was asked for.'),
          timeoutAt: Timestamp('When it is denied if nobody decides.'),
        }),
        { description: 'Hops waiting for an AgentApproval.', maxItems: 100 },
      ),
    ),
    recentHops: Type.Optional(
      Type.Array(
        Type.Object({
          hopId: Type.String({ description: 'The hop.' }),
          decision: Type.String({ description: 'allow or deny.' }),
          tool: Type.Optional(Type.String({ description: 'Tool.', maxLength: 63 })),
          action: Type.Optional(Type.String({ description: 'Action.', maxLength: MAX_HOP_ACTION })),
          resource: Type.Optional(Type.String({ description: 'Resource.', maxLength: MAX_HOP_RESOURCE })),
          rules: Type.Array(Type.String(), { description: 'The rules that decided it.' }),
          wouldDeny: Type.Optional(Type.Boolean({ description: 'Allowed only because the policy is in Audit mode; rules are those that would have denied it.' })),
          at: Timestamp('When it was decided.'),
        }),
        { description: 'The latest decided hops, newest last.', maxItems: 20 },
      ),
    ),
    notifiedHops: Type.Optional(
      Type.Array(
        Type.Object({
          hopId: Type.String({ description: 'The pending hop.' }),
          at: Timestamp('When the notification was accepted.'),
        }),
        { description: "Pending hops whose approval notification (the policy's approval.notify) was delivered, so a new leader does not send it again.", maxItems: 100 },
      ),
    ),
    violation: Type.Optional(
      Type.Object(
        {
          hopId: Type.String({ description: 'The hop that violated the policy.' }),
          rule: Type.String({ description: 'The rule or limit it broke.' }),
          message: Type.String({ description: 'What happened.' }),
        },
        { description: 'Why the task was stopped, when it was.' },
      ),
    ),
    completion: Type.Optional(
      Type.Object(
        {
          pod: Type.String({ description: 'The agent pod that reported it.' }),
          at: Timestamp('When it was reported.'),
        },
        { description: 'The agent reported the chain complete (POST /v1/tasks/{namespace}/{name}/complete); the controller turns this into Completed.' },
      ),
    ),
    audit: Type.Optional(
      Type.Object(
        {
          head: Type.String({ description: "SHA-256 of the task's latest audit record." }),
          count: Type.Integer({ description: 'Records in the chain.', minimum: 0 }),
          writer: Type.Optional(Type.String({ description: 'The operator process (replica and a per-process id) that made the latest journal write.', maxLength: 512 })),
          unsent: Type.Optional(
            Type.Array(Type.String(), {
              description:
                "The records of the latest journal write, until the next write (one entry: `deflate:` and the base64 of the raw-deflated records, each record's JSON a line; an earlier version's entries are base64 of one record's JSON each): a process killed after writing the head and before emitting them leaves them here, and the next writer, if another process, emits them (an exact copy of a record in the stream counts once), so the stream never has a hole below the head.",
            }),
          ),
          emitted: Type.Optional(
            Type.Boolean({
              description:
                'The records in unsent are known to be in the audit stream: marked by their writer once they are out, on a task that has ended (no next write will come), or by the leader, which emits them first, when the writer left them unmarked for 10 s.',
            }),
          ),
        },
        { description: 'The head of the audit hash chain, to check an audit stream against.' },
      ),
    ),
    conditions: Type.Optional(Conditions),
  },
  { description: 'Written by the operator only; each field has one owner (see the README).' },
);

// ---------------------------------------------------------------------------------------------
// AgentApproval

export const AgentApprovalSpec = Type.Object(
  {
    taskRef: Type.Object({ name: ObjectName('Name of the AgentTask in the same namespace.') }, { description: 'The task whose hop this decides.' }),
    hopId: Type.String({
      description: 'The pending hop, as answered by POST /v1/hops.',
      minLength: 1,
      maxLength: 128,
      ...cel({ rule: matches('^[A-Za-z0-9_-]+$'), message: 'must be a hop id as the broker returned it (letters, digits, _ and -)' }),
    }),
    decision: Type.Union([Type.Literal('Approve'), Type.Literal('Reject')], { description: 'Approve or Reject.' }),
    reason: Type.Optional(Type.String({ description: 'Why; recorded in the audit trail.', maxLength: 1024 })),
    hopDigest: Type.Optional(
      Type.String({ description: 'Set by admission: the digest of the pending hop (tool, action, resource, attributes) this approval is bound to.', maxLength: 64 }),
    ),
    hopRules: Type.Optional(
      Type.Array(Type.String({ maxLength: 256 }), {
        description:
          'Set by admission: the rules the pending hop waited for. The approval lifts these and no other: the same call, once the chain has changed so that another rule holds it too, waits for a new approval.',
        maxItems: 200,
      }),
    ),
    approver: Type.Optional(
      Type.Object(
        {
          username: Type.String({ description: 'The user who created the approval.', maxLength: 512 }),
          uid: Type.Optional(Type.String({ description: "The user's uid, when the authenticator gives one.", maxLength: 512 })),
          groups: Type.Optional(Type.Array(Type.String({ maxLength: 512 }), { description: "The user's groups.", maxItems: 256 })),
        },
        { description: 'Set by admission from the requesting user; a value in the request body is replaced.' },
      ),
    ),
  },
  {
    description: 'A human decision on one pending hop.',
    ...cel({ rule: 'self == oldSelf', message: 'an AgentApproval is immutable once created; create a new one to change a decision' }),
  },
);

// ---------------------------------------------------------------------------------------------

export const ObjectMeta = Type.Object(
  {
    name: Type.Optional(Type.String()),
    namespace: Type.Optional(Type.String()),
    uid: Type.Optional(Type.String()),
    generation: Type.Optional(Type.Integer()),
    resourceVersion: Type.Optional(Type.String()),
    creationTimestamp: Type.Optional(Type.String()),
    deletionTimestamp: Type.Optional(Type.String()),
    labels: Type.Optional(Type.Record(Type.String(), Type.String())),
    annotations: Type.Optional(Type.Record(Type.String(), Type.String())),
    finalizers: Type.Optional(Type.Array(Type.String())),
  },
  { additionalProperties: true },
);

export interface PrinterColumn {
  name: string;
  type: 'string' | 'integer' | 'date' | 'boolean' | 'number';
  jsonPath: string;
  description: string;
  priority?: number;
}

export interface KindDefinition {
  kind: string;
  plural: string;
  singular: string;
  shortNames: string[];
  description: string;
  spec: TSchema;
  status?: TSchema;
  printerColumns: PrinterColumn[];
}

export const KINDS: KindDefinition[] = [
  {
    kind: 'AgentTask',
    plural: 'agenttasks',
    singular: 'agenttask',
    shortNames: ['at'],
    description: 'One chain of agent work: who runs it, its deadline, its policy, the credentials it may get and its limits.',
    spec: AgentTaskSpec,
    status: AgentTaskStatus,
    printerColumns: [
      { name: 'State', type: 'string', jsonPath: '.status.state', description: 'Pending, Bound, Completed, Expired or Violated.' },
      { name: 'SPIFFE ID', type: 'string', jsonPath: '.status.spiffeID', description: 'The identity bound to the agent pods.' },
      { name: 'Creds Expire', type: 'date', jsonPath: '.status.credentials.expiration', description: 'Latest expiry of an issued session.' },
      { name: 'Allowed', type: 'integer', jsonPath: '.status.hops.allowed', description: 'Hops allowed.' },
      { name: 'Denied', type: 'integer', jsonPath: '.status.hops.denied', description: 'Hops denied.' },
      { name: 'Would Deny', type: 'integer', jsonPath: '.status.hops.wouldDeny', description: 'Hops allowed only because the policy is in Audit mode.', priority: 1 },
      { name: 'Policy', type: 'string', jsonPath: '.spec.policyRef.name', description: 'The governing AgentPolicy.', priority: 1 },
      { name: 'Deadline', type: 'date', jsonPath: '.status.deadline', description: 'When the task expires.', priority: 1 },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since creation.' },
    ],
  },
  {
    kind: 'AgentPolicy',
    plural: 'agentpolicies',
    singular: 'agentpolicy',
    shortNames: ['ap'],
    description: 'What tasks under it may do: max TTL, allowed roles, hop rules, raw Cedar, and what a violation does.',
    spec: AgentPolicySpec,
    status: AgentPolicyStatus,
    printerColumns: [
      { name: 'Max TTL', type: 'string', jsonPath: '.spec.maxTaskTTL', description: 'Longest task ttl allowed.' },
      { name: 'Mode', type: 'string', jsonPath: '.spec.mode', description: 'Enforce, or Audit: would-be denials are recorded and allowed.' },
      { name: 'On Violation', type: 'string', jsonPath: '.spec.onViolation', description: 'Revoke or Deny.' },
      { name: 'Max Hops', type: 'integer', jsonPath: '.spec.limits.maxHops', description: 'Most hops a task may make.' },
      { name: 'Max Depth', type: 'integer', jsonPath: '.spec.limits.maxDepth', description: 'Deepest a chain may go.' },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since creation.' },
    ],
  },
  {
    kind: 'AgentApproval',
    plural: 'agentapprovals',
    singular: 'agentapproval',
    shortNames: ['aa'],
    description: 'A human decision (Approve or Reject) on one pending hop; the approver is stamped by admission.',
    spec: AgentApprovalSpec,
    printerColumns: [
      { name: 'Task', type: 'string', jsonPath: '.spec.taskRef.name', description: 'The task.' },
      { name: 'Hop', type: 'string', jsonPath: '.spec.hopId', description: 'The hop decided.' },
      { name: 'Decision', type: 'string', jsonPath: '.spec.decision', description: 'Approve or Reject.' },
      { name: 'Approver', type: 'string', jsonPath: '.spec.approver.username', description: 'Who decided.' },
      { name: 'Age', type: 'date', jsonPath: '.metadata.creationTimestamp', description: 'Time since creation.' },
    ],
  },
];

export type AgentTaskSpec = Static<typeof AgentTaskSpec>;
export type AgentTaskStatus = Static<typeof AgentTaskStatus>;
export type AgentPolicySpec = Static<typeof AgentPolicySpec>;
export type AgentPolicyStatus = Static<typeof AgentPolicyStatus>;
export type AgentApprovalSpec = Static<typeof AgentApprovalSpec>;
export type ObjectMeta = Static<typeof ObjectMeta>;
export type Condition = Static<typeof Condition>;
export type TaskState = (typeof TASK_STATES)[number];
export type PolicyRule = Static<typeof PolicyRule>;
export type AwsCredential = Static<typeof AwsCredential>;

interface Resource<Spec, Status> {
  apiVersion: typeof API_VERSION;
  kind: string;
  metadata: ObjectMeta;
  spec: Spec;
  status?: Status;
}

export type AgentTask = Resource<AgentTaskSpec, AgentTaskStatus> & { kind: 'AgentTask' };
export type AgentPolicy = Resource<AgentPolicySpec, AgentPolicyStatus> & { kind: 'AgentPolicy' };
export type AgentApproval = Resource<AgentApprovalSpec, never> & { kind: 'AgentApproval' };
