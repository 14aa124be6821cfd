import { spawn } from 'node:child_process';
import { mkdtemp, readFile, stat, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { podToken, startAgentProcess, type AgentProcess } from '../../env/agents.js';
import { describe, expect, test } from '../../env/fixtures.js';
import { boundExampleAgent } from '../../env/hops.js';

/** A raw request to the sidecar, so the test controls Host and Origin as an attacker would. */
function call(agent: AgentProcess, p: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; body: { error?: { code: string; message: string } } & Record<string, unknown> }> {
  const url = new URL(p, agent.url);
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, setHost: headers.host === undefined }, (res) => {
      let text = '';
      res.on('data', (c: Buffer) => (text += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, never> }));
    });
    req.on('error', reject);
    req.end();
  });
}

const SVID = '/v1/svid?audience=tickets';

describe('the chainwarden agent serves only its own agent', () => {
  test('a caller without the pod\'s secret gets 401, never a request made with the pod token', async ({ admin, env, namespace }) => {
    const { pod } = await boundExampleAgent(admin, env, namespace);
    // Pod-token mode: callers must present the projected token itself.
    const agent = await startAgentProcess(env, await podToken(admin, pod), { localToken: false });
    try {
      const anonymous = await call(agent, SVID);
      expect(anonymous).toMatchObject({ status: 401, body: { error: { code: 'unauthenticated' } } });
      expect((await call(agent, SVID, { authorization: 'Bearer not-the-token' })).status).toBe(401);
      expect((await call(agent, '/v1/no-such-endpoint')).status).toBe(401);
      expect((await call(agent, SVID, await agent.headers())).status).toBe(200);
      expect((await call(agent, SVID, { authorization: `Bearer ${(await agent.headers()).authorization ?? ''}` })).status).toBe(200);
    } finally {
      await agent.stop();
    }
  });

  test('with --local-token-file the sidecar creates a per-pod secret, and only it is accepted', async ({ admin, env, namespace }) => {
    const { pod, token } = await boundExampleAgent(admin, env, namespace);
    const localTokenFile = path.join(await mkdtemp(path.join(os.tmpdir(), 'local-')), 'token');
    const agent = await startAgentProcess(env, await podToken(admin, pod), { localTokenFile });
    let restarted: AgentProcess | undefined;
    try {
      const secret = (await readFile(localTokenFile, 'utf8')).trim();
      expect(secret).toMatch(/^[A-Za-z0-9_-]{43}$/);
      expect((await stat(localTokenFile)).mode & 0o777).toBe(0o444);
      // As the AWS SDK sends it (verbatim) and as an MCP client would (Bearer).
      expect((await call(agent, SVID, { authorization: secret })).status).toBe(200);
      expect((await call(agent, SVID, { authorization: `Bearer ${secret}` })).status).toBe(200);
      // The pod token is the sidecar's alone: in a pod, app containers never see it.
      expect((await call(agent, SVID, { authorization: `Bearer ${token}` })).body).toMatchObject({ error: { code: 'unauthenticated' } });
      expect((await call(agent, SVID)).status).toBe(401);

      // A restarted sidecar keeps the secret the app containers already hold.
      await agent.stop();
      restarted = await startAgentProcess(env, await podToken(admin, pod), { localTokenFile });
      expect((await readFile(localTokenFile, 'utf8')).trim()).toBe(secret);
      expect((await call(restarted, SVID, { authorization: secret })).status).toBe(200);
    } finally {
      await agent.stop();
      await restarted?.stop();
    }
  });

  test('a foreign Host (DNS rebinding) or Origin (a web page, a fetch tool) is refused even with the right token', async ({ admin, env, namespace }) => {
    const { pod } = await boundExampleAgent(admin, env, namespace);
    const agent = await startAgentProcess(env, await podToken(admin, pod), { localToken: false });
    try {
      const port = new URL(agent.url).port;
      const auth = await agent.headers();
      const rebound = await call(agent, SVID, { ...auth, host: `attacker.example:${port}` });
      expect(rebound).toMatchObject({ status: 403, body: { error: { code: 'forbidden_host' } } });
      expect(rebound.body.error?.message).toMatch(/DNS rebinding/);
      expect((await call(agent, SVID, { ...auth, host: '10.0.0.7:15080' })).status).toBe(403);
      const page = await call(agent, SVID, { ...auth, origin: 'https://attacker.example' });
      expect(page).toMatchObject({ status: 403, body: { error: { code: 'forbidden_origin' } } });
      expect((await call(agent, SVID, { ...auth, origin: 'null' })).status).toBe(403);
      // Checked before the token: a foreign page learns nothing from the answer.
      expect((await call(agent, SVID, { host: `attacker.example:${port}` })).body.error?.code).toBe('forbidden_host');
      // The loopback names of the listener itself are fine.
      expect((await call(agent, SVID, { ...auth, host: `localhost:${port}`, origin: `http://127.0.0.1:${port}` })).status).toBe(200);
    } finally {
      await agent.stop();
    }
  });

  test('a token the kubelet just rotated works at once, from the caller and towards the broker', async ({ admin, env, namespace }) => {
    const { pod } = await boundExampleAgent(admin, env, namespace);
    const first = await podToken(admin, pod);
    const podMode = await startAgentProcess(env, first, { localToken: false });
    let localMode: AgentProcess | undefined;
    try {
      expect((await call(podMode, SVID, { authorization: first })).status).toBe(200);
      const rotated = await podToken(admin, pod);
      expect(rotated).not.toBe(first);
      await writeFile(podMode.tokenFile, rotated);
      // The SDK reads the rotated file and presents it; no waiting for a cache to expire.
      expect((await call(podMode, SVID, { authorization: rotated })).status).toBe(200);

      // The local-token sidecar starts with a token the broker refuses, as after a long outage.
      localMode = await startAgentProcess(env, 'expired.token.value');
      expect((await call(localMode, SVID, await localMode.headers())).status).toBe(401);
      await writeFile(localMode.tokenFile, rotated);
      expect((await call(localMode, SVID, await localMode.headers())).status).toBe(200);
    } finally {
      await podMode.stop();
      await localMode?.stop();
    }
  });

  test('/healthz answers anyone on loopback and says nothing', async ({ admin, env, namespace }) => {
    const { pod } = await boundExampleAgent(admin, env, namespace);
    const agent = await startAgentProcess(env, await podToken(admin, pod));
    try {
      expect(await call(agent, '/healthz')).toEqual({ status: 200, body: { status: 'ok' } });
    } finally {
      await agent.stop();
    }
  });

  test('refuses to listen anywhere but loopback', async ({ env }) => {
    const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');
    const child = spawn(process.execPath, [bin, 'agent', '--broker', env.brokerUrl ?? '', '--token-file', '/dev/null', '--listen', '0.0.0.0:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGTERM');
        resolve(null);
      }, 10_000);
      child.once('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    expect(code).toBe(1);
    expect(stderr).toMatch(/listens on loopback only/);
  });
});
