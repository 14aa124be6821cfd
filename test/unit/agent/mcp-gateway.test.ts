import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { CallToolResultSchema, ListToolsResultSchema, McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startAgentProxy, type RunningAgent } from '../../../src/agent/proxy.js';
import { createLogger } from '../../../src/log.js';
import { META_HOP_ID, META_PARENT_HOP, type McpForwardRequest } from '../../../src/mcp/forward-api.js';
import { startBrokenUpstream, startForwardTwin, startMcpUpstream, txnTokenOf, UPSTREAM_CREDENTIAL, type ForwardDecision } from '../../builders/mcp-twins.js';

/**
 * The sidecar's MCP gateway between two unmodified ends: the MCP SDK's client as the agent would
 * use it (pointed at `/mcp/<system>` with the local token) and MCP SDK servers as a system's
 * authors would write them, with the broker's two calls answered by a scripted twin.
 */

const POD_TOKEN = 'pod-token-of-agent-0';
const ANSWER_TIMEOUT_MS = 1_500;
const MAX_HELD = 3;
/** How much of the servers' answers the sidecar holds at once to check them: small here, so that a few answers reach it. */
const MAX_HELD_BYTES = 1024 * 1024;
const PARENT = 'h1_PPPPPPPPPPPP_PPPPPPPPPPPPPPPP';
/** An argument value that must never be logged. */
const PRIVATE_ARGUMENT = 'customer-4711-private-address';

let twin: Awaited<ReturnType<typeof startForwardTwin>>;
let streaming: Awaited<ReturnType<typeof startMcpUpstream>>;
let json: Awaited<ReturnType<typeof startMcpUpstream>>;
let sidecar: RunningAgent;
let localToken: string;
const logLines: string[] = [];
const clients: Client[] = [];

beforeAll(async () => {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'mcp-gateway-'));
  await writeFile(path.join(dir, 'pod-token'), POD_TOKEN);
  twin = await startForwardTwin({ podToken: POD_TOKEN });
  streaming = await startMcpUpstream();
  json = await startMcpUpstream({ json: true });
  twin.systems.set('tickets', streaming.url).set('tickets-json', json.url);
  const log = createLogger({ level: 'debug', name: 'agent' }, { write: (line: string) => void logLines.push(line) });
  sidecar = await startAgentProxy({
    brokerUrl: twin.url,
    caPem: twin.caPem,
    tokenFile: path.join(dir, 'pod-token'),
    localTokenFile: path.join(dir, 'local-token'),
    listen: { host: '127.0.0.1', port: 0 },
    mcp: { answerTimeoutMs: ANSWER_TIMEOUT_MS, pollMs: 50, progressMs: 150, maxHeld: MAX_HELD, maxHeldBytes: MAX_HELD_BYTES },
    log,
  });
  localToken = (await readFile(path.join(dir, 'local-token'), 'utf8')).trim();
}, 60_000);

afterEach(async () => {
  twin.decide = (request) => twin.allow(request);
  twin.hopStatus = (hopId) => ({ status: 404, body: { error: { code: 'hop_not_found', message: `hop ${hopId} is not a hop of this task` } } });
  await Promise.all(clients.splice(0).map((c) => c.close()));
});

afterAll(async () => {
  await sidecar?.close();
  await Promise.all([twin?.close(), streaming?.close(), json?.close()]);
});

/** What the agent's client received over HTTP, to show what it never saw. */
const received: { headers: Record<string, string>; body: Promise<string> }[] = [];

/** The agent's MCP client, as its author configures it: the sidecar's URL and the local token. */
async function connect(system = 'tickets'): Promise<Client> {
  const client = new Client({ name: 'support-agent', version: '1.0.0' });
  const transport = new StreamableHTTPClientTransport(new URL(`${sidecar.url}/mcp/${system}`), {
    requestInit: { headers: { Authorization: `Bearer ${localToken}` } },
    fetch: async (url, init) => {
      const response = await fetch(url, init);
      if (init?.method === 'POST') received.push({ headers: Object.fromEntries(response.headers), body: response.clone().text().catch(() => '') });
      return response;
    },
  });
  await client.connect(transport);
  clients.push(client);
  return client;
}

/** The McpError a call ends with. */
async function rpcError(promise: Promise<unknown>): Promise<McpError> {
  try {
    await promise;
  } catch (err) {
    if (err instanceof McpError) return err;
    throw err;
  }
  throw new Error('the call went through');
}

/** A raw request to the sidecar, path sent verbatim (fetch would resolve `..`). */
function raw(options: { method?: string; path: string; headers?: Record<string, string>; body?: string | Buffer }): Promise<{ status: number; headers: http.IncomingHttpHeaders; text: string; body: { id?: unknown; error?: { code: number; message: string; data?: Record<string, unknown> } } }> {
  const url = new URL(sidecar.url);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: url.hostname, port: url.port, method: options.method ?? 'POST', path: options.path, headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let body = {};
        try {
          body = JSON.parse(text) as object;
        } catch {
          // Not JSON: the test reads `text`.
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, body });
      });
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

const auth = () => ({ authorization: `Bearer ${localToken}` });
const rpc = (message: object) => JSON.stringify({ jsonrpc: '2.0', ...message });
const callMessage = (name: string, args: object, id: number | string = 1) => rpc({ id, method: 'tools/call', params: { name, arguments: args } });

const deny = (hopId: string, rule: string): ForwardDecision => ({
  status: 403,
  body: { error: { code: 'hop_denied', message: `hop ${hopId} (email send) denied by rule ${rule}` }, hopId, decision: 'deny', reasons: [{ rule, effect: 'Deny' }] },
});
const pending = (hopId: string, holdForSeconds: number): ForwardDecision => ({
  status: 403,
  body: { error: { code: 'approval_pending', message: `hop ${hopId} waits for approval by rule refunds-need-a-human` }, hopId, decision: 'pending_approval', reasons: [{ rule: 'refunds-need-a-human', effect: 'RequireApproval' }], holdForSeconds },
});

