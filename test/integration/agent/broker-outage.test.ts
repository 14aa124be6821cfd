import net from 'node:net';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { startDemoMcpServer, TICKET_TOOLS } from '../../../src/demo/mcp-servers.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { createAgentPod, createServiceAccount, getJson, podToken, startAgentProcess } from '../../env/agents.js';
import { createRole } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';

/** A TCP hop in front of the broker that the test can cut (every connection dropped, new ones refused) and restore. */
async function cuttableProxy(target: URL) {
  const sockets = new Set<net.Socket>();
  let cut = false;
  const server = net.createServer((client) => {
    if (cut) return void client.destroy();
    const upstream = net.connect(Number(target.port), target.hostname);
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      s.on('error', () => undefined);
    }
    client.pipe(upstream).pipe(client);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `https://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    cut: () => {
      cut = true;
      for (const s of sockets) s.destroy();
    },
    restore: () => void (cut = false),
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('the broker is unreachable from the sidecar', () => {
  test('every new hop, AWS signature and tool call fails closed with nothing forwarded; Direct credentials already held keep working; all resume when the broker returns', async ({ admin, env, namespace }) => {
    const tickets = await startDemoMcpServer('tickets', TICKET_TOOLS);
    const proxy = await cuttableProxy(new URL(env.brokerUrl ?? ''));
    const roleArn = await createRole(env, `support-agent-${namespace}`);
    const policy: AgentPolicy = examplePolicy(namespace);
    policy.spec.onViolation = 'Deny';
    policy.spec.aws = { allowedRoleArns: ['arn:aws:iam::123456789012:role/support-*'], maxDuration: '1h', allowDirect: true };
    policy.spec.systems = [...(policy.spec.systems ?? []).filter((s) => s.name !== 'tickets'), { name: 'tickets', dataClasses: ['pii'], mcp: { url: tickets.url, resource: 'ticket/{ticketId}' } }];
    await create(admin, policy);
    await createServiceAccount(admin, namespace, 'support-agent');
    const task = exampleTask(namespace);
    task.spec.credentials = [
      { name: 'default', aws: { roleArn, duration: '15m' } },
      { name: 'direct', aws: { roleArn, duration: '15m', delivery: 'Direct' } },
    ];
    await create(admin, task);
    const pod = await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
    await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
    const sidecar = await startAgentProcess({ ...env, brokerUrl: proxy.url }, await podToken(admin, pod), { args: ['--listen', '127.0.0.1:0', '--aws-listen', '127.0.0.1:0'] });
    const client = new Client({ name: 'agent', version: '1' });
    try {
      const headers = await sidecar.headers();
      // Before: the AWS SDK's placeholder keys and the Direct session, as the pod's SDKs would fetch them.
      const placeholder = (await getJson(`${sidecar.url}/v1/credentials`, { headers })).body as Record<string, string>;
      const direct = (await getJson(`${sidecar.url}/v1/credentials/direct`, { headers })).body as Record<string, string>;
      const viaGateway = new STSClient({ region: 'us-east-1', endpoint: sidecar.awsUrl, maxAttempts: 1, credentials: { accessKeyId: placeholder.AccessKeyId ?? '', secretAccessKey: placeholder.SecretAccessKey ?? '', sessionToken: placeholder.Token } });
      const straight = new STSClient({ region: 'us-east-1', endpoint: env.stsEndpoint, maxAttempts: 1, credentials: { accessKeyId: direct.AccessKeyId ?? '', secretAccessKey: direct.SecretAccessKey ?? '', sessionToken: direct.Token } });
      await expect(viaGateway.send(new GetCallerIdentityCommand({}))).resolves.toMatchObject({ Arn: expect.stringContaining('assumed-role') as string });
      await client.connect(new StreamableHTTPClientTransport(new URL(`${sidecar.url}/mcp/tickets`), { requestInit: { headers: { authorization: `Bearer ${headers.authorization ?? ''}` } } }));
      await client.callTool({ name: 'read', arguments: { ticketId: '1' } });
      const served = tickets.calls.length;

      proxy.cut();
      const hop = await getJson(`${sidecar.url}/v1/hops`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ tool: 'tickets', action: 'read', resource: 'ticket/2' }) });
      expect(hop).toMatchObject({ status: 502, body: { error: { code: 'broker_unreachable' } } });
      await expect(viaGateway.send(new GetCallerIdentityCommand({}))).rejects.toMatchObject({ name: 'ServiceUnavailable', message: expect.stringContaining('broker') as string });
      const toolError = await client.callTool({ name: 'read', arguments: { ticketId: '2' } }).then(() => undefined, (err: unknown) => err);
      expect(toolError).toBeInstanceOf(Error);
      expect((toolError as Error).message).toMatch(/chainwarden broker/);
      expect(tickets.calls.length).toBe(served);
      // What the SDK already holds under Direct delivery is a real session, good until it expires.
      await expect(straight.send(new GetCallerIdentityCommand({}))).resolves.toMatchObject({ Arn: expect.stringContaining('assumed-role') as string });

      proxy.restore();
      await expect.poll(async () => (await getJson(`${sidecar.url}/v1/hops`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ tool: 'tickets', action: 'read', resource: 'ticket/3' }) })).status, { timeout: 10_000 }).toBe(200);
      await expect(viaGateway.send(new GetCallerIdentityCommand({}))).resolves.toMatchObject({ Arn: expect.stringContaining('assumed-role') as string });
      await client.callTool({ name: 'read', arguments: { ticketId: '4' } });
      expect(tickets.calls.length).toBe(served + 1);
      viaGateway.destroy();
      straight.destroy();
    } finally {
      await client.close().catch(() => undefined);
      await sidecar.stop();
      await proxy.close();
      await tickets.close();
    }
  });
});
