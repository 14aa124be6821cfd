import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { InMemoryTaskStore } from '@modelcontextprotocol/sdk/experimental/tasks/stores/in-memory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport, type EventStore } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest, type CallToolResult, type JSONRPCMessage } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import type { McpForwardRequest } from '../../src/mcp/forward-api.js';
import { silentLogger } from '../../src/log.js';
import { CertificateAuthority } from '../../src/pki/authority.js';
import { readJson, sendJson } from '../../src/server/http.js';
import { serveHttps } from '../../src/server/https.js';

/** What an MCP server saw of one HTTP request. */
export interface SeenRequest {
  httpMethod: string;
  rpcMethod: string | undefined;
  headers: http.IncomingHttpHeaders;
  /** The body as it arrived, byte for byte: what a server in any language would parse. */
  body: string;
}

async function readAll(req: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function listen(server: http.Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

function stop(server: http.Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/**
 * A server's store of the events it sent, so that a client that reconnects with Last-Event-ID gets
 * what followed on that stream. Events are replayed in the order they were sent (the SDK's example
 * store orders them by their ids, which are random past the millisecond).
 */
function eventStore(): EventStore {
  const events: { id: string; streamId: string; message: JSONRPCMessage }[] = [];
  return {
    storeEvent: (streamId, message) => {
      const id = `${streamId}.${events.length}`;
      events.push({ id, streamId, message });
      return Promise.resolve(id);
    },
    replayEventsAfter: async (lastEventId, { send }) => {
      const at = events.findIndex((e) => e.id === lastEventId);
      if (at < 0) throw new Error(`no event ${lastEventId}`);
      const { streamId } = events[at] as { streamId: string };
      for (const event of events.slice(at + 1)) if (event.streamId === streamId && Object.keys(event.message).length > 0) await send(event.id, event.message);
      return streamId;
    },
  };
}

/**
 * A ticket system's MCP server, made with the MCP SDK as its authors would: `McpServer` behind
 * `StreamableHTTPServerTransport`, one session per client (session ids), answering with event
 * streams (resumable ones) or, with `json`, with JSON. It records every request it sees and every tool it runs.
 */
/**
 * An MCP SDK server with the tickets tools. With `tasks`, it also runs `export_tickets` as a task
 * (protocol 2025-11-25): the call answers with the task, whose result is fetched with `tasks/result`.
 */
export async function startMcpUpstream(options: { json?: boolean; tasks?: boolean } = {}) {
  const seen: SeenRequest[] = [];
  const calls: { tool: string; args: Record<string, unknown> }[] = [];
  const sessions = new Map<string, StreamableHTTPServerTransport>();

  const taskStore = new InMemoryTaskStore();
  const serverForSession = () => {
    const server = new McpServer({ name: 'tickets', version: '1.0.0' }, options.tasks ? { capabilities: { tasks: { requests: { tools: { call: {} } } } }, taskStore } : {});
    if (options.tasks) {
      server.experimental.tasks.registerToolTask('export_tickets', { description: 'Export every ticket, in the background', inputSchema: { format: z.string() } }, {
        createTask: async (args, extra) => {
          calls.push({ tool: 'export_tickets', args });
          const task = await extra.taskStore.createTask({ ttl: extra.taskRequestedTtl });
          setTimeout(() => void extra.taskStore.storeTaskResult(task.taskId, 'completed', { content: [{ type: 'text', text: `exported as ${args.format}` }] }), 50);
          return { task };
        },
        getTask: (_args, extra) => extra.taskStore.getTask(extra.taskId),
        getTaskResult: async (_args, extra) => (await extra.taskStore.getTaskResult(extra.taskId)) as CallToolResult,
      });
    }
    server.registerTool('get_ticket', { description: 'Read a ticket', inputSchema: { ticketId: z.string() } }, async (args, extra) => {
      calls.push({ tool: 'get_ticket', args });
      // A notification before the result: the gateway passes it on as it came.
      const progressToken = extra._meta?.progressToken;
      if (progressToken !== undefined) await extra.sendNotification({ method: 'notifications/progress', params: { progressToken, progress: 1, total: 1, message: 'read from the ticket store' } });
      return { content: [{ type: 'text', text: `ticket ${args.ticketId}: the printer is on fire` }] };
    });
    server.registerTool('send_email', { description: 'Send an email', inputSchema: { to: z.string(), body: z.string() } }, (args) => {
      calls.push({ tool: 'send_email', args });
      return { content: [{ type: 'text', text: `sent to ${args.to}` }] };
    });
    server.registerTool('admin_wipe', { description: 'Delete every ticket' }, () => {
      calls.push({ tool: 'admin_wipe', args: {} });
      return { content: [{ type: 'text', text: 'wiped' }] };
    });
    return server;
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      const text = req.method === 'POST' ? await readAll(req) : '';
      const body = text === '' ? undefined : (JSON.parse(text) as unknown);
      seen.push({ httpMethod: req.method ?? '', rpcMethod: (body as { method?: string } | undefined)?.method, headers: req.headers, body: text });
      const sessionId = req.headers['mcp-session-id'];
      let transport = typeof sessionId === 'string' ? sessions.get(sessionId) : undefined;
      if (!transport) {
        if (!isInitializeRequest(body)) {
          res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', error: { code: -32001, message: 'Session not found' }, id: null }));
          return;
        }
        // An event store makes the streams resumable: a client that reconnects with Last-Event-ID gets what it missed, replayed.
        const created = new StreamableHTTPServerTransport({ sessionIdGenerator: randomUUID, enableJsonResponse: options.json ?? false, eventStore: options.json ? undefined : eventStore(), onsessioninitialized: (id) => void sessions.set(id, created), onsessionclosed: (id) => void sessions.delete(id) });
        await serverForSession().connect(created);
        transport = created;
      }
      await transport.handleRequest(req, res, body);
    })();
  });
  const url = `${await listen(server)}/mcp`;
  return {
    url,
    seen,
    calls,
    sessions,
    close: async () => {
      await Promise.all([...sessions.values()].map((t) => t.close()));
      taskStore.cleanup();
      await stop(server);
    },
  };
}