describe.each([
  ['an event-stream server', 'tickets', () => streaming],
  ['a JSON-answering server (enableJsonResponse)', 'tickets-json', () => json],
])('through the gateway to %s', (_name, system, upstream) => {
  it('an allowed call reaches the server with the system credential and a Txn-Token, which the agent never sees; its result names its hop', async () => {
    const client = await connect(system);
    const before = { seen: upstream().seen.length, calls: upstream().calls.length, forwards: twin.forwards.length, received: received.length };
    const result = await client.callTool({ name: 'get_ticket', arguments: { ticketId: PRIVATE_ARGUMENT }, _meta: { [META_PARENT_HOP]: PARENT } });

    expect(result.content).toEqual([{ type: 'text', text: `ticket ${PRIVATE_ARGUMENT}: the printer is on fire` }]);
    const hopId = result._meta?.[META_HOP_ID];
    expect(hopId).toMatch(/^h1_/);
    // The broker was asked about exactly this call, with its parent.
    expect(twin.forwards.slice(before.forwards).filter((f) => f.method === 'tools/call')).toEqual([{ system, method: 'tools/call', call: { name: 'get_ticket', arguments: { ticketId: PRIVATE_ARGUMENT }, parentHop: PARENT } }]);
    // The server got the credential and the hop's Txn-Token, never the agent's local token.
    const call = upstream().seen.slice(before.seen).find((s) => s.rpcMethod === 'tools/call');
    expect(call?.headers.authorization).toBe(UPSTREAM_CREDENTIAL);
    expect(call?.headers['txn-token']).toBe(txnTokenOf(String(hopId)));
    expect(JSON.stringify(upstream().seen)).not.toContain(localToken);
    expect(upstream().calls.slice(before.calls)).toEqual([{ tool: 'get_ticket', args: { ticketId: PRIVATE_ARGUMENT } }]);
    // The agent's client saw neither, in headers or bodies.
    const seenByAgent = await Promise.all(received.slice(before.received).map(async (r) => JSON.stringify(r.headers) + (await r.body)));
    expect(seenByAgent.join('\n')).not.toMatch(/upstream-secret|txn-for-|txn-token/);
  });

  it('for a system without a credential, nothing stands in the Authorization header: the agent\'s local token stays in the pod', async () => {
    twin.decide = (request) => {
      const allowed = twin.allow(request);
      const body = allowed.body as { headers: Record<string, string> };
      const { authorization: _credential, ...headers } = body.headers;
      return { status: 200, body: { ...body, headers } };
    };
    const before = upstream().seen.length;
    const client = await connect(system);
    await client.callTool({ name: 'get_ticket', arguments: { ticketId: '2' } });
    const seen = upstream().seen.slice(before);
    expect(seen.length).toBeGreaterThanOrEqual(3);
    for (const request of seen) expect(request.headers.authorization).toBeUndefined();
  });

  it('the session the server made is the agent\'s: its id passes both ways, and ending it reaches the server', async () => {
    const client = await connect(system);
    const transport = client.transport as StreamableHTTPClientTransport;
    const sessionId = transport.sessionId;
    expect(sessionId).toBeDefined();
    expect(upstream().sessions.has(sessionId ?? '')).toBe(true);
    await client.listTools();
    expect(upstream().seen.at(-1)?.headers['mcp-session-id']).toBe(sessionId);
    // notifications/initialized was asked about and passed on (the server answered 202).
    expect(twin.forwards).toContainEqual({ system, method: 'notifications/initialized' });
    await transport.terminateSession();
    expect(upstream().seen.at(-1)).toMatchObject({ httpMethod: 'DELETE', headers: { 'mcp-session-id': sessionId } });
    expect(twin.forwards.at(-1)).toEqual({ system });
    expect(upstream().sessions.has(sessionId ?? '')).toBe(false);
  });

  it('tools/list shows only the tools some rule could allow', async () => {
    twin.decide = (request) => twin.allow(request, request.method === 'tools/list' ? { visibleTools: ['get_*', 'send_email'] } : {});
    const client = await connect(system);
    const { tools } = await client.listTools();
    expect(tools.map((t) => t.name).sort()).toEqual(['get_ticket', 'send_email']);
    // Without visibleTools (raw Cedar could allow anything) the list is the server's.
    twin.decide = (request) => twin.allow(request);
    expect((await client.listTools()).tools.map((t) => t.name).sort()).toEqual(['admin_wipe', 'get_ticket', 'send_email']);
  });

  it('a denied call never reaches the server, and the agent reads the rule and the hop', async () => {
    const client = await connect(system);
    const hopId = twin.nextHopId();
    twin.decide = (request) => (request.method === 'tools/call' ? deny(hopId, 'no-exfiltration') : twin.allow(request));
    const before = upstream().calls.length;
    const err = await rpcError(client.callTool({ name: 'send_email', arguments: { to: 'x@example.com', body: 'the customer list' } }));
    expect(err.code).toBe(-32001);
    expect(err.message).toContain('no-exfiltration');
    expect(err.message).toContain(hopId);
    expect(err.data).toEqual({ hopId, reasons: [{ rule: 'no-exfiltration', effect: 'Deny' }] });
    expect(upstream().calls.length).toBe(before);
    expect(upstream().seen.filter((s) => s.rpcMethod === 'tools/call' && JSON.stringify(s).includes('send_email'))).toEqual([]);
  });
});

