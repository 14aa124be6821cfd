import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { randomUUID } from 'node:crypto';

/**
 * An HTTP hop in front of the STS/IAM emulator that misbehaves on cue, as AWS does on a bad day:
 * throttling, 5xx, slow answers, connections reset. The operator's STS and IAM endpoints point at
 * it; tests script faults for their own roles through its control paths, so tests running before
 * and after see a plain pass-through.
 *
 * Control paths (same port, a prefix no AWS SDK sends to):
 * - `PUT /chainwarden-faults/rules` with `{match, rules}`: the rules for calls whose parameters name `match`
 * - `DELETE /chainwarden-faults/rules?match=…`: those rules are gone (a held answer stays held)
 * - `GET /chainwarden-faults/calls?match=…`: every call that named `match`, in order, with what was done to it
 */

export type AwsService = 'sts' | 'iam';

export type Fault =
  /** 400 with the query protocol's `Throttling` error, which every AWS SDK retries as throttling. */
  | { kind: 'throttle' }
  /** A server error with a query-protocol body. */
  | { kind: 'status'; status: 500 | 502 | 503 | 504 }
  /** The call reaches the emulator at once (it does the work) and its answer is held back this long. */
  | { kind: 'delay'; ms: number }
  /** The connection is reset: before the call reaches the emulator, or after the emulator answered it. */
  | { kind: 'reset'; after?: boolean };

export interface FaultRule {
  service: AwsService;
  /** Only these Actions (AssumeRole, PutRolePolicy, …); every Action of the service when absent. */
  actions?: string[];
  fault: Fault;
  /** Applies to this many matching calls, then lets them pass; to every one when absent. */
  times?: number;
}

export interface SeenCall {
  at: number;
  service: AwsService | 'unknown';
  action: string;
  /** The call's form parameters that name what it is about. */
  params: Record<string, string>;
  /** What the proxy did to it; `forwarded` when nothing. */
  outcome: Fault['kind'] | 'forwarded';
}

const CONTROL = '/chainwarden-faults';
const NAMING_PARAMS = ['RoleArn', 'RoleName', 'PolicyName', 'RoleSessionName', 'SourceIdentity'];

/** The service a SigV4 Authorization header was signed for: `Credential=AKID/date/region/<service>/aws4_request`. */
function serviceOf(authorization: string | undefined): AwsService | 'unknown' {
  const service = /Credential=[^/]+\/[^/]+\/[^/]+\/([^/]+)\/aws4_request/.exec(authorization ?? '')?.[1];
  return service === 'sts' || service === 'iam' ? service : 'unknown';
}

const XMLNS: Record<AwsService, string> = { sts: 'https://sts.amazonaws.com/doc/2011-06-15/', iam: 'https://iam.amazonaws.com/doc/2010-05-08/' };

function errorBody(service: AwsService, code: string, message: string, type: 'Sender' | 'Receiver'): string {
  return `<ErrorResponse xmlns="${XMLNS[service]}"><Error><Type>${type}</Type><Code>${code}</Code><Message>${message}</Message></Error><RequestId>${randomUUID()}</RequestId></ErrorResponse>`;
}

function sendXml(res: http.ServerResponse, status: number, body: string): void {
  res.writeHead(status, { 'content-type': 'text/xml', 'content-length': Buffer.byteLength(body), 'x-amzn-requestid': randomUUID() });
  res.end(body);
}

const readBody = (req: http.IncomingMessage) =>
  new Promise<Buffer>((resolve, reject) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });

interface Answer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

export interface AwsFaultProxy {
  /** What the operator is given as its STS and IAM endpoint. */
  url: string;
  close(): Promise<void>;
}

