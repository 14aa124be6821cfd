import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import https from 'node:https';
import { CoreV1Api, RbacAuthorizationV1Api, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpError, type CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { createLocalJWKSet, jwtVerify } from 'jose';
import type { AgentPolicy } from '../../../src/api/schema.js';
import type { EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { EMAIL_TOOLS, startDemoMcpServer, TICKET_TOOLS, type DemoMcpServer } from '../../../src/demo/mcp-servers.js';
import { exampleApproval, examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, getJson, podToken, startAgentProcess, type AgentProcess } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create, objectsApi, read, rejection } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';

const SECRET = 'tickets-mcp-s3cret';

/** Creates the object as kubectl would, returning the API server's Warning headers, which kubectl prints. */
async function createWithWarnings(kc: KubeConfig, object: AgentPolicy): Promise<{ status: number; warnings: string[] }> {
  const options: https.RequestOptions = { method: 'POST', headers: { 'content-type': 'application/json' } };
  await kc.applyToHTTPSOptions(options);
  const url = new URL(`/apis/chainwarden.io/v1alpha1/namespaces/${object.metadata.namespace ?? ''}/agentpolicies`, kc.getCurrentCluster()?.server);
  return new Promise((resolve, reject) => {
    const req = https.request(url, options, (res) => {
      res.resume();
      const warning = res.headersDistinct.warning ?? [];
      res.on('end', () => resolve({ status: res.statusCode ?? 0, warnings: warning }));
    });
    req.on('error', reject);
    req.end(JSON.stringify(object));
  });
}

/** The policy of the tests: tickets behind a credential and a resource template, email outside. */
function mcpPolicy(namespace: string, tickets: DemoMcpServer, email: DemoMcpServer): AgentPolicy {
  const policy = examplePolicy(namespace);
  policy.spec.onViolation = 'Deny';
  policy.spec.systems = [
    { name: 'tickets', trustBoundary: 'internal', dataClasses: ['pii'], mcp: { url: tickets.url, credentials: { secretRef: { name: 'tickets-mcp', key: 'token' }, header: 'Authorization', prefix: 'Bearer ' }, resource: 'ticket/{ticketId}' } },
    { name: 'email', trustBoundary: 'external', mcp: { url: email.url } },
  ];
  policy.spec.rules = [
    { name: 'read-and-comment', effect: 'Allow', tools: ['tickets'], actions: ['read', 'comment'], resources: ['ticket/*'] },
    { name: 'deletes-need-a-human', effect: 'RequireApproval', tools: ['tickets'], actions: ['delete'] },
    { name: 'reply-by-email', effect: 'Allow', tools: ['email'], actions: ['send'] },
    { name: 'no-exfiltration', effect: 'Deny', tools: ['email'], actions: ['send'], when: { afterDataClasses: ['pii'] } },
  ];
  policy.spec.approval = { ...policy.spec.approval, holdFor: '3s' };
  delete policy.spec.cedar;
  return policy;
}

async function mcpAgent(admin: KubeConfig, env: EnvironmentDescription, namespace: string) {
  const tickets = await startDemoMcpServer('tickets', { ...TICKET_TOOLS, export_all: { description: 'Export every ticket.', arguments: [], answer: () => 'everything' } }, { bearer: SECRET });
  const email = await startDemoMcpServer('email', EMAIL_TOOLS);
  await admin.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace, body: { metadata: { name: 'tickets-mcp' }, stringData: { token: SECRET } } });
  await create(admin, mcpPolicy(namespace, tickets, email));
  await createServiceAccount(admin, namespace, 'support-agent');
  await create(admin, exampleTask(namespace));
  const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
  await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
  const sidecar = await startAgentProcess(env, await podToken(admin, pod));
  return { tickets, email, sidecar };
}