describe('a call that waits for approval', () => {
  /** The first ask is pending; the hop's status turns to `decision` after `afterMs`; asking again then allows. */
  function approvalScript(hopId: string, holdForSeconds: number, decision: 'allow' | 'deny' | 'pending_approval', afterMs: number) {
    const started = Date.now();
    let asked = 0;
    twin.decide = (request) => {
      if (request.method !== 'tools/call') return twin.allow(request);
      asked++;
      if (asked === 1 || Date.now() - started < afterMs) return pending(hopId, holdForSeconds);
      return { status: 200, body: { ...(twin.allow(request).body as object), hopId, headers: { authorization: UPSTREAM_CREDENTIAL, 'txn-token': txnTokenOf(hopId) } } };
    };
    twin.hopStatus = (id) => ({ status: 200, body: { hopId: id, decision: Date.now() - started < afterMs ? 'pending_approval' : decision, reasons: [{ rule: 'refunds-need-a-human', effect: 'RequireApproval' }], depth: 1 } });
    return { asked: () => asked };
  }

  it('is held with progress notifications, then forwarded once when approved', async () => {
    const client = await connect('tickets');
    const hopId = twin.nextHopId();
    const script = approvalScript(hopId, 10, 'allow', 700);
    const before = streaming.calls.length;
    const progress: { progress: number; message?: string }[] = [];
    const started = Date.now();
    const result = await client.callTool({ name: 'get_ticket', arguments: { ticketId: '17' } }, undefined, { onprogress: (p) => void progress.push(p) });

    expect(Date.now() - started).toBeGreaterThanOrEqual(650);
    expect((result._meta as Record<string, unknown>)[META_HOP_ID]).toBe(hopId);
    expect(streaming.calls.slice(before)).toEqual([{ tool: 'get_ticket', args: { ticketId: '17' } }]);
    expect(script.asked()).toBe(2);
    // The gateway's while it waited, then the server's own, in the same stream.
    const waiting = progress.filter((p) => p.message?.includes(hopId));
    expect(waiting.length).toBeGreaterThanOrEqual(2);
    expect(progress.at(-1)).toMatchObject({ progress: 1, message: 'read from the ticket store' });
    expect(twin.polls).toContain(hopId);
  });

  it.each([
    ['an event-stream server', 'tickets', () => streaming],
    ['a JSON-answering server', 'tickets-json', () => json],
  ])('a call the agent cancels while it is held never runs, even once approved, and the cancellation goes nowhere (%s)', async (_name, system, upstream) => {
    const client = await connect(system);
    const hopId = twin.nextHopId();
    const script = approvalScript(hopId, 10, 'allow', 600);
    const before = { calls: upstream().calls.length, seen: upstream().seen.length };
    const abort = new AbortController();
    const call = client.callTool({ name: 'get_ticket', arguments: { ticketId: '19' } }, undefined, { signal: abort.signal });
    await new Promise((resolve) => setTimeout(resolve, 200));
    abort.abort('the agent changed its mind');
    await expect(call).rejects.toThrow();
    // Well past the approval: the hold would have asked again and sent the call by now.
    await new Promise((resolve) => setTimeout(resolve, 900));
    expect(script.asked()).toBe(1);
    expect(upstream().calls.length).toBe(before.calls);
    // Nothing of the call: neither it nor its cancellation (the client's own GET stream may open meanwhile).
    expect(upstream().seen.slice(before.seen).filter((s) => s.httpMethod === 'POST')).toEqual([]);
    // The client goes on.
    expect((await client.listTools()).tools.length).toBeGreaterThan(0);
  });

  it('a cancellation of a call already sent goes to the server under the id it was sent with; one naming nothing goes nowhere', async () => {
    const client = await connect('tickets');
    const sessionId = (client.transport as StreamableHTTPClientTransport).sessionId ?? '';
    const headers = { ...auth(), 'mcp-session-id': sessionId };
    await raw({ path: '/mcp/tickets', headers, body: callMessage('get_ticket', { ticketId: 'T-20' }, 20) });
    const sentWith = (JSON.parse(streaming.seen.at(-1)?.body ?? '{}') as { id: unknown }).id;
    expect(sentWith).toMatch(/^chainwarden-/);
    const cancel = await raw({ path: '/mcp/tickets', headers, body: rpc({ method: 'notifications/cancelled', params: { requestId: 20, reason: 'too slow' } }) });
    expect(cancel.status).toBe(202);
    expect(JSON.parse(streaming.seen.at(-1)?.body ?? '{}')).toMatchObject({ method: 'notifications/cancelled', params: { requestId: sentWith } });
    const seen = streaming.seen.length;
    const nothing = await raw({ path: '/mcp/tickets', headers, body: rpc({ method: 'notifications/cancelled', params: { requestId: 'never-sent' } }) });
    expect(nothing.status).toBe(202);
    expect(streaming.seen.length).toBe(seen);
  });

  it('ends with -32002 and the hop id when no one approves within holdFor; the server never sees it', async () => {
    const client = await connect('tickets-json');
    const hopId = twin.nextHopId();
    approvalScript(hopId, 1, 'pending_approval', Infinity);
    const before = json.calls.length;
    const started = Date.now();
    const err = await rpcError(client.callTool({ name: 'get_ticket', arguments: { ticketId: '18' } }));
    const took = Date.now() - started;

    expect(err.code).toBe(-32002);
    expect(err.data).toMatchObject({ hopId });
    expect(err.message).toContain('AgentApproval');
    expect(err.message).toContain('identical call goes through once');
    expect(took).toBeGreaterThanOrEqual(950);
    expect(took).toBeLessThan(2_500);
    expect(json.calls.length).toBe(before);
  });

  it('follows the new hop when another call used the approval first, and names it when the hold ends', async () => {
    // Two identical calls held on one hop; the other claimed the approval, so asking again made this call a hop of its own.
    const first = twin.nextHopId();
    const second = twin.nextHopId();
    let asked = 0;
    twin.decide = (request) => (request.method !== 'tools/call' ? twin.allow(request) : pending(++asked === 1 ? first : second, 1));
    twin.hopStatus = (id) => ({ status: 200, body: { hopId: id, decision: id === first ? 'allow' : 'pending_approval', reasons: [], depth: 1 } });
    const client = await connect('tickets-json');
    const err = await rpcError(client.callTool({ name: 'get_ticket', arguments: { ticketId: '22' } }));
    expect(err.code).toBe(-32002);
    expect(err.data).toMatchObject({ hopId: second });
    expect(err.message).toContain(`AgentApproval for hop ${second}`);
    expect(err.message).not.toContain(first);
    // Asked once, and once more when the first hop was allowed; not again at every poll of a hop that stays allowed.
    expect(asked).toBe(2);
  });

  it('ends with -32001 when the approver rejects it', async () => {
    const client = await connect('tickets');
    const hopId = twin.nextHopId();
    approvalScript(hopId, 10, 'deny', 300);
    const err = await rpcError(client.callTool({ name: 'get_ticket', arguments: { ticketId: '19' } }));
    expect(err.code).toBe(-32001);
    expect(err.message).toContain(hopId);
    expect(err.message).toContain('refunds-need-a-human');
  });

  it('an agent that takes no event stream waits without one, and then gets what the server answered', async () => {
    const hopId = twin.nextHopId();
    approvalScript(hopId, 10, 'allow', 300);
    const started = Date.now();
    // A POST outside any session: once approved it goes on, and the server's refusal is what comes back.
    const answer = await raw({ path: '/mcp/tickets', headers: { ...auth(), accept: 'application/json' }, body: callMessage('get_ticket', { ticketId: '20' }) });
    expect(Date.now() - started).toBeGreaterThanOrEqual(280);
    expect(answer.headers['content-type']).toBe('application/json');
    expect(answer.status).toBe(404);
    expect(answer.text).toContain('Session not found');
  });

  it(`holds at most ${MAX_HELD} calls at once: each asks the broker every poll, so more is refused at once with -32002`, async () => {
    const hopId = twin.nextHopId();
    approvalScript(hopId, 30, 'pending_approval', Infinity);
    const controller = new AbortController();
    const holds = await Promise.all(
      Array.from({ length: MAX_HELD }, (_, i) =>
        fetch(`${sidecar.url}/mcp/tickets`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: callMessage('get_ticket', { ticketId: '23' }, i), signal: controller.signal }),
      ),
    );
    try {
      expect(holds.map((r) => r.headers.get('content-type'))).toEqual(Array(MAX_HELD).fill('text/event-stream'));
      const started = Date.now();
      const refused = await raw({ path: '/mcp/tickets', headers: { ...auth(), accept: 'application/json' }, body: callMessage('get_ticket', { ticketId: '23' }, 'one-too-many') });
      expect(Date.now() - started).toBeLessThan(1_000);
      expect(refused.body).toMatchObject({ id: 'one-too-many', error: { code: -32002, data: { hopId } } });
      expect(refused.body.error?.message).toContain(`${MAX_HELD} calls are held already`);
    } finally {
      controller.abort();
    }
    // Once those are gone, a call is held again.
    await new Promise((r) => setTimeout(r, 200));
    approvalScript(hopId, 10, 'allow', 300);
    await expect(connect('tickets').then((c) => c.callTool({ name: 'get_ticket', arguments: { ticketId: '23' } }))).resolves.toMatchObject({ _meta: { [META_HOP_ID]: hopId } });
  });

  it('stops asking the broker when the agent goes away', async () => {
    const hopId = twin.nextHopId();
    approvalScript(hopId, 30, 'pending_approval', Infinity);
    const controller = new AbortController();
    const call = fetch(`${sidecar.url}/mcp/tickets`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: callMessage('get_ticket', { ticketId: '21' }), signal: controller.signal });
    const response = await call;
    expect(response.headers.get('content-type')).toBe('text/event-stream');
    await new Promise((r) => setTimeout(r, 300));
    expect(twin.polls.filter((p) => p === hopId).length).toBeGreaterThan(0);
    controller.abort();
    await new Promise((r) => setTimeout(r, 150));
    const after = twin.polls.filter((p) => p === hopId).length;
    await new Promise((r) => setTimeout(r, 400));
    expect(twin.polls.filter((p) => p === hopId).length).toBe(after);
  });
});

