import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { isInitializeRequest } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';

/** One tool of a demo server: its argument names (all strings) and what it answers. */
export interface DemoTool {
  description: string;
  arguments: string[];
  answer: (args: Record<string, string>) => string;
}

/** What the server saw of one tools/call: the tool, its arguments and the headers it came with. */
export interface SeenCall {
  tool: string;
  arguments: Record<string, string>;
  headers: http.IncomingHttpHeaders;
}

export interface DemoMcpServer {
  url: string;
  calls: SeenCall[];
  /** Every request, tools/call or not, with its headers. */
  requests: http.IncomingHttpHeaders[];
  close(): Promise<void>;
}

/**
 * A small MCP server (Streamable HTTP, sessions) made with the MCP SDK: the tickets and email
 * systems of the demo, and the upstream of the gateway's tests. With `bearer`, a request without
 * `Authorization: Bearer <bearer>` is a 401, as a real server behind a credential would answer.
 */
export async function startDemoMcpServer(name: string, tools: Record<string, DemoTool>, options: { bearer?: string } = {}): Promise<DemoMcpServer> {
  const sessions = new Map<string, StreamableHTTPServerTransport>();
  const calls: SeenCall[] = [];
  const requests: http.IncomingHttpHeaders[] = [];
  let current: http.IncomingHttpHeaders = {};

  const newSession = async () => {
    const server = new McpServer({ name, version: '1.0.0' });
    for (const [tool, spec] of Object.entries(tools)) {
      const shape = Object.fromEntries(spec.arguments.map((a) => [a, z.string()]));
      server.registerTool(tool, { description: spec.description, inputSchema: shape }, (args: Record<string, string>) => {
        calls.push({ tool, arguments: args, headers: current });
        return { content: [{ type: 'text' as const, text: spec.answer(args) }] };
      });
    }
    const transport: StreamableHTTPServerTransport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      onsessioninitialized: (id) => void sessions.set(id, transport),
    });
    transport.onclose = () => {
      if (transport.sessionId) sessions.delete(transport.sessionId);
    };
    await server.connect(transport);
    return transport;
  };

  const handle = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    requests.push(req.headers);
    if (options.bearer !== undefined && req.headers.authorization !== `Bearer ${options.bearer}`) {
      res.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32000, message: 'unauthorized' } }));
      return;
    }
    let body: unknown;
    if (req.method === 'POST') {
      const chunks: Buffer[] = [];
      for await (const chunk of req as AsyncIterable<Buffer>) chunks.push(chunk);
      body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as unknown;
    }
    const id = req.headers['mcp-session-id'];
    let transport = typeof id === 'string' ? sessions.get(id) : undefined;
    if (!transport && req.method === 'POST' && isInitializeRequest(body)) transport = await newSession();
    if (!transport) {
      res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32000, message: 'no such session' } }));
      return;
    }
    current = req.headers;
    await transport.handleRequest(req, res, body);
  };

  const server = http.createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent) res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32603, message: String(err) } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/mcp`,
    calls,
    requests,
    close: async () => {
      await Promise.all([...sessions.values()].map((t) => t.close()));
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The demo's ticket system: internal, holds customer data. */
export const TICKET_TOOLS: Record<string, DemoTool> = {
  read: { description: 'Read a support ticket.', arguments: ['ticketId'], answer: (a) => JSON.stringify({ ticket: a.ticketId, customer: 'Ada', email: 'ada@example.com', text: 'My refund has not arrived.' }) },
  comment: { description: 'Comment on a ticket.', arguments: ['ticketId', 'text'], answer: (a) => `commented on ${a.ticketId}` },
  delete: { description: 'Delete a ticket.', arguments: ['ticketId'], answer: (a) => `deleted ${a.ticketId}` },
};

/** The demo's email system: outside the organisation. */
export const EMAIL_TOOLS: Record<string, DemoTool> = {
  send: { description: 'Send an email.', arguments: ['to', 'body'], answer: (a) => `sent to ${a.to}` },
};