/** Starts the proxy in front of `target` (the emulator's http URL). */
export async function startAwsFaultProxy(target: string): Promise<AwsFaultProxy> {
  const upstream = new URL(target);
  const rules = new Map<string, (FaultRule & { used: number })[]>();
  const calls: SeenCall[] = [];
  const held = new Set<NodeJS.Timeout>();
  const sockets = new Set<Socket>();

  const forward = (req: http.IncomingMessage, body: Buffer) =>
    new Promise<Answer>((resolve, reject) => {
      const out = http.request({ host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers }, (answer) => {
        readBody(answer).then((b) => resolve({ status: answer.statusCode ?? 502, headers: answer.headers, body: b }), reject);
      });
      out.on('error', reject);
      out.end(body);
    });

  const ruleFor = (service: AwsService | 'unknown', action: string, params: Record<string, string>) => {
    for (const [match, list] of rules) {
      if (!Object.values(params).some((v) => v.includes(match))) continue;
      const rule = list.find((r) => r.service === service && (!r.actions || r.actions.includes(action)) && (r.times === undefined || r.used < r.times));
      if (rule) {
        rule.used++;
        return rule.fault;
      }
    }
    return undefined;
  };

  const control = async (req: http.IncomingMessage, res: http.ServerResponse, url: URL) => {
    const match = url.searchParams.get('match') ?? '';
    if (url.pathname === `${CONTROL}/rules` && req.method === 'PUT') {
      const spec = JSON.parse((await readBody(req)).toString()) as { match: string; rules: FaultRule[] };
      if (!spec.match) throw new Error('a rule set needs a non-empty match');
      rules.set(spec.match, spec.rules.map((r) => ({ ...r, used: 0 })));
    } else if (url.pathname === `${CONTROL}/rules` && req.method === 'DELETE') {
      rules.delete(match);
    } else if (url.pathname === `${CONTROL}/calls` && req.method === 'GET') {
      const mine = calls.filter((c) => Object.values(c.params).some((v) => v.includes(match)));
      res.writeHead(200, { 'content-type': 'application/json' });
      return void res.end(JSON.stringify(mine));
    } else {
      res.writeHead(404);
      return void res.end();
    }
    res.writeHead(204);
    res.end();
  };

  const server = http.createServer((req, res) => {
    void (async () => {
      const url = new URL(req.url ?? '/', 'http://proxy');
      if (url.pathname.startsWith(CONTROL)) return control(req, res, url);
      const body = await readBody(req);
      const form = new URLSearchParams(body.toString('utf8'));
      const service = serviceOf(req.headers.authorization);
      const action = form.get('Action') ?? '';
      const params = Object.fromEntries(NAMING_PARAMS.filter((p) => form.has(p)).map((p) => [p, form.get(p) ?? '']));
      const fault = service === 'unknown' ? undefined : ruleFor(service, action, params);
      calls.push({ at: Date.now(), service, action, params, outcome: fault?.kind ?? 'forwarded' });
      if (calls.length > 10_000) calls.splice(0, calls.length - 10_000);
      if (fault?.kind === 'throttle' && service !== 'unknown') return sendXml(res, 400, errorBody(service, 'Throttling', 'Rate exceeded', 'Sender'));
      if (fault?.kind === 'status' && service !== 'unknown') return sendXml(res, fault.status, errorBody(service, fault.status === 503 ? 'ServiceUnavailable' : 'InternalFailure', 'The service is unavailable; try again later', 'Receiver'));
      if (fault?.kind === 'reset' && !fault.after) return void req.socket.destroy();
      const answer = await forward(req, body);
      if (fault?.kind === 'reset') return void req.socket.destroy();
      if (fault?.kind === 'delay') {
        await new Promise<void>((resolve) => {
          const timer = setTimeout(() => (held.delete(timer), resolve()), fault.ms);
          held.add(timer);
        });
      }
      if (req.socket.destroyed) return;
      res.writeHead(answer.status, answer.headers);
      res.end(answer.body);
    })().catch((err: unknown) => {
      if (res.headersSent) return void res.destroy();
      res.writeHead(502, { 'content-type': 'text/plain' });
      res.end(`fault proxy: ${err instanceof Error ? err.message : String(err)}`);
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const t of held) clearTimeout(t);
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** A test's handle on the proxy: faults for calls that name `match` (a role name of the test's own). */
export class AwsFaults {
  constructor(
    private readonly proxyUrl: string,
    readonly match: string,
  ) {}

  async inject(rules: FaultRule[]): Promise<void> {
    const res = await fetch(`${this.proxyUrl}${CONTROL}/rules`, { method: 'PUT', body: JSON.stringify({ match: this.match, rules }) });
    if (res.status !== 204) throw new Error(`fault proxy refused the rules: ${res.status} ${await res.text()}`);
  }

  /** AWS behaves again; answers already held back stay held. */
  async heal(): Promise<void> {
    await fetch(`${this.proxyUrl}${CONTROL}/rules?match=${encodeURIComponent(this.match)}`, { method: 'DELETE' });
  }

  /** Every call that named `match`, optionally of one Action, with what the proxy did to it. */
  async calls(action?: string): Promise<SeenCall[]> {
    const res = await fetch(`${this.proxyUrl}${CONTROL}/calls?match=${encodeURIComponent(this.match)}`);
    const all = (await res.json()) as SeenCall[];
    return action ? all.filter((c) => c.action === action) : all;
  }
}