describe('from outside: what the gateway refuses', () => {
  const initialize = rpc({ id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'x', version: '1' } } });

  it('without the local token: 401, and the broker is not asked', async () => {
    const before = twin.forwards.length;
    expect((await raw({ path: '/mcp/tickets', body: initialize })).status).toBe(401);
    expect((await raw({ path: '/mcp/tickets', headers: { authorization: 'Bearer not-the-local-token' }, body: initialize })).status).toBe(401);
    // The pod token is the sidecar's alone once there is a local token.
    expect((await raw({ path: '/mcp/tickets', headers: { authorization: `Bearer ${POD_TOKEN}` }, body: initialize })).status).toBe(401);
    expect(twin.forwards.length).toBe(before);
  });

  it('messages that arrive slowly are held up to 16 MiB in all: the next is refused at once with a 503, and the sidecar takes messages again once they end', async () => {
    const url = new URL(sidecar.url);
    // Sixteen connections, each declaring a 1 MiB message and sending all of it but ten bytes, then stalling.
    const stalled = await Promise.all(
      Array.from({ length: 16 }, () => {
        const socket = net.connect(Number(url.port), url.hostname);
        return new Promise<net.Socket>((resolve) => {
          socket.once('connect', () => {
            socket.write(`POST /mcp/tickets HTTP/1.1\r\nhost: ${url.host}\r\nauthorization: Bearer ${localToken}\r\ncontent-type: application/json\r\ncontent-length: ${1024 * 1024}\r\n\r\n`);
            socket.write(Buffer.alloc(1024 * 1024 - 10, 0x20), () => resolve(socket));
          });
        });
      }),
    );
    try {
      // Once the sidecar reads all sixteen (it takes them as their headers arrive), the next message is refused before the broker is asked.
      let refused: Awaited<ReturnType<typeof raw>> | undefined;
      await expect.poll(async () => (refused = await raw({ path: '/mcp/tickets', headers: auth(), body: callMessage('get_ticket', { ticketId: 'T-1' }, 9) })).status).toBe(503);
      expect(refused?.body.error?.message).toMatch(/holds 16384 KiB of messages arriving already, its bound being 16384 KiB; retry shortly/);
      const before = twin.forwards.length;
      expect((await raw({ path: '/mcp/tickets', headers: auth(), body: initialize })).status).toBe(503);
      expect(twin.forwards.length).toBe(before);
    } finally {
      for (const socket of stalled) socket.destroy();
    }
    await expect.poll(async () => (await raw({ path: '/mcp/tickets', headers: auth(), body: initialize })).status).toBe(200);
  });

  it.each(['/mcp/../v1/credentials', '/mcp/tickets/../../v1/credentials', '/mcp/a/b', '/mcp/', '/mcp', '/mcp/Tickets', '/mcp/%74ickets', '/mcp/-tickets', `/mcp/${'a'.repeat(64)}`])('%s is a 404 that asks the broker nothing', async (target) => {
    const before = twin.forwards.length;
    const answer = await raw({ path: target, headers: auth(), body: initialize });
    expect(answer.status).toBe(404);
    expect(answer.body).toMatchObject({ error: { code: 'not_found' } });
    expect(twin.forwards.length).toBe(before);
  });

  it('a batch is -32600, one message per request', async () => {
    const answer = await raw({ path: '/mcp/tickets', headers: auth(), body: `[${callMessage('get_ticket', { ticketId: '1' })}]` });
    expect(answer.status).toBe(400);
    expect(answer.body).toEqual({ jsonrpc: '2.0', id: null, error: { code: -32600, message: 'batch requests are not supported by the chainwarden gateway; send one message per request' } });
  });

  it('malformed JSON is -32700', async () => {
    const answer = await raw({ path: '/mcp/tickets', headers: auth(), body: '{"jsonrpc": "2.0", "id": 1, "method": ' });
    expect(answer.status).toBe(400);
    expect(answer.body).toMatchObject({ id: null, error: { code: -32700 } });
    expect(answer.body.error?.message).toMatch(/^Parse error/);
  });

  it.each([
    ['a call without a tool name', rpc({ id: 7, method: 'tools/call', params: { arguments: {} } }), 7, 'params.name'],
    ['arguments that are a list', rpc({ id: 'a', method: 'tools/call', params: { name: 'get_ticket', arguments: [1] } }), 'a', 'params.arguments'],
    ['a parent hop that is not a hop id', rpc({ id: 8, method: 'tools/call', params: { name: 'get_ticket', arguments: {}, _meta: { [META_PARENT_HOP]: 'h1/../x' } } }), 8, META_PARENT_HOP],
    ['a member JSON-RPC does not have', rpc({ id: 9, method: 'ping', extra: true }), 9, 'extra'],
    ['no jsonrpc version', JSON.stringify({ id: 10, method: 'ping' }), 10, 'jsonrpc'],
  ])('%s is -32600 naming what is wrong, with the request id', async (_name, body, id, named) => {
    const before = twin.forwards.length;
    const answer = await raw({ path: '/mcp/tickets', headers: auth(), body });
    expect(answer.status).toBe(400);
    expect(answer.body).toMatchObject({ jsonrpc: '2.0', id, error: { code: -32600 } });
    expect(answer.body.error?.message).toContain(named);
    expect(twin.forwards.length).toBe(before);
  });

  it('a message over 1 MiB is a 413 the client can read, and its connection stays usable', async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    const url = new URL(sidecar.url);
    const send = (body: Buffer | string) =>
      new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = http.request({ host: url.hostname, port: url.port, method: 'POST', path: '/mcp/tickets', agent, headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' } }, (res) => {
          let text = '';
          res.setEncoding('utf8').on('data', (c: string) => (text += c));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on('error', reject);
        req.end(body);
      });
    const big = Buffer.from(callMessage('send_email', { to: 'x@example.com', body: 'x'.repeat(3 * 1024 * 1024) }));
    const answer = await send(big);
    expect(answer.status).toBe(413);
    expect(JSON.parse(answer.text)).toMatchObject({ id: null, error: { code: -32600 } });
    expect(answer.text).toContain('arguments larger than');
    expect((await send(rpc({ id: 2, method: 'ping' }))).status).not.toBe(413);
    agent.destroy();
  });

  it('an unknown system is -32602 naming it, a 404', async () => {
    const answer = await raw({ path: '/mcp/payroll', headers: auth(), body: initialize });
    expect(answer.status).toBe(404);
    expect(answer.body).toMatchObject({ id: 1, error: { code: -32602 } });
    expect(answer.body.error?.message).toContain('payroll');
    expect(twin.forwards.at(-1)).toEqual({ system: 'payroll', method: 'initialize' });
  });

  it('another broker refusal carries the broker\'s message and status', async () => {
    twin.decide = () => ({ status: 503, body: { error: { code: 'journal_behind', message: 'the task\'s audit records are behind; retry shortly' } } });
    const answer = await raw({ path: '/mcp/tickets', headers: auth(), body: initialize });
    expect(answer.status).toBe(503);
    expect(answer.body).toMatchObject({ id: 1, error: { code: -32603, message: 'the task\'s audit records are behind; retry shortly', data: { code: 'journal_behind' } } });
  });

  it('a broker answer that is not usable goes nowhere', async () => {
    const broken = await startBrokenUpstream({ status: 200, contentType: 'application/json', body: '{}' });
    try {
      twin.decide = () => ({ status: 200, body: { url: broken.url, headers: { authorization: 'Bearer x\r\nx-smuggled: 1' } } });
      const answer = await raw({ path: '/mcp/tickets', headers: auth(), body: initialize });
      expect(answer.status).toBe(502);
      expect(answer.body.error?.message).toContain('authorization');
      twin.decide = () => ({ status: 200, body: { url: 'file:///etc/passwd', headers: {} } });
      expect((await raw({ path: '/mcp/tickets', headers: auth(), body: initialize })).status).toBe(502);
      expect(broken.requests()).toBe(0);
    } finally {
      await broken.close();
    }
  });
});

/**
 * A server in another language reads the bytes it gets with its own JSON parser: some keep the
 * first of two equal keys, some keep integers JavaScript cannot hold, Go's encoding/json matches
 * keys without case (CVE-2026-27896 in the Go MCP SDK). What it gets must read the same as what
 * the broker decided, under any of them.
 */
describe('what the server gets is what the broker was asked about', () => {
  /** The last request the server saw, by the raw bytes it got; its id is the sidecar's, not the agent's. */
  const lastSeen = () => {
    const seen = streaming.seen.at(-1);
    expect(JSON.parse(seen?.body ?? '{}')).toMatchObject({ id: expect.stringMatching(/^chainwarden-/) as unknown });
    return seen;
  };

  it.each<[string, number, string, { method: string; params?: { name: string } }]>([
    ['a second params, for a parser that keeps the first', 21, '{"jsonrpc":"2.0","id":21,"method":"tools/call","params":{"name":"admin_wipe","arguments":{}},"params":{"name":"get_ticket","arguments":{"ticketId":"1"}}}', { method: 'tools/call', params: { name: 'get_ticket' } }],
    ['a second method, for a parser that keeps the first', 22, '{"jsonrpc":"2.0","id":22,"method":"tools/call","method":"tools/list","params":{"name":"admin_wipe","arguments":{}}}', { method: 'tools/list' }],
  ])('%s: the server never sees the other one', async (_name, id, body, asked) => {
    const before = twin.forwards.length;
    await raw({ path: '/mcp/tickets', headers: auth(), body });
    expect(twin.forwards.slice(before).map((f) => f.method)).toEqual([asked.method]);
    if (asked.params) expect(twin.forwards.at(-1)?.call?.name).toBe(asked.params.name);
    // One method and one params: any parser, keeping the first key or the last, reads what the broker was asked.
    const seen = lastSeen()?.body ?? '';
    expect(seen).not.toContain(`"id":${id}`);
    expect(seen.match(/"method"/g)).toHaveLength(1);
    expect(seen.match(/"params"/g)).toHaveLength(1);
    expect(JSON.parse(seen)).toMatchObject(asked);
  });

  it('an integer past 2^53 reaches the server as the number the broker decided on', async () => {
    const before = twin.forwards.length;
    await raw({ path: '/mcp/tickets', headers: auth(), body: '{"jsonrpc":"2.0","id":23,"method":"tools/call","params":{"name":"get_ticket","arguments":{"ticketId":9007199254740993}}}' });
    const asked = twin.forwards.slice(before).find((f) => f.call)?.call?.arguments.ticketId;
    expect(asked).toBe(9007199254740992);
    expect(lastSeen()?.body).toContain(`"ticketId":${String(asked)}`);
  });

  it.each([
    ['a tool name spelled twice', { name: 'get_ticket', Name: 'admin_wipe', arguments: { ticketId: '1' } }, 'params.Name'],
    ['arguments spelled twice, with a long s', { name: 'get_ticket', arguments: { ticketId: '1' }, ['argumentſ']: { ticketId: 'vip-1' } }, 'argumentſ'],
    ['arguments spelled only otherwise', { name: 'get_ticket', Arguments: { ticketId: 'vip-1' } }, 'params.Arguments'],
    ['an argument spelled twice', { name: 'get_ticket', arguments: { ticketId: '1', TicketId: 'vip-1' } }, 'params.arguments.TicketId'],
  ])('%s is -32600 naming it; neither the broker nor the server sees it', async (_name, params, named) => {
    const before = { forwards: twin.forwards.length, seen: streaming.seen.length };
    const answer = await raw({ path: '/mcp/tickets', headers: auth(), body: rpc({ id: 24, method: 'tools/call', params }) });
    expect(answer.status).toBe(400);
    expect(answer.body).toMatchObject({ id: 24, error: { code: -32600 } });
    expect(answer.body.error?.message).toContain(named);
    expect(twin.forwards.length).toBe(before.forwards);
    expect(streaming.seen.length).toBe(before.seen);
  });
});

