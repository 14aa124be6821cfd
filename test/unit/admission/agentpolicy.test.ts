import { describe, expect, it } from 'vitest';
import { agentPolicyPlugin, checkPolicy } from '../../../src/admission/plugins/agentpolicy.js';
import type { AdmissionRequest } from '../../../src/admission/review.js';
import { MAX_POLICY_GLOB_WORK, type AgentPolicy } from '../../../src/api/schema.js';
import { ChainwardenError } from '../../../src/errors.js';
import { examplePolicy } from '../../builders/examples.js';

/** The example policy with its tickets server's credential in Secret tickets-mcp. */
function withCredential(): AgentPolicy {
  const policy = examplePolicy('support');
  const tickets = policy.spec.systems?.find((s) => s.name === 'tickets');
  if (tickets) tickets.mcp = { url: 'https://tickets.internal/mcp', credentials: { secretRef: { name: 'tickets-mcp', key: 'token' } } };
  return policy;
}

const review = (operation: 'CREATE' | 'UPDATE', object: AgentPolicy, oldObject?: AgentPolicy): AdmissionRequest => ({
  uid: 'u',
  kind: { group: 'chainwarden.io', version: 'v1alpha1', kind: 'AgentPolicy' },
  resource: { group: 'chainwarden.io', version: 'v1alpha1', resource: 'agentpolicies' },
  operation,
  namespace: 'support',
  userInfo: { username: 'alice' },
  object,
  oldObject,
});

/** A namespace whose Secret tickets-mcp has been deleted since the policy was written. */
const secretGone = {
  value: () => Promise.reject(new ChainwardenError('mcp_credential_missing', 'Secret support/tickets-mcp does not exist')),
  mayRead: () => Promise.resolve(true),
};