/** The agent's MCP client, the official SDK's, pointed at the sidecar with the pod's local token. */
async function connect(sidecar: AgentProcess, system: string): Promise<Client> {
  const client = new Client({ name: 'support-agent', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(new URL(`${sidecar.url}/mcp/${system}`), { requestInit: { headers: await sidecar.headers() } }));
  return client;
}

const callError = (p: Promise<unknown>) => p.then(() => undefined, (err: unknown) => (err instanceof McpError ? { code: err.code, message: err.message, data: err.data as Record<string, unknown> | undefined } : { code: 0, message: String(err) }));

describe('every tool call is a hop: the MCP gateway', () => {
  test('allowed calls reach the server with the Secret\'s credential and a transaction token the agent never sees; denied and hidden tools never do', async ({ admin, env, namespace }) => {
    const { tickets, email, sidecar } = await mcpAgent(admin, env, namespace);
    const client = await connect(sidecar, 'tickets');
    const mail = await connect(sidecar, 'email');
    try {
      // tools/list shows what some rule could allow: export_all is hidden.
      expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['comment', 'delete', 'read']);

      const read = (await client.callTool({ name: 'read', arguments: { ticketId: '4711' } })) as CallToolResult;
      expect(read.content[0]).toMatchObject({ type: 'text', text: expect.stringContaining('ada@example.com') as string });
      const hopId = ((read._meta?.['chainwarden.io/hopId'] as string | undefined) ?? '');
      expect(hopId).toMatch(/^h1_/);

      // What the server got: the Secret's credential (not the agent's token) and a Txn-Token naming this hop.
      const seen = tickets.calls.at(-1);
      expect(seen).toMatchObject({ tool: 'read', arguments: { ticketId: '4711' } });
      expect(seen?.headers.authorization).toBe(`Bearer ${SECRET}`);
      const keys = (await brokerRequest(env, 'GET', '/keys')).body as Parameters<typeof createLocalJWKSet>[0];
      const token = String(seen?.headers['txn-token'] ?? '');
      const { payload } = await jwtVerify(token, createLocalJWKSet(keys), { audience: 'cluster.local', typ: 'txntoken+jwt' });
      expect(payload).toMatchObject({ scope: 'tickets:read', sub: `spiffe://cluster.local/ns/${namespace}/sa/support-agent/task/ticket-4711`, tctx: { task: 'ticket-4711', namespace, hopId, parentHop: null, depth: 1, dataClassesTouched: ['pii'] } });
      // The agent saw neither; the audit keeps the token's hash only.
      expect(JSON.stringify(read)).not.toContain(SECRET);
      expect(JSON.stringify(read)).not.toContain(token);
      await expect.poll(() => readFile(env.auditFile ?? '', 'utf8'), { timeout: 5_000 }).toContain(createHash('sha256').update(token).digest('hex'));
      expect(await readFile(env.auditFile ?? '', 'utf8')).not.toContain(token);
      expect(sidecar.stderr()).not.toContain(token);

      // A child hop names its parent in _meta.
      const comment = (await client.callTool({ name: 'comment', arguments: { ticketId: '4711', text: 'looking into it' }, _meta: { 'chainwarden.io/parentHop': hopId } })) as CallToolResult;
      expect(comment._meta?.['chainwarden.io/hopId']).toMatch(/^h2_/);

      // Hidden and called anyway: denied by default, never reaches the server.
      const before = tickets.calls.length;
      expect(await callError(client.callTool({ name: 'export_all', arguments: {} }))).toMatchObject({ code: -32001, message: expect.stringContaining('default-deny') as string, data: { hopId: expect.stringMatching(/^h\d+_/) as string } });
      // Email after reading PII: denied by the rule, across the two servers.
      expect(await callError(mail.callTool({ name: 'send', arguments: { to: 'ada@example.com', body: 'your data' } }))).toMatchObject({ code: -32001, message: expect.stringContaining('no-exfiltration') as string });
      expect(tickets.calls.length).toBe(before);
      expect(email.calls).toEqual([]);

      const task = await waitForTask(admin, namespace, 'ticket-4711', (t) => (t.status?.hops?.denied ?? 0) >= 2);
      expect(task.status?.chain?.systemsTouched).toEqual(expect.arrayContaining(['tickets']));
      expect(task.status?.hops).toMatchObject({ allowed: 2, denied: 2 });
    } finally {
      await client.close();
      await mail.close();
      await sidecar.stop();
      await tickets.close();
      await email.close();
    }
  });

  test('a call that needs approval is held, answers -32002 with its hop, and the identical call after an AgentApproval goes through once', async ({ admin, env, namespace }) => {
    const { tickets, email, sidecar } = await mcpAgent(admin, env, namespace);
    const client = await connect(sidecar, 'tickets');
    try {
      const started = Date.now();
      const progress: number[] = [];
      const held = await callError(client.callTool({ name: 'delete', arguments: { ticketId: '9' } }, undefined, { onprogress: (p) => progress.push(p.progress), timeout: 30_000 }));
      expect(held).toMatchObject({ code: -32002, data: { hopId: expect.stringMatching(/^h1_/) as string } });
      expect(Date.now() - started).toBeGreaterThanOrEqual(2_500);
      expect(progress.length).toBeGreaterThan(0);
      expect(tickets.calls.filter((c) => c.tool === 'delete')).toEqual([]);

      const approval = exampleApproval(namespace);
      approval.metadata.name = 'delete-9';
      approval.spec.hopId = String(held?.data?.hopId);
      await create(admin, approval);
      await waitForTask(admin, namespace, 'ticket-4711', (t) => !(t.status?.pendingHops ?? []).some((h) => h.hopId === approval.spec.hopId));
      const done = (await client.callTool({ name: 'delete', arguments: { ticketId: '9' } })) as CallToolResult;
      expect(done.content[0]).toMatchObject({ text: 'deleted 9' });
      expect(tickets.calls.filter((c) => c.tool === 'delete')).toHaveLength(1);
      // Once: the next identical call waits for a person again.
      expect(await callError(client.callTool({ name: 'delete', arguments: { ticketId: '9' } }))).toMatchObject({ code: -32002 });
      expect(tickets.calls.filter((c) => c.tool === 'delete')).toHaveLength(1);
    } finally {
      await client.close();
      await sidecar.stop();
      await tickets.close();
      await email.close();
    }
  });

  test('after the task ends nothing reaches the server, whatever the agent sends', async ({ admin, env, namespace }) => {
    const { tickets, email, sidecar } = await mcpAgent(admin, env, namespace);
    const client = await connect(sidecar, 'tickets');
    try {
      await client.callTool({ name: 'read', arguments: { ticketId: '1' } });
      const done = await getJson(`${sidecar.url}/v1/tasks/${namespace}/ticket-4711/complete`, { method: 'POST', headers: await sidecar.headers() });
      expect(done.status).toBe(200);
      const seen = tickets.requests.length;
      expect(await callError(client.callTool({ name: 'read', arguments: { ticketId: '2' } }))).toMatchObject({ code: -32001, message: expect.stringMatching(/AgentTask .*ticket-4711 .*nothing more/) as string, data: { code: 'task_not_active' } });
      expect(await callError(client.listTools())).toBeDefined();
      expect(tickets.requests.length).toBe(seen);
    } finally {
      await client.close().catch(() => undefined);
      await sidecar.stop();
      await tickets.close();
      await email.close();
    }
  });

  test('admission refuses an MCP system that could not work, naming the field', async ({ admin, namespace }) => {
    const tickets = { url: 'http://tickets.example:8080/mcp' } as DemoMcpServer;
    const base = () => mcpPolicy(namespace, tickets, tickets);
    const ftp = base();
    ftp.spec.systems![1]!.mcp!.url = 'ftp://mail.example/mcp';
    expect(await rejection(admin, ftp)).toMatch(/spec.systems\[1\].mcp.url.*http:\/\/ or https:\/\//);
    const header = base();
    header.spec.systems![0]!.mcp!.credentials!.header = 'Txn-Token';
    expect(await rejection(admin, header)).toMatch(/spec.systems\[0\].mcp.credentials.header.*must not be a header the gateway or the transport sets/);
    const template = base();
    template.spec.systems![0]!.mcp!.resource = 'ticket/all';
    expect(await rejection(admin, template)).toMatch(/spec.systems\[0\].mcp.resource.*must name at least one argument/);
    // The Secret does not exist yet: refused, naming the secretRef.
    expect(await rejection(admin, base())).toMatch(/spec.systems\[0\].mcp.credentials.secretRef.*tickets-mcp.*does not exist/);
    await admin.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace, body: { metadata: { name: 'tickets-mcp' }, stringData: { other: 'x' } } });
    await new Promise((r) => setTimeout(r, 3_100)); // the operator's memory of the missing Secret
    expect(await rejection(admin, base())).toMatch(/spec.systems\[0\].mcp.credentials.secretRef.*has no key token/);
    // Admitted, but the author is told: a server without a credential is one the agent can call itself.
    const open = base();
    delete open.spec.systems![0]!.mcp!.credentials;
    const { status, warnings } = await createWithWarnings(admin, open);
    expect(status).toBe(201);
    expect(warnings).toHaveLength(2);
    expect(warnings[1]).toMatch(/^299 - "spec\.systems\[1\]\.mcp has no credentials: the agent's container shares the pod's network with the sidecar and can call http:\/\/tickets\.example:8080\/mcp itself, undecided/);
  });

  test('a tenant who may write policies but not read a Secret cannot make the gateway send it to a server of theirs', async ({ admin, namespace, userKubeConfig }) => {
    await admin.makeApiClient(CoreV1Api).createNamespacedSecret({ namespace, body: { metadata: { name: 'tickets-mcp' }, stringData: { token: SECRET } } });
    const rbac = admin.makeApiClient(RbacAuthorizationV1Api);
    await rbac.createNamespacedRole({ namespace, body: { metadata: { name: 'policy-writer' }, rules: [{ apiGroups: ['chainwarden.io'], resources: ['agentpolicies'], verbs: ['create', 'update', 'get'] }] } });
    await rbac.createNamespacedRoleBinding({ namespace, body: { metadata: { name: 'policy-writer' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'policy-writer' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'careless@example.com' }] } });
    const careless = await userKubeConfig('careless@example.com');
    const exfiltrate = mcpPolicy(namespace, { url: 'http://collector.attacker.example/mcp' } as DemoMcpServer, { url: 'http://email.example/mcp' } as DemoMcpServer);
    expect(await rejection(careless, exfiltrate)).toMatch(/spec.systems\[0\].mcp.credentials.secretRef: careless@example.com may not get Secret .*tickets-mcp/);
    // Nor by editing a policy someone who may read it wrote: the rest of it may change, but the
    // credential goes nowhere new, neither to another server nor to a notification receiver.
    const original = mcpPolicy(namespace, { url: 'http://tickets.example:8080/mcp' } as DemoMcpServer, { url: 'http://email.example/mcp' } as DemoMcpServer);
    original.metadata.name = 'written-by-a-reader';
    const written = await create(admin, original);
    const edited = (change: (p: AgentPolicy) => void) => {
      const p = structuredClone(written);
      change(p);
      return p;
    };
    await objectsApi(careless).replace(edited((p) => void (p.spec.maxTaskTTL = '1h')) as unknown as KubernetesObject);
    const current = async () => (await read(admin, written)).metadata.resourceVersion;
    const moved = edited((p) => void (p.spec.systems![0]!.mcp!.url = 'http://collector.attacker.example/mcp'));
    moved.metadata.resourceVersion = await current();
    expect(await rejection(careless, moved, 'replace')).toMatch(/spec.systems\[0\].mcp.credentials.secretRef: careless@example.com may not get Secret .*tickets-mcp/);
    const notify = edited((p) => void (p.spec.approval = { ...p.spec.approval, notify: { url: 'https://hooks.attacker.example/', secretRef: { name: 'tickets-mcp', key: 'token' }, header: 'X-Leak' } }));
    notify.metadata.resourceVersion = await current();
    expect(await rejection(careless, notify, 'replace')).toMatch(/spec.approval.notify.secretRef: careless@example.com may not get Secret .*tickets-mcp/);
    // Someone who may read it may name it.
    await rbac.createNamespacedRole({ namespace, body: { metadata: { name: 'secret-reader' }, rules: [{ apiGroups: [''], resources: ['secrets'], resourceNames: ['tickets-mcp'], verbs: ['get'] }] } });
    await rbac.createNamespacedRoleBinding({ namespace, body: { metadata: { name: 'secret-reader' }, roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name: 'secret-reader' }, subjects: [{ apiGroup: 'rbac.authorization.k8s.io', kind: 'User', name: 'careless@example.com' }] } });
    await expect.poll(async () => rejection(careless, exfiltrate).catch(() => 'accepted'), { timeout: 10_000 }).toBe('accepted');
  });
});