describe('sessions, and streams resumed with Last-Event-ID', () => {
  const names = (tools: { name: string }[]) => tools.map((t) => t.name).sort();

  /** `test` with a system `name` whose server is `handle`, a plain HTTP server that answers what the test says. */
  async function withScriptedSystem(name: string, handle: http.RequestListener, test: () => Promise<void>): Promise<void> {
    const server = http.createServer(handle);
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    twin.systems.set(name, `http://127.0.0.1:${(server.address() as { port: number }).port}/mcp`);
    try {
      await test();
    } finally {
      twin.systems.delete(name);
      await new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      });
    }
  }

  it("another agent's session is not this agent's: a session id the sidecar did not see begin is a 404, and neither the broker nor the server hears of it", async () => {
    // Another pod's agent, whose sidecar reaches the same server with the same credential.
    const other = new Client({ name: 'other-agent', version: '1.0.0' });
    const otherTransport = new StreamableHTTPClientTransport(new URL(streaming.url));
    await other.connect(otherTransport);
    clients.push(other);
    const theirs = otherTransport.sessionId ?? '';
    expect(streaming.sessions.has(theirs)).toBe(true);
    // What reached the server through a sidecar: the other agent's own client reaches it straight, without the credential.
    const throughSidecar = () => streaming.seen.filter((s) => s.headers.authorization === UPSTREAM_CREDENTIAL).length;
    const before = { seen: throughSidecar(), forwards: twin.forwards.length };

    const call = await raw({ path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': theirs }, body: callMessage('get_ticket', { ticketId: 'T-1' }, 7) });
    expect(call.status).toBe(404);
    expect(call.body).toMatchObject({ id: 7, error: { code: -32600, message: expect.stringContaining('begin a new one with initialize') as unknown } });
    // Resuming their event stream, to read what the server replays of it.
    const resume = await raw({ method: 'GET', path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': theirs, 'last-event-id': '0', accept: 'text/event-stream' } });
    expect(resume.status).toBe(404);
    const end = await raw({ method: 'DELETE', path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': theirs } });
    expect(end.status).toBe(404);
    expect(throughSidecar()).toBe(before.seen);
    expect(twin.forwards.length).toBe(before.forwards);
    expect(streaming.sessions.has(theirs)).toBe(true);

    // In the agent's own session, naming an event of theirs: for a server whose event store is shared by its sessions.
    const theirEvents: string[] = [];
    await other.request({ method: 'tools/list' }, ListToolsResultSchema, { onresumptiontoken: (token) => void theirEvents.push(token) });
    expect(theirEvents.length).toBeGreaterThan(0);
    const mine = ((await connect('tickets')).transport as StreamableHTTPClientTransport).sessionId ?? '';
    const theirStream = await raw({ method: 'GET', path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': mine, 'last-event-id': theirEvents[0] ?? '', accept: 'text/event-stream' } });
    expect(theirStream.status).toBe(400);
    expect(theirStream.body.error?.message).toContain('Last-Event-ID names no event this chainwarden agent passed on in this session');
    expect(streaming.seen.filter((s) => s.headers['last-event-id'] !== undefined && s.headers['mcp-session-id'] === mine)).toEqual([]);
  });

  it("another agent's task is not this agent's: a server whose task store all its callers share (a stateless one's) lists only the session's own tasks, and gives no other's status or result", async () => {
    const task = (taskId: string) => ({ taskId, status: 'completed', ttl: 60_000, createdAt: '2026-11-21T10:00:00Z', lastUpdatedAt: '2026-11-21T10:00:01Z' });
    const asked: { method: string; taskId?: unknown }[] = [];
    // A server without sessions: every task is every caller's, another pod's export among them.
    const server: http.RequestListener = (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const sent = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id: unknown; method: string; params?: { taskId?: unknown } };
        asked.push({ method: sent.method, taskId: sent.params?.taskId });
        const result =
          sent.method === 'tools/call' ? { task: task('mine-1') } : sent.method === 'tasks/list' ? { tasks: [task('theirs-1'), task('mine-1')] } : sent.method === 'tasks/get' ? task(String(sent.params?.taskId)) : { content: [{ type: 'text', text: `the export of ${String(sent.params?.taskId)}` }] };
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: sent.id, result }));
      });
    };
    await withScriptedSystem('exports', server, async () => {
      const send = (message: object) => raw({ path: '/mcp/exports', headers: { ...auth(), 'mcp-protocol-version': '2025-11-25' }, body: rpc(message) });
      const began = await send({ id: 1, method: 'tools/call', params: { name: 'export_tickets', arguments: {}, task: { ttl: 60_000 } } });
      expect(began.status).toBe(200);
      const listed = (await send({ id: 2, method: 'tasks/list', params: {} })).body as { result?: { tasks: { taskId: string }[] } };
      expect(listed.result?.tasks.map((t) => t.taskId)).toEqual(['mine-1']);
      for (const method of ['tasks/result', 'tasks/get', 'tasks/cancel']) {
        const theirs = await send({ id: 3, method, params: { taskId: 'theirs-1' } });
        expect(theirs.status, method).toBe(400);
        expect(theirs.body.error, method).toMatchObject({ code: -32602, message: expect.stringContaining(`${method} names task "theirs-1", which no tools/call of this session began`) as unknown });
      }
      const mine = (await send({ id: 5, method: 'tasks/result', params: { taskId: 'mine-1' } })).body as { result?: { content: { text: string }[] } };
      expect(mine.result?.content[0]?.text).toBe('the export of mine-1');
      // The server heard of no other task: neither its result nor its status was asked for.
      expect(asked.filter((a) => a.taskId !== undefined && a.taskId !== 'mine-1')).toEqual([]);
    });
  });

  it('a session the agent ended is refused by the sidecar itself', async () => {
    const client = await connect('tickets');
    const transport = client.transport as StreamableHTTPClientTransport;
    const ended = transport.sessionId ?? '';
    await transport.terminateSession();
    const before = twin.forwards.length;
    const answer = await raw({ path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': ended }, body: rpc({ id: 8, method: 'tools/list' }) });
    expect(answer.status).toBe(404);
    expect(twin.forwards.length).toBe(before);
  });

  it('a replayed tools/list answer is the list the agent got the first time: what the policy hides stays hidden', async () => {
    twin.decide = (request) => twin.allow(request, request.method === 'tools/list' ? { visibleTools: ['get_*', 'send_email'] } : {});
    const client = await connect('tickets');
    const tokens: string[] = [];
    const first = await client.request({ method: 'tools/list' }, ListToolsResultSchema, { onresumptiontoken: (token) => void tokens.push(token) });
    expect(names(first.tools)).toEqual(['get_ticket', 'send_email']);
    expect(tokens.length).toBeGreaterThan(0);
    // As a client whose stream broke after its first event: it reconnects, and the server replays the rest.
    const replayed = await client.request({ method: 'tools/list' }, ListToolsResultSchema, { resumptionToken: tokens[0] });
    // The event id the agent holds is the server's behind the sidecar's MAC; the server gets its own back.
    const token = tokens[0] ?? '';
    expect(streaming.seen.at(-1)).toMatchObject({ httpMethod: 'GET', headers: { 'last-event-id': token.slice(token.indexOf('.') + 1) } });
    expect(names(replayed.tools)).toEqual(['get_ticket', 'send_email']);
    // The same event id in another session of the agent's is not one the sidecar handed out there.
    const other = ((await connect('tickets')).transport as StreamableHTTPClientTransport).sessionId ?? '';
    const elsewhere = await raw({ method: 'GET', path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': other, 'last-event-id': token, accept: 'text/event-stream' } });
    expect(elsewhere.status).toBe(400);
    expect(streaming.seen.filter((s) => s.headers['mcp-session-id'] === other && s.headers['last-event-id'] !== undefined)).toEqual([]);
  });

  it('Last-Event-ID goes on with a GET only, where the replays it asks for are edited', async () => {
    const client = await connect('tickets');
    const sessionId = (client.transport as StreamableHTTPClientTransport).sessionId ?? '';
    const answer = await raw({ path: '/mcp/tickets', headers: { ...auth(), 'mcp-session-id': sessionId, 'last-event-id': 'anything' }, body: rpc({ id: 9, method: 'tools/list' }) });
    expect(answer.status).toBe(200);
    const seen = streaming.seen.at(-1);
    expect(seen?.rpcMethod).toBe('tools/list');
    expect(seen?.headers['mcp-session-id']).toBe(sessionId);
    expect(seen?.headers['last-event-id']).toBeUndefined();
  });

  it('a replayed tools/call result still names its hop', async () => {
    const client = await connect('tickets');
    const tokens: string[] = [];
    const first = await client.request({ method: 'tools/call', params: { name: 'get_ticket', arguments: { ticketId: 'T-2' } } }, CallToolResultSchema, { onresumptiontoken: (token) => void tokens.push(token) });
    const hopId = first._meta?.[META_HOP_ID];
    expect(hopId).toMatch(/^h1_/);
    const calls = streaming.calls.length;
    const replayed = await client.request({ method: 'tools/call', params: { name: 'get_ticket', arguments: { ticketId: 'T-2' } } }, CallToolResultSchema, { resumptionToken: tokens[0] });
    expect(replayed._meta?.[META_HOP_ID]).toBe(hopId);
    expect(streaming.calls.length).toBe(calls);
  });

  it('an answer comes back only to the request it answers, by the id the sidecar sent it with; event ids are bound to the session', async () => {
    const session = 'scripted-session-1';
    const leaked = { tools: [{ name: 'admin_wipe', inputSchema: { type: 'object' } }] };
    const serverInfo = { protocolVersion: '2025-06-18', capabilities: {}, serverInfo: { name: 'scripted', version: '1.0.0' } };
    let initId: unknown;
    // A server that answers what it likes: the initialize by the id it got, tools/list with a 201, a ping by the id 41, and on its GET stream answers to ids it picks.
    const scripted: http.RequestListener = (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        if (req.method === 'POST') {
          const sent = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id: unknown; method: string };
          if (sent.method === 'initialize') initId = sent.id;
          res.writeHead(sent.method === 'tools/list' ? 201 : 200, { 'content-type': 'application/json', 'mcp-session-id': session });
          return void res.end(JSON.stringify({ jsonrpc: '2.0', id: sent.method === 'ping' ? 41 : sent.id, result: sent.method === 'initialize' ? serverInfo : leaked }));
        }
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const event = (id: number, data: unknown) => `id: ${id}\nevent: message\ndata: ${JSON.stringify(data)}\n\n`;
        res.end(
          event(1, { jsonrpc: '2.0', id: initId, result: serverInfo }) +
            event(2, { jsonrpc: '2.0', id: 41, result: leaked }) +
            event(3, { jsonrpc: '2.0', id: 1, result: leaked }) +
            event(4, [{ jsonrpc: '2.0', id: 'x', result: leaked }, { jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: 'batched' } }]) +
            event(5, { jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: 'still here' } }) +
            // Not JSON (a Python server's json.dumps writes Infinity), and an event of another type: neither is read, so neither goes on.
            `id: 6\nevent: message\ndata: {"jsonrpc":"2.0","id":${JSON.stringify(initId)},"result":{"tools":[{"name":"admin_wipe","inputSchema":{"type":"object","maximum":Infinity}}]}}\n\n` +
            `id: 7\nevent: other\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: initId, result: leaked })}\n\n`,
        );
      });
    };
    await withScriptedSystem('scripted', scripted, async () => {
      const init = await raw({ path: '/mcp/scripted', headers: auth(), body: rpc({ id: 1, method: 'initialize', params: { protocolVersion: '2025-06-18', capabilities: {}, clientInfo: { name: 'agent', version: '1.0.0' } } }) });
      expect(init.headers['mcp-session-id']).toBe(session);
      expect(init.body).toMatchObject({ id: 1, result: { serverInfo: { name: 'scripted' } } });
      expect(initId).toMatch(/^chainwarden-/);

      // A 201 is an answer like a 200: checked and edited.
      twin.decide = (request) => twin.allow(request, request.method === 'tools/list' ? { visibleTools: ['get_*'] } : {});
      const list = await raw({ path: '/mcp/scripted', headers: { ...auth(), 'mcp-session-id': session }, body: rpc({ id: 2, method: 'tools/list' }) });
      expect(list.status).toBe(201);
      expect(list.body).toEqual({ jsonrpc: '2.0', id: 2, result: { tools: [] } });
      // A JSON answer to another request than the one sent.
      const ping = await raw({ path: '/mcp/scripted', headers: { ...auth(), 'mcp-session-id': session }, body: rpc({ id: 41, method: 'ping' }) });
      expect(ping.status).toBe(502);
      expect(ping.body.error?.message).toContain('answered a request the chainwarden gateway did not send it');
      expect(ping.text).not.toContain('admin_wipe');

      const stream = await raw({ method: 'GET', path: '/mcp/scripted', headers: { ...auth(), 'mcp-session-id': session, accept: 'text/event-stream' } });
      expect(stream.status).toBe(200);
      expect(stream.text).not.toContain('admin_wipe');
      const events = stream.text.split('\n\n').filter((e) => e.includes('data:')).map((e) => ({ id: /^id: (.*)$/m.exec(e)?.[1], data: JSON.parse(e.split('data: ')[1] ?? '') as unknown }));
      expect(events.map((e) => e.data)).toEqual([
        { jsonrpc: '2.0', id: 1, result: serverInfo },
        [{ jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: 'batched' } }],
        { jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: 'still here' } },
      ]);
      // The server's event ids, each behind a MAC over the system and the session.
      expect(events.map((e) => e.id?.replace(/^[\w-]+\./, ''))).toEqual(['1', '4', '5']);
      expect(events.every((e) => e.id !== undefined && /^[\w-]{22}\.\d$/.test(e.id))).toBe(true);
    });
  });

  it('an answer nested too deep to edit cuts its stream off; the sidecar goes on', async () => {
    const deep = `${'['.repeat(20_000)}${']'.repeat(20_000)}`;
    const deepServer: http.RequestListener = (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const sent = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id: unknown };
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(`event: message\ndata: {"jsonrpc":"2.0","id":${JSON.stringify(sent.id)},"result":{"content":[],"structuredContent":{"x":${deep}}}}\n\n`);
      });
    };
    await withScriptedSystem('deep', deepServer, async () => {
      const response = await fetch(`${sidecar.url}/mcp/deep`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: callMessage('get_ticket', { ticketId: 'T-1' }, 5) });
      expect(response.status).toBe(200);
      // The stream is cut off before the answer: the agent's client sees a broken stream, never a half-edited answer.
      const text = await response.text().catch(() => '');
      expect(text).toBe('');
      expect(logLines.join('')).toContain('an event could not be checked');
      const client = await connect('tickets');
      expect((await client.listTools()).tools.length).toBeGreaterThan(0);
    });
  });

  it("a call run as a task (protocol 2025-11-25): its result, fetched with tasks/result, carries the call's hop id", async () => {
    const exports = await startMcpUpstream({ tasks: true });
    twin.systems.set('exports', exports.url);
    try {
      let callHop: string | undefined;
      twin.decide = (request) => {
        const decided = twin.allow(request);
        if (request.call?.name === 'export_tickets') callHop = (decided.body as { hopId?: string }).hopId;
        return decided;
      };
      const client = await connect('exports');
      const messages: { type: string; task?: { taskId: string }; result?: { content: { text?: string }[]; _meta?: Record<string, unknown> } }[] = [];
      for await (const m of client.experimental.tasks.callToolStream({ name: 'export_tickets', arguments: { format: 'csv' } }, CallToolResultSchema, { task: { ttl: 60_000 } })) messages.push(m as (typeof messages)[number]);
      const taskId = messages.find((m) => m.type === 'taskCreated')?.task?.taskId ?? '';
      const result = messages.find((m) => m.type === 'result')?.result;
      expect(exports.calls.map((c) => c.tool)).toEqual(['export_tickets']);
      expect(result?.content[0]?.text).toBe('exported as csv');
      expect(callHop).toMatch(/^h1_/);
      expect(result?._meta?.[META_HOP_ID]).toBe(callHop);
      // Fetched again by the same session, it carries the hop again.
      expect((await client.experimental.tasks.getTaskResult(taskId, CallToolResultSchema))._meta?.[META_HOP_ID]).toBe(callHop);

    } finally {
      twin.systems.delete('exports');
      await exports.close();
    }
  });

  describe("the servers' answers the sidecar holds at once are bounded, so large answers cannot take it past its memory limit", () => {
    /** A tools/call result of `kib` KiB of text and a little, for the id the sidecar sent. */
    const bigResult = (id: unknown, kib: number, tag: string) => JSON.stringify({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: `${tag}:${'x'.repeat(kib * 1024)}` }] } });
    /** What a scripted server reads of a call: the id the sidecar sent, and the ticket asked for. */
    const readCall = (req: http.IncomingMessage): Promise<{ id: unknown; ticket: string }> =>
      new Promise((resolve) => {
        const chunks: Buffer[] = [];
        req.on('data', (c: Buffer) => chunks.push(c));
        req.on('end', () => {
          const sent = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id: unknown; params?: { arguments?: { ticketId?: string } } };
          resolve({ id: sent.id, ticket: sent.params?.arguments?.ticketId ?? '' });
        });
      });
    const call = (system: string, ticket: string, id: number) => raw({ path: `/mcp/${system}`, headers: auth(), body: callMessage('get_ticket', { ticketId: ticket }, id) });
    const textOf = (answer: Awaited<ReturnType<typeof raw>>) => (JSON.parse(answer.text) as { result: { content: { text: string }[] } }).result.content[0]?.text ?? '';

    it('a JSON answer past the bound is a 503 saying the call ran; answers already on their way arrive whole, and the bound is given back', async () => {
      let releaseSlow = () => {};
      let slowStarted = () => {};
      const started = new Promise<void>((resolve) => (slowStarted = resolve));
      const server: http.RequestListener = (req, res) => {
        void readCall(req).then(({ id, ticket }) => {
          const body = bigResult(id, 600, ticket);
          res.writeHead(200, { 'content-type': 'application/json' });
          if (ticket !== 'slow') return void res.end(body);
          // 500 KiB of the answer now, the rest when the test says: the sidecar holds those 500 KiB meanwhile.
          res.write(body.slice(0, 500 * 1024));
          releaseSlow = () => res.end(body.slice(500 * 1024));
          slowStarted();
        });
      };
      await withScriptedSystem('large', server, async () => {
        const slow = call('large', 'slow', 1);
        await started;
        await new Promise((r) => setTimeout(r, 100));
        // 500 KiB held and 600 more is past the 1 MiB bound: refused, and said to have run.
        const refused = await call('large', 'second', 2);
        expect(refused.status).toBe(503);
        expect(refused.body).toMatchObject({ id: 2, error: { code: -32603, data: { system: 'large' } } });
        expect(refused.body.error?.message).toMatch(/^the MCP server of system large answered, but the chainwarden gateway holds \d+ KiB of MCP servers' answers to check already, its bound being 1024 KiB: the call ran and its answer was not passed on/);
        expect(refused.text).not.toContain('second:xxx');
        releaseSlow();
        const first = await slow;
        expect(first.status).toBe(200);
        expect(textOf(first)).toBe(`slow:${'x'.repeat(600 * 1024)}`);
        expect((JSON.parse(first.text) as { result: { _meta?: Record<string, unknown> } }).result._meta?.[META_HOP_ID]).toMatch(/^h1_/);
        // Both exchanges gave back what they held: the same answer passes now, and so do two in turn.
        for (const [ticket, id] of [['third', 3], ['fourth', 4]] as const) {
          const passed = await call('large', ticket, id);
          expect(passed.status).toBe(200);
          expect(textOf(passed)).toBe(`${ticket}:${'x'.repeat(600 * 1024)}`);
        }
      });
    });

    it("an event stream is held one event at a time: events that add up past the bound pass, one event past it cuts the stream off and the sidecar goes on", async () => {
      const server: http.RequestListener = (req, res) => {
        void readCall(req).then(({ id, ticket }) => {
          res.writeHead(200, { 'content-type': 'text/event-stream' });
          const notes = ticket === 'huge' ? [] : Array.from({ length: 5 }, (_, i) => JSON.stringify({ jsonrpc: '2.0', method: 'notifications/message', params: { level: 'info', data: `${i}:${'n'.repeat(300 * 1024)}` } }));
          const events = [...notes, bigResult(id, ticket === 'huge' ? 1100 : 300, ticket)].map((data) => `event: message\ndata: ${data}\n\n`);
          // In parts of 64 KiB, as a server's writes arrive.
          const all = events.join('');
          for (let at = 0; at < all.length; at += 64 * 1024) res.write(all.slice(at, at + 64 * 1024));
          res.end();
        });
      };
      await withScriptedSystem('streamed', server, async () => {
        // Six events of 300 KiB: 1.8 MiB in all, each within the bound.
        const many = await call('streamed', 'many', 1);
        expect(many.status).toBe(200);
        const data = many.text.split('\n\n').filter((e) => e.includes('data: ')).map((e) => JSON.parse(e.split('data: ')[1] ?? '') as { id?: unknown; result?: { content: { text: string }[] } });
        expect(data).toHaveLength(6);
        expect(data[5]).toMatchObject({ id: 1 });
        expect(data[5]?.result?.content[0]?.text).toBe(`many:${'x'.repeat(300 * 1024)}`);
        // One event of 1.1 MiB: the stream is cut off before it, never passed on half-checked.
        const before = logLines.length;
        const huge = await fetch(`${sidecar.url}/mcp/streamed`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: callMessage('get_ticket', { ticketId: 'huge' }, 2) });
        expect(huge.status).toBe(200);
        expect(await huge.text().catch(() => '')).toBe('');
        const cutOff = logLines.slice(before).find((line) => line.includes('an mcp event stream was cut off'));
        expect(cutOff).toMatch(/holds \d+ KiB of MCP servers' answers to check already, its bound being 1024 KiB; the agent's client may resume the stream/);
        // What the cut-off stream held was given back.
        const after = await call('streamed', 'after', 3);
        expect(after.text).toContain(`after:${'x'.repeat(300 * 1024)}`);
      });
    });
  });

  it('an id the agent uses again does not change what a replay of the first answer carries', async () => {
    const client = await connect('tickets');
    const sessionId = (client.transport as StreamableHTTPClientTransport).sessionId ?? '';
    const headers = { ...auth(), 'mcp-session-id': sessionId, 'mcp-protocol-version': '2025-11-25' };
    const call = await raw({ path: '/mcp/tickets', headers, body: callMessage('get_ticket', { ticketId: 'T-77' }, 77) });
    const events = call.text.split('\n\n').filter((e) => e.includes('id: '));
    const priming = /^id: (.*)$/m.exec(events[0] ?? '')?.[1] ?? '';
    const first = JSON.parse(/^data: (.*)$/m.exec(events.find((e) => e.includes('"result"')) ?? '')?.[1] ?? '{}') as { id: unknown; result: { _meta?: Record<string, unknown> } };
    const hopId = first.result._meta?.[META_HOP_ID];
    expect(first.id).toBe(77);
    expect(hopId).toMatch(/^h1_/);
    // The same id again, on a request whose answer the gateway does not edit.
    expect((await raw({ path: '/mcp/tickets', headers, body: rpc({ id: 77, method: 'ping' }) })).status).toBe(200);
    const replayed = await client.request({ method: 'tools/call', params: { name: 'get_ticket', arguments: { ticketId: 'T-77' } } }, CallToolResultSchema, { resumptionToken: priming });
    expect(replayed._meta?.[META_HOP_ID]).toBe(hopId);
  });
});