describe('the AgentPolicy webhook', () => {
  it('lets a label or finalizer edit through when a Secret the policy names is gone, as the API server does without calling it', async () => {
    const before = withCredential();
    const after = withCredential();
    after.metadata.labels = { 'team.example.com/owner': 'payments' };
    after.metadata.finalizers = ['example.com/hold'];
    expect(await agentPolicyPlugin(secretGone).admit(review('UPDATE', after, before))).toMatchObject({ allowed: true });
  });

  it('still refuses a spec change, and a new policy, that names the missing Secret', async () => {
    const before = withCredential();
    const after = withCredential();
    after.spec.maxTaskTTL = '1h';
    for (const request of [review('UPDATE', after, before), review('CREATE', after)]) {
      const verdict = await agentPolicyPlugin(secretGone).admit(request);
      expect(verdict.allowed, request.operation).toBe(false);
      expect(JSON.stringify(verdict)).toContain('spec.systems[0].mcp.credentials.secretRef');
    }
  });

  it('refuses any spec change to a policy being deleted, which a tenant\'s finalizer keeps in force; its finalizers may still go', async () => {
    const unreadable = { value: () => Promise.resolve('s3cr3t'), mayRead: () => Promise.resolve(false) };
    const held = withCredential();
    held.metadata.finalizers = ['example.com/hold'];
    held.metadata.deletionTimestamp = '2026-01-01T00:00:00Z';
    // Edited while held: a notification receiver that would be sent a Secret the editor may not read.
    const edited = structuredClone(held);
    edited.spec.approval = { ...edited.spec.approval, notify: { url: 'https://hooks.attacker.example/', secretRef: { name: 'tickets-mcp', key: 'token' } } };
    const verdict = await agentPolicyPlugin(unreadable).admit(review('UPDATE', edited, held));
    expect(verdict.allowed).toBe(false);
    expect(JSON.stringify(verdict)).toMatch(/spec: AgentPolicy support-agent is being deleted and keeps its spec until it is gone/);
    const released = structuredClone(held);
    released.metadata.finalizers = [];
    expect(await agentPolicyPlugin(unreadable).admit(review('UPDATE', released, held))).toMatchObject({ allowed: true });
  });

  describe('an editor who may not read the Secret a policy names', () => {
    /** The Secret exists; the editor may not get it. */
    const unreadable = { value: () => Promise.resolve('s3cr3t'), mayRead: () => Promise.resolve(false) };
    const admit = (after: AgentPolicy, before: AgentPolicy) => agentPolicyPlugin(unreadable).admit(review('UPDATE', after, before));

    it('may change the rest of the policy, the credential still sent where it was', async () => {
      const after = withCredential();
      after.spec.maxTaskTTL = '1h';
      const verdict = await admit(after, withCredential());
      expect(verdict, JSON.stringify(verdict)).toMatchObject({ allowed: true });
    });

    it('may not send it to another server, under another header, to a notification receiver, or have the sidecar send the notification\'s', async () => {
      const elsewhere = withCredential();
      elsewhere.spec.systems![0]!.mcp!.url = 'https://collector.attacker.example/mcp';
      const header = withCredential();
      header.spec.systems![0]!.mcp!.credentials!.header = 'X-Forwarded-Token';
      const notify = withCredential();
      notify.spec.approval = { ...notify.spec.approval, notify: { url: 'https://hooks.attacker.example/', secretRef: { name: 'tickets-mcp', key: 'token' }, header: 'X-Leak' } };
      // The notification's credential, at the notification's own URL, but sent by the agent's sidecar, where the URL's name is the tenant's to resolve.
      const notified = withCredential();
      notified.spec.systems = [];
      notified.spec.approval = { ...notified.spec.approval, notify: { url: 'http://relay/hook', secretRef: { name: 'tickets-mcp', key: 'token' } } };
      const sidecar = structuredClone(notified);
      sidecar.spec.systems = [{ name: 'relay', mcp: { url: 'http://relay/hook', credentials: { secretRef: { name: 'tickets-mcp', key: 'token' } } } }];
      expect(await admit(structuredClone(notified), notified)).toMatchObject({ allowed: true });
      for (const [after, field, before] of [[elsewhere, 'spec.systems[0]', withCredential()], [header, 'spec.systems[0]', withCredential()], [notify, 'spec.approval.notify', withCredential()], [sidecar, 'spec.systems[0]', notified]] as const) {
        const verdict = await admit(after, before);
        expect(verdict.allowed).toBe(false);
        expect(JSON.stringify(verdict)).toContain(`${field}`);
        expect(JSON.stringify(verdict)).toMatch(/alice may not get Secret support\/tickets-mcp/);
      }
    });
  });

  it('warns of an MCP server the agent could call around the gateway: one without a credential', async () => {
    const plugin = agentPolicyPlugin({ value: () => Promise.resolve('x'), mayRead: () => Promise.resolve(true) });
    const policy = withCredential();
    policy.spec.systems = [
      { name: 'tickets', mcp: { url: 'https://tickets.internal/mcp', credentials: { secretRef: { name: 'tickets-mcp', key: 'token' } } } },
      { name: 'email', mcp: { url: 'http://email-mcp.support.svc:8080/mcp' } },
      { name: 'crm', dataClasses: ['pii'], mcp: { url: 'http://crm-mcp.support.svc:8080/mcp', credentials: { secretRef: { name: 'tickets-mcp', key: 'token' } } } },
      { name: 'warehouse' },
    ];
    const verdict = await plugin.admit(review('CREATE', policy));
    expect(verdict).toMatchObject({ allowed: true });
    const warnings = verdict.allowed ? (verdict.warnings ?? []) : [];
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatch(/^spec\.systems\[1\]\.mcp has no credentials: .* can call http:\/\/email-mcp\.support\.svc:8080\/mcp itself, undecided/);
  });

  it('warns of a notification credential sent over plain http, and not of one sent over https', async () => {
    const plugin = agentPolicyPlugin({ value: () => Promise.resolve('x'), mayRead: () => Promise.resolve(true) });
    const warned = async (url: string) => {
      const policy = withCredential();
      policy.spec.approval = { notify: { url, secretRef: { name: 'tickets-mcp', key: 'token' } } };
      const verdict = await plugin.admit(review('CREATE', policy));
      return verdict.allowed ? (verdict.warnings ?? []) : ['refused'];
    };
    expect(await warned('http://hooks.support.svc/chainwarden')).toEqual([expect.stringMatching(/^spec\.approval\.notify\.url is plain http and spec\.approval\.notify\.secretRef sends a credential/)]);
    expect(await warned('https://hooks.example.com/chainwarden')).toEqual([]);
  });

  it('warns of an approver service account of the policy\'s own namespace, and not of one from another', async () => {
    const policy = withCredential();
    policy.spec.approval = { approvers: { users: ['system:serviceaccount:ops:release-bot', 'system:serviceaccount:support:ci-bot'] } };
    const verdict = await agentPolicyPlugin({ value: () => Promise.resolve('t'), mayRead: () => Promise.resolve(true) }).admit(review('CREATE', policy));
    expect(verdict).toMatchObject({ allowed: true });
    const warnings = verdict.allowed ? (verdict.warnings ?? []) : [];
    expect(warnings.filter((w) => w.includes('approvers'))).toEqual([expect.stringMatching(/^spec\.approval\.approvers\.users\[1\] is a service account of namespace support, which any pod there can run as/)]);
  });

  it('refuses a notification receiver at a link-local address, naming the field', async () => {
    const plugin = agentPolicyPlugin({ value: () => Promise.resolve('x'), mayRead: () => Promise.resolve(true) });
    for (const url of ['http://169.254.169.254/latest/meta-data/iam/security-credentials/', 'http://[fd00:ec2::254]/', 'http://[fd00:ec2::23]/', 'http://100.100.100.200/']) {
      const policy = examplePolicy('support');
      policy.spec.approval = { notify: { url } };
      const verdict = await plugin.admit(review('CREATE', policy));
      expect(verdict.allowed, url).toBe(false);
      expect(JSON.stringify(verdict)).toMatch(/spec.approval.notify.url.*link-local address/);
    }
  });

  describe('what its globs may cost a decision', () => {
    // A glob of `work` characters after its star, which the matchers may re-read from every place in a resource where the star could stop.
    const crafted = (work: number) => `*${'a'.repeat(work - 1)}b`;
    const withResources = (...globs: string[]) => {
      const policy = examplePolicy('support');
      (policy.spec.systems ?? [])[0]!.resources = globs;
      return policy;
    };
    // Eight globs of 255 and one of 8: exactly the bound.
    const atTheBound = [...Array.from({ length: 8 }, () => crafted(255)), crafted(MAX_POLICY_GLOB_WORK - 8 * 255)];

    it('admits the example policy and globs that end in their star, however many, and refuses crafted ones past the bound, naming the costliest and the fix', () => {
      expect(checkPolicy(examplePolicy('support'))).toEqual([]);
      expect(checkPolicy(withResources(...Array.from({ length: 20 }, (_, i) => `arn:aws:s3:::${'b'.repeat(200)}-${i}/*`)))).toEqual([]);
      expect(checkPolicy(withResources(...atTheBound))).toEqual([]);
      expect(checkPolicy(withResources(...atTheBound, crafted(1)))).toEqual([
        {
          field: 'spec.systems[0].resources[0]',
          message: expect.stringMatching(/^the policy's patterns hold 2049 characters after a wildcard \(\*\), more than the 2048 a policy may: .* The costliest: spec\.systems\[0\]\.resources\[0\] \(255\), spec\.systems\[0\]\.resources\[1\] \(255\), spec\.systems\[0\]\.resources\[2\] \(255\)\. End patterns with their wildcard \(arn:aws:s3:::bucket\/\*\)/) as unknown,
        },
      ]);
    });

    it("counts rules' tools, actions and resources and raw Cedar's like patterns, where an escaped star is a literal", () => {
      const policy = examplePolicy('support');
      policy.spec.rules![0]!.resources = atTheBound.slice(0, 3);
      policy.spec.rules![1]!.actions = atTheBound.slice(3, 6);
      policy.spec.rules![2]!.tools = atTheBound.slice(6);
      expect(checkPolicy(policy)).toEqual([]);
      // One character after the star: the `a` (the escaped star before it is a literal, not a wildcard).
      policy.spec.cedar = 'permit (principal, action, resource) when { context.resource like "ticket/\\**a" };';
      expect(checkPolicy(policy)).toEqual([{ field: 'spec.rules[0].resources[0]', message: expect.stringContaining('hold 2049 characters after a wildcard') as unknown }]);
    });

    it('a policy built to stall decisions (100 systems × 20 crafted globs) is refused by the webhook', async () => {
      const policy = examplePolicy('support');
      policy.spec.systems = [...(policy.spec.systems ?? []), ...Array.from({ length: 90 }, (_, i) => ({ name: `s${i}`, resources: Array.from({ length: 20 }, () => crafted(255)) }))];
      const verdict = await agentPolicyPlugin().admit(review('CREATE', policy));
      expect(verdict.allowed).toBe(false);
      expect(JSON.stringify(verdict)).toMatch(/spec\.systems\[\d+\]\.resources\[0\].*hold 459000 characters after a wildcard/);
    });
  });
});
