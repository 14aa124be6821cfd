import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { CreateBucketCommand, HeadObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { CoreV1Api, type KubeConfig } from '@kubernetes/client-node';
import type { AgentPolicy } from '../../../src/api/schema.js';
import { localAws, type EnvironmentDescription } from '../../../src/controlplane/environment.js';
import { examplePolicy, exampleTask } from '../../builders/examples.js';
import { brokerRequest, createAgentPod, createServiceAccount, getJson, podToken, startAgentProcess, type AgentProcess } from '../../env/agents.js';
import { boundExampleAgent } from '../../env/hops.js';
import { createRole } from '../../env/aws.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { create } from '../../env/kube.js';
import { waitForTask } from '../operator/helpers.js';

/**
 * What the agent was allowed before its task ended must stop with it: an event stream from an
 * MCP server, an upload still sending its body. The broker refuses every new request at once;
 * these check the sidecar ends what it already has open, within the long poll's reaction time.
 */

/** An MCP server whose GET event stream never ends: an event every 100 ms, and when the stream was closed on it. */
async function endlessStream() {
  const state = { sent: 0, closedAt: undefined as number | undefined };
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET') return void res.writeHead(405).end();
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const tick = setInterval(() => res.write(`event: message\ndata: ${JSON.stringify({ jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: ++state.sent } })}\n\n`), 100);
    res.on('close', () => {
      clearInterval(tick);
      state.closedAt = Date.now();
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp`,
    state,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

async function boundSidecar(admin: KubeConfig, env: EnvironmentDescription, namespace: string, policy: AgentPolicy, roleArn?: string): Promise<AgentProcess> {
  await create(admin, policy);
  await createServiceAccount(admin, namespace, 'support-agent');
  const task = exampleTask(namespace);
  if (roleArn) task.spec.credentials = [{ name: 'default', aws: { roleArn, duration: '15m' } }];
  await create(admin, task);
  await createAgentPod(admin, namespace, { name: 'agent-0', task: 'ticket-4711', serviceAccount: 'support-agent' });
  await waitForTask(admin, namespace, 'ticket-4711', (t) => t.status?.state === 'Bound');
  const pod = await admin.makeApiClient(CoreV1Api).readNamespacedPod({ name: 'agent-0', namespace });
  return startAgentProcess(env, await podToken(admin, pod), { args: ['--listen', '127.0.0.1:0', '--aws-listen', '127.0.0.1:0'] });
}

/** The agent reports its chain complete, through its sidecar: the task ends. */
async function complete(sidecar: AgentProcess, namespace: string): Promise<number> {
  const done = await getJson(`${sidecar.url}/v1/tasks/${namespace}/ticket-4711/complete`, { method: 'POST', headers: await sidecar.headers() });
  expect(done.status).toBe(200);
  return Date.now();
}

describe('what the task allowed ends with the task', () => {
  test('an MCP event stream open through the sidecar stops within seconds of the task completing, on both sides', async ({ admin, env, namespace }) => {
    const feed = await endlessStream();
    const policy = examplePolicy(namespace);
    policy.spec.systems = [...(policy.spec.systems ?? []), { name: 'feed', trustBoundary: 'internal', mcp: { url: feed.url } }];
    const sidecar = await boundSidecar(admin, env, namespace, policy);
    try {
      const res = await fetch(`${sidecar.url}/mcp/feed`, { headers: { ...(await sidecar.headers()), accept: 'text/event-stream' } });
      expect(res.status).toBe(200);
      const reader = (res.body as ReadableStream<Uint8Array>).getReader();
      let received = 0;
      let endedAt: number | undefined;
      const reading = (async () => {
        try {
          for (;;) {
            const { done, value } = await reader.read();
            if (done) break;
            received += Buffer.from(value).toString().split('event: message').length - 1;
          }
        } catch {
          // A stream cut off rather than ended: the same to the agent, which gets nothing more.
        }
        endedAt = Date.now();
      })();
      // Open past the moment the sidecar starts watching (1 s), with events flowing.
      await expect.poll(() => received, { timeout: 5_000 }).toBeGreaterThanOrEqual(15);
      const completedAt = await complete(sidecar, namespace);
      await reading;
      const afterEnd = received;
      // Ended by the broker's answer to the long poll, not by the server: it was still sending.
      expect((endedAt ?? Infinity) - completedAt).toBeLessThan(3_000);
      expect((feed.state.closedAt ?? Infinity) - completedAt).toBeLessThan(3_000);
      // Nothing reaches the agent afterwards, and a new stream is refused.
      await new Promise((r) => setTimeout(r, 500));
      expect(received).toBe(afterEnd);
      const again = await fetch(`${sidecar.url}/mcp/feed`, { headers: { ...(await sidecar.headers()), accept: 'text/event-stream' } });
      expect(await again.json()).toMatchObject({ error: { data: { code: 'task_not_active' } } });
      expect(sidecar.stderr()).toContain('open exchanges are closed');
    } finally {
      await sidecar.stop();
      await feed.close();
    }
  });

  test('an S3 upload whose body is still coming when the task completes is cut off: the SDK fails and S3 never stores the object', async ({ admin, env, namespace }) => {
    const bucket = `streams-${namespace}`;
    const roleArn = await createRole(env, `support-agent-${namespace}`);
    const policy = examplePolicy(namespace);
    policy.spec.aws = { allowedRoleArns: ['arn:aws:iam::123456789012:role/support-*'], maxDuration: '1h' };
    policy.spec.rules = [...(policy.spec.rules ?? []), { name: 'agent-bucket', effect: 'Allow', tools: ['aws:s3'], actions: ['s3:CreateBucket', 's3:PutObject'], resources: [`arn:aws:s3:::${bucket}`, `arn:aws:s3:::${bucket}/*`] }];
    const sidecar = await boundSidecar(admin, env, namespace, policy, roleArn);
    try {
      // The agent's SDK, holding what the sidecar gives it: placeholder credentials, worthless at AWS.
      const held = (await getJson(`${sidecar.url}/v1/credentials`, { headers: await sidecar.headers() })).body as Record<string, string>;
      const s3 = new S3Client({ region: 'us-east-1', endpoint: sidecar.awsUrl, forcePathStyle: true, credentials: { accessKeyId: held.AccessKeyId ?? '', secretAccessKey: held.SecretAccessKey ?? '', sessionToken: held.Token ?? '' } });
      await s3.send(new CreateBucketCommand({ Bucket: bucket }));

      // 256 KiB now, the rest of the 4 MiB never: the upload is in flight when the task ends.
      let pulled = 0;
      const body = new Readable({
        read() {
          if (pulled++ === 0) this.push(Buffer.alloc(256 * 1024, 97));
        },
      });
      const started = Date.now();
      const upload = s3.send(new PutObjectCommand({ Bucket: bucket, Key: 'report.csv', Body: body, ContentLength: 4 * 1024 * 1024 })).then(
        () => ({ ok: true as const }),
        (err: { name?: string; message?: string }) => ({ ok: false as const, name: err.name, message: err.message, at: Date.now() }),
      );
      await new Promise((r) => setTimeout(r, 1_500));
      const completedAt = await complete(sidecar, namespace);
      const outcome = await upload;
      expect(outcome.ok).toBe(false);
      expect((outcome.ok ? Infinity : outcome.at) - completedAt).toBeLessThan(3_000);
      expect(completedAt - started).toBeGreaterThan(1_000);

      // S3 itself (the emulator, asked directly) never completed the object.
      const aws = localAws(env);
      const direct = new S3Client({ region: aws.region, endpoint: aws.gatewayEndpoint, forcePathStyle: true, credentials: aws.credentials });
      const head = await direct.send(new HeadObjectCommand({ Bucket: bucket, Key: 'report.csv' })).then(
        () => 'stored',
        (err: { name?: string }) => err.name,
      );
      expect(head).toBe('NotFound');
      expect(sidecar.stderr()).toContain('open exchanges are closed');
    } finally {
      await sidecar.stop();
    }
  });

  test('GET /v1/task, attacked from outside: a pod holds at most two, bad waits are 400s naming the field, strangers get 401, and the held ones are answered the moment the task ends', async ({ admin, env, namespace }) => {
    const { token } = await boundExampleAgent(admin, env, namespace);
    expect(await brokerRequest(env, 'GET', '/v1/task?waitSeconds=0', { token })).toMatchObject({ status: 200, body: { namespace, name: 'ticket-4711', state: 'Bound' } });
    for (const wait of ['21', '-1', 'x', '1e1']) {
      expect(await brokerRequest(env, 'GET', `/v1/task?waitSeconds=${wait}`, { token })).toMatchObject({ status: 400, body: { error: { code: 'invalid_request', field: 'waitSeconds' } } });
    }
    expect((await brokerRequest(env, 'GET', '/v1/task?waitSeconds=20')).status).toBe(401);
    expect((await brokerRequest(env, 'GET', '/v1/task?waitSeconds=20', { token: `${token}x` })).status).toBe(401);
    const held = [brokerRequest(env, 'GET', '/v1/task?waitSeconds=20', { token }), brokerRequest(env, 'GET', '/v1/task?waitSeconds=20', { token })];
    await new Promise((r) => setTimeout(r, 300));
    // A third from the same pod is refused at once: long polls cost the pod its connections, never the broker its memory.
    expect(await brokerRequest(env, 'GET', '/v1/task?waitSeconds=20', { token })).toMatchObject({ status: 429, body: { error: { code: 'too_many_watches' } } });
    const completedAt = Date.now();
    expect((await brokerRequest(env, 'POST', `/v1/tasks/${namespace}/ticket-4711/complete`, { token })).status).toBe(200);
    for (const answer of await Promise.all(held)) expect(answer).toMatchObject({ status: 403, body: { error: { code: 'task_not_active' } } });
    expect(Date.now() - completedAt).toBeLessThan(5_000);
  });
});