describe('a system whose server fails', () => {
  it.each([
    ['never answers', 'before' as const, /system hanging .*could not be reached: it sent no answer within 1\.5s/],
    ['stops halfway through its answer', 'midway' as const, /system hanging broke off its answer: it stopped sending for 1\.5s/],
  ])('an upstream that %s is a JSON-RPC error naming the system, not a hang', async (_name, hang, message) => {
    const hanging = await startBrokenUpstream({ hang });
    twin.systems.set('hanging', hanging.url);
    try {
      const started = Date.now();
      const answer = await raw({ path: '/mcp/hanging', headers: auth(), body: callMessage('get_ticket', { ticketId: '1' }, 3) });
      expect(Date.now() - started).toBeLessThan(ANSWER_TIMEOUT_MS + 1_000);
      expect(answer.status).toBe(502);
      expect(answer.body).toMatchObject({ id: 3, error: { code: -32603 } });
      expect(answer.body.error?.message).toMatch(message);
      expect(hanging.requests()).toBe(1);
    } finally {
      await hanging.close();
    }
  });

  it.each([
    ['an HTML page', { status: 200, contentType: 'text/html', body: '<html>login</html>' }, 'text/html'],
    ['JSON that is not JSON', { status: 200, contentType: 'application/json', body: 'not json at all' }, 'not JSON'],
    ['JSON that is not a JSON-RPC response', { status: 200, contentType: 'application/json', body: '{"tickets": []}' }, 'not a JSON-RPC response'],
  ])('an upstream that answers %s is a JSON-RPC error naming the system', async (_name, reply, named) => {
    const garbage = await startBrokenUpstream(reply);
    twin.systems.set('garbage', garbage.url);
    try {
      const answer = await raw({ path: '/mcp/garbage', headers: auth(), body: callMessage('get_ticket', { ticketId: '1' }, 'g') });
      expect(answer.status).toBe(502);
      expect(answer.body).toMatchObject({ jsonrpc: '2.0', id: 'g', error: { code: -32603, data: { system: 'garbage' } } });
      expect(answer.body.error?.message).toContain('system garbage');
      expect(answer.body.error?.message).toContain(named);
    } finally {
      await garbage.close();
    }
  });

  it('an upstream that is not there is a 502 naming the system', async () => {
    const gone = await startBrokenUpstream({ hang: 'before' });
    twin.systems.set('gone', gone.url);
    await gone.close();
    const answer = await raw({ path: '/mcp/gone', headers: auth(), body: callMessage('get_ticket', { ticketId: '1' }) });
    expect(answer.status).toBe(502);
    expect(answer.body.error?.message).toMatch(/MCP server of system gone .*could not be reached/);
  });

  it('a broker out of reach is a 502 JSON-RPC error', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'mcp-gateway-'));
    await writeFile(path.join(dir, 'pod-token'), POD_TOKEN);
    const lonely = await startAgentProxy({ brokerUrl: 'https://127.0.0.1:1', caPem: twin.caPem, tokenFile: path.join(dir, 'pod-token'), listen: { host: '127.0.0.1', port: 0 }, log: createLogger({ level: 'silent' }) });
    try {
      const url = new URL(lonely.url);
      const response = await fetch(`${url.origin}/mcp/tickets`, { method: 'POST', headers: { authorization: `Bearer ${POD_TOKEN}`, 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: callMessage('get_ticket', { ticketId: '1' }, 4) });
      // The pod token is checked against the file, not the broker: the request gets as far as asking the broker.
      expect(response.status).toBe(502);
      expect(await response.json()).toMatchObject({ id: 4, error: { code: -32603, message: expect.stringContaining('cannot reach the chainwarden broker') as unknown } });
    } finally {
      await lonely.close();
    }
  });
});

