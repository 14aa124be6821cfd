import http from 'node:http';
import type net from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { McpGateway } from '../../../src/agent/mcp-gateway.js';
import type { McpForwarder } from '../../../src/agent/mcp-forwarder.js';
import { createLogger } from '../../../src/log.js';
import { META_HOP_ID } from '../../../src/mcp/forward-api.js';

/**
 * The MCP gateway under a hostile server: the gateway alone, a scripted broker, scripted
 * servers, and an agent speaking raw HTTP.
 */

const BUDGET = 256 * 1024;
const systems = new Map<string, string>();
let hops = 0;
const forwarder: McpForwarder = {
  forward: (request) => {
    const url = systems.get(request.system);
    if (!url) return Promise.resolve({ ok: false, status: 404, refusal: { error: { code: 'mcp_unknown_system', message: `no ${request.system}` } } });
    const hopId = request.call ? `h1_${String(++hops).padStart(12, 'A')}_CCCCCCCCCCCCCCCC` : undefined;
    return Promise.resolve({ ok: true, answer: { url, headers: {}, reasons: [], ...(hopId ? { hopId } : {}) } });
  },
  hop: () => Promise.reject(new Error('not scripted')),
};

let gateway: McpGateway;
let sidecar: http.Server;
let sidecarPort = 0;
const responses: http.ServerResponse[] = [];
const sockets: net.Socket[] = [];
const upstreams: http.Server[] = [];

function startSidecar(maxHeldBytes: number): Promise<void> {
  gateway = new McpGateway({ forwarder, log: createLogger({ level: 'silent' }), answerTimeoutMs: 500, maxHeldBytes });
  sidecar = http.createServer((req, res) => {
    responses.push(res);
    sockets.push(req.socket);
    void gateway.handle(req, res, (req.url ?? '').split('/')[2] ?? '');
  });
  return new Promise((resolve) => sidecar.listen(0, '127.0.0.1', () => ((sidecarPort = (sidecar.address() as net.AddressInfo).port), resolve())));
}
const held = () => (gateway as unknown as { answers: { held: number } }).answers.held;

async function system(name: string, handle: http.RequestListener): Promise<void> {
  const server = http.createServer(handle);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  upstreams.push(server);
  systems.set(name, `http://127.0.0.1:${(server.address() as net.AddressInfo).port}/mcp`);
}

function raw(options: { method?: string; path: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: sidecarPort, method: options.method ?? 'POST', path: options.path, headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream', ...options.headers } }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end(options.body);
  });
}
const rpc = (message: object) => JSON.stringify({ jsonrpc: '2.0', ...message });
const callMessage = (name: string, args: object, id: number, params: object = {}) => rpc({ id, method: 'tools/call', params: { name, arguments: args, ...params } });
interface SentMessage {
  id: unknown;
  method: string;
  params?: { arguments?: { ticketId?: string }; task?: unknown; taskId?: string };
}
const readBody = (req: http.IncomingMessage): Promise<SentMessage> =>
  new Promise((resolve) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(chunks.length ? (JSON.parse(Buffer.concat(chunks).toString('utf8')) as SentMessage) : { id: null, method: '' }));
  });
const small = (id: unknown) => JSON.stringify({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: 'small' }] } });
/** A system answering every call with a small JSON answer. */
const plain: http.RequestListener = (req, res) => void readBody(req).then(({ id }) => res.writeHead(200, { 'content-type': 'application/json' }).end(small(id)));

afterEach(async () => {
  for (const server of upstreams.splice(0)) {
    server.closeAllConnections();
    server.close();
  }
  systems.clear();
  sidecar?.closeAllConnections();
  await new Promise((r) => sidecar?.close(r));
  gateway?.close();
  responses.length = 0;
  sockets.length = 0;
});

describe("what the gateway holds of servers' answers is bounded, and nothing holds it for long", () => {
  it('keep-alive comments on a stream the agent reads hold nothing: another system\'s answer passes while the stream stays open', async () => {
    await startSidecar(BUDGET);
    let streamRes: http.ServerResponse | undefined;
    await system('noisy', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      // Nearly the whole bound in keep-alives, passed on at once; the stream stays open, as a GET stream does.
      res.write(': k\n\n'.repeat(Math.floor((BUDGET - 20) / 5)));
      streamRes = res;
    });
    await system('plain', plain);
    let seen = 0;
    await new Promise<void>((resolve) => {
      http.get({ host: '127.0.0.1', port: sidecarPort, path: '/mcp/noisy', headers: { accept: 'text/event-stream' } }, (res) => {
        res.on('data', (c: Buffer) => {
          seen += c.length;
          if (seen >= Math.floor((BUDGET - 20) / 5) * 4) resolve();
        });
      });
    });
    expect(held()).toBe(0);
    const other = await raw({ path: '/mcp/plain', body: callMessage('get_ticket', { ticketId: 'T-1' }, 1) });
    streamRes?.end();
    expect(other.status).toBe(200);
  });

  it('a server that stops halfway through a large event has its stream cut off after the answer timeout, and what it held is given back', async () => {
    await startSidecar(BUDGET);
    await system('stalled', (req, res) => {
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      res.write(`data: ${'x'.repeat(BUDGET - 64)}`);
    });
    await system('plain', plain);
    let ended = false;
    http.get({ host: '127.0.0.1', port: sidecarPort, path: '/mcp/stalled', headers: { accept: 'text/event-stream' } }, (res) => {
      res.resume();
      res.on('close', () => (ended = true));
    });
    await new Promise((r) => setTimeout(r, 150));
    // While it stalls, the event holds nearly all: another answer is refused, saying the call ran.
    expect(held()).toBeGreaterThan(BUDGET / 2);
    const during = await raw({ path: '/mcp/plain', body: callMessage('get_ticket', { ticketId: 'T-1' }, 1) });
    expect(during.status).toBe(503);
    expect(during.text).toContain('the call ran and its answer was not passed on');
    // Past the answer timeout (0.5 s) the stalled stream is cut off.
    await new Promise((r) => setTimeout(r, 700));
    expect(ended).toBe(true);
    expect(held()).toBe(0);
    expect((await raw({ path: '/mcp/plain', body: callMessage('get_ticket', { ticketId: 'T-2' }, 2) })).status).toBe(200);
  });
});