/**
 * An "MCP server" that is not one: it answers what `answer` says (garbage, an HTML page), or
 * with `hang`, accepts the request and never answers, or stops halfway through its answer.
 */
export async function startBrokenUpstream(answer: { hang: 'before' | 'midway' } | { status: number; contentType: string; body: string }) {
  let requests = 0;
  const server = http.createServer((req, res) => {
    requests++;
    req.resume();
    if (!('hang' in answer)) return void res.writeHead(answer.status, { 'content-type': answer.contentType }).end(answer.body);
    // Midway: the head and the first bytes of a JSON answer, then nothing.
    if (answer.hang === 'midway') res.writeHead(200, { 'content-type': 'application/json' }).write('{"jsonrpc":"2.0",');
  });
  const url = `${await listen(server)}/mcp`;
  return { url, requests: () => requests, close: () => stop(server) };
}

/** The broker's answer to one forward request, as the test scripts it. */
export type ForwardDecision = { status: number; body: unknown };

/** The credential the broker adds for every system: what the agent must never see. */
export const UPSTREAM_CREDENTIAL = 'Bearer upstream-secret-of-the-tickets-system';
export const txnTokenOf = (hopId: string) => `eyJ0eXAiOiJ0eG50b2tlbitqd3QifQ.txn-for-${hopId}.sig`;

/**
 * The broker's `POST /v1/mcp/forward` and `GET /v1/hops/{id}`, as a twin: it checks the pod
 * token, records every question, and answers as the test says. By default every message of a
 * known system is allowed, with the system's credential and, for a call, a hop id and Txn-Token.
 */
export async function startForwardTwin(options: { podToken: string }) {
  const ca = await CertificateAuthority.create('mcp-gateway-test');
  const tls = await ca.issueServing('broker', { ips: ['127.0.0.1'] });
  const systems = new Map<string, string>();
  const forwards: McpForwardRequest[] = [];
  const polls: string[] = [];
  let hops = 0;
  const nextHopId = () => `h1_${String(++hops).padStart(12, 'A')}_CCCCCCCCCCCCCCCC`;

  const allow = (request: McpForwardRequest, extra: Record<string, unknown> = {}): ForwardDecision => {
    const url = systems.get(request.system);
    if (!url) return { status: 404, body: { error: { code: 'mcp_unknown_system', message: `AgentPolicy support-agent has no system ${request.system} with an MCP server` } } };
    const hopId = request.call ? nextHopId() : undefined;
    const headers = { authorization: UPSTREAM_CREDENTIAL, ...(hopId ? { 'txn-token': txnTokenOf(hopId) } : {}) };
    return { status: 200, body: { url, headers, ...(hopId ? { hopId, reasons: [{ rule: 'read-tickets', effect: 'Allow' }] } : {}), ...extra } };
  };
  const twin = {
    url: '',
    caPem: ca.certPem,
    systems,
    forwards,
    polls,
    nextHopId,
    allow,
    /** The test's script; `allow` unless it says otherwise. */
    decide: (request: McpForwardRequest): ForwardDecision => allow(request),
    /** `GET /v1/hops/{id}`'s answer. */
    hopStatus: (hopId: string): ForwardDecision => ({ status: 404, body: { error: { code: 'hop_not_found', message: `hop ${hopId} is not a hop of this task` } } }),
    close: (): Promise<void> => server.close(),
  };
  const authenticated = (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.headers.authorization === `Bearer ${options.podToken}`) return true;
    sendJson(res, 401, { error: { code: 'unauthenticated', message: 'the pod token is not valid' } });
    return false;
  };
  const server = await serveHttps(
    {
      '/v1/mcp/forward': async (req, res) => {
        if (!authenticated(req, res)) return;
        const request = (await readJson(req, 2 * 1024 * 1024)) as McpForwardRequest;
        forwards.push(request);
        const { status, body } = twin.decide(request);
        sendJson(res, status, body);
      },
      '/v1/hops/': (req, res) => {
        if (!authenticated(req, res)) return Promise.resolve();
        const hopId = (req.url ?? '').slice('/v1/hops/'.length);
        polls.push(hopId);
        const { status, body } = twin.hopStatus(hopId);
        sendJson(res, status, body);
        return Promise.resolve();
      },
    },
    tls,
    { host: '127.0.0.1', port: 0 },
    silentLogger(),
  );
  twin.url = server.url;
  return twin;
}