describe("the system's server is where the broker says, whatever the pod's hosts file says", () => {
  it("a request goes to the address the broker resolved, with the name in Host: an agent that points the name at a listener of its own in /etc/hosts gets no credential", async () => {
    // The agent's listener on the address the pod's resolver gives for the name (localhost is 127.0.0.1 in every hosts file)...
    const heard: http.IncomingHttpHeaders[] = [];
    const record = (into: http.IncomingHttpHeaders[]) => http.createServer((req, res) => {
      into.push(req.headers);
      req.resume();
      req.on('end', () => res.writeHead(202).end());
    });
    const attacker = record(heard);
    await new Promise<void>((done) => attacker.listen(0, '127.0.0.1', done));
    const port = (attacker.address() as net.AddressInfo).port;
    // ...and the system's real server, on the same port at the address the broker resolved the name to.
    const served: http.IncomingHttpHeaders[] = [];
    const real = record(served);
    await new Promise<void>((done) => real.listen(port, '127.0.0.2', done));
    twin.decide = (request) => {
      const allowed = twin.allow(request);
      return { status: allowed.status, body: { ...(allowed.body as object), url: `http://localhost:${port}/mcp`, address: '127.0.0.2' } };
    };
    try {
      const answer = await fetch(`${sidecar.url}/mcp/tickets`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) });
      expect(answer.status).toBe(202);
      expect(heard).toEqual([]);
      expect(served).toEqual([expect.objectContaining({ host: `localhost:${port}`, authorization: UPSTREAM_CREDENTIAL })]);
      // A broker answer whose address is not an address, or that names a server without one (a replica of an earlier version), is not used.
      twin.decide = (request) => ({ status: 200, body: { ...(twin.allow(request).body as object), address: 'localhost' } });
      const refused = await raw({ path: '/mcp/tickets', headers: auth(), body: callMessage('get_ticket', { ticketId: '1' }, 'a') });
      expect(refused.status).toBe(502);
      expect(refused.body.error?.message).toContain('address is not an IP address');
      twin.decide = (request) => ({ status: 200, body: { ...(twin.allow(request).body as object), url: `http://localhost:${port}/mcp` } });
      const unresolved = await raw({ path: '/mcp/tickets', headers: auth(), body: callMessage('get_ticket', { ticketId: '1' }, 'b') });
      expect(unresolved.status).toBe(502);
      expect(unresolved.body.error?.message).toContain('it names the server localhost without the address the broker resolved it to; every operator replica must run this version');
      // Kept-alive connections are kept by address: the next request for the name, pinned, goes where the broker says again.
      twin.decide = (request) => ({ status: 200, body: { ...(twin.allow(request).body as object), url: `http://localhost:${port}/mcp`, address: '127.0.0.2' } });
      expect((await fetch(`${sidecar.url}/mcp/tickets`, { method: 'POST', headers: { ...auth(), 'content-type': 'application/json', accept: 'application/json, text/event-stream' }, body: JSON.stringify({ jsonrpc: '2.0', method: 'notifications/initialized' }) })).status).toBe(202);
      expect(served).toHaveLength(2);
      expect(heard).toEqual([]);
    } finally {
      await Promise.all([attacker, real].map((server) => new Promise((done) => server.close(done))));
    }
  });
});

describe('the log', () => {
  it('holds no credential, Txn-Token, local token or argument', async () => {
    const client = await connect('tickets');
    await client.callTool({ name: 'get_ticket', arguments: { ticketId: PRIVATE_ARGUMENT } });
    const hopId = twin.nextHopId();
    twin.decide = (request: McpForwardRequest) => (request.call ? deny(hopId, 'no-exfiltration') : twin.allow(request));
    await rpcError(client.callTool({ name: 'send_email', arguments: { to: PRIVATE_ARGUMENT, body: PRIVATE_ARGUMENT } }));
    const log = logLines.join('');
    expect(log).toContain('mcp message passed on');
    expect(log).toContain('mcp message refused');
    for (const secret of ['upstream-secret', 'txn-for-', localToken, POD_TOKEN, PRIVATE_ARGUMENT]) expect(log).not.toContain(secret);
  });
});