describe('a connection the agent keeps alive', () => {
  it('carries many answers without the gateway leaving anything on it', async () => {
    await startSidecar(BUDGET);
    await system('plain', plain);
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    try {
      for (let id = 1; id <= 30; id++) {
        const status = await new Promise<number>((resolve, reject) => {
          const req = http.request({ host: '127.0.0.1', port: sidecarPort, method: 'POST', path: '/mcp/plain', agent, headers: { 'content-type': 'application/json', accept: 'application/json, text/event-stream' } }, (res) => {
            res.resume();
            res.on('end', () => resolve(res.statusCode ?? 0));
          });
          req.on('error', reject);
          req.end(callMessage('get_ticket', { ticketId: `T-${id}` }, id));
        });
        expect(status).toBe(200);
      }
      // One connection served all thirty; what each answer waited on is gone from it.
      expect(new Set(sockets).size).toBe(1);
      expect(sockets[0]?.listenerCount('close')).toBeLessThan(5);
      expect(sockets[0]?.listenerCount('drain')).toBeLessThan(5);
    } finally {
      agent.destroy();
    }
  });
});

describe('the hop of a task', () => {
  it("a server that names an existing task in an ordinary call's result does not move that task's hop to the ordinary call", async () => {
    await startSidecar(BUDGET);
    await system('tasks', (req, res) =>
      void readBody(req).then((sent) => {
        res.writeHead(200, { 'content-type': 'application/json' });
        if (sent.method === 'tools/call' && sent.params?.task) return void res.end(JSON.stringify({ jsonrpc: '2.0', id: sent.id, result: { task: { taskId: 'T1', status: 'working', createdAt: new Date().toISOString(), lastUpdatedAt: new Date().toISOString(), ttl: 60000 } } }));
        if (sent.method === 'tools/call') return void res.end(JSON.stringify({ jsonrpc: '2.0', id: sent.id, result: { content: [{ type: 'text', text: 'B' }], task: { taskId: 'T1' } } }));
        res.end(JSON.stringify({ jsonrpc: '2.0', id: sent.id, result: { content: [{ type: 'text', text: 'result of the task call A began' }] } }));
      }),
    );
    const a = await raw({ path: '/mcp/tasks', body: callMessage('export', {}, 1, { task: { ttl: 60000 } }) });
    const b = await raw({ path: '/mcp/tasks', body: callMessage('get_ticket', { ticketId: 'T-1' }, 2) });
    const r = await raw({ path: '/mcp/tasks', body: rpc({ id: 3, method: 'tasks/result', params: { taskId: 'T1' } }) });
    const hopOf = (text: string) => (JSON.parse(text) as { result?: { _meta?: Record<string, unknown> } }).result?._meta?.[META_HOP_ID];
    expect(hopOf(a.text)).toMatch(/^h1_/);
    expect(hopOf(b.text)).not.toBe(hopOf(a.text));
    expect(hopOf(r.text)).toBe(hopOf(a.text));
  });
});

describe('what asks no answer gets none the gateway has not checked', () => {
  it('a GET answered 200 with another content type than an event stream is a 502, its body never passed on', async () => {
    await startSidecar(BUDGET);
    const forged = `event: message\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: 1, result: { content: [{ type: 'text', text: 'forged' }], _meta: { [META_HOP_ID]: 'h1_FORGEDFORGED_CCCCCCCCCCCCCCCC' } } })}\n\n`;
    await system('liar', (req, res) => void res.writeHead(200, { 'content-type': 'application/json' }).end(forged));
    const get = await raw({ method: 'GET', path: '/mcp/liar', headers: { accept: 'text/event-stream' } });
    expect(get.status).toBe(502);
    expect(get.text).not.toContain('FORGED');
    // A notification answered the same way: nothing of it reaches the agent either.
    const note = await raw({ path: '/mcp/liar', body: rpc({ method: 'notifications/initialized' }) });
    expect(note.status).toBe(502);
    expect(note.text).not.toContain('FORGED');
  });
});
