import type { IncomingMessage, ServerResponse } from 'node:http';
import { BROKER_AUDIENCE, endOf, RESERVED_AUDIENCES, SVID_POD_CLAIM } from '../api/task.js';
import type { SvidIssuer } from '../identity/svid.js';
import type { TaskStatusWriter } from '../kube/tasks.js';
import type { AgentTask } from '../api/schema.js';
import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';
import { readJson, sendJson, type Handler } from '../server/http.js';
import type { ListenerLimits } from '../server/https.js';
import { ChainwardenError } from '../errors.js';
import { isDnsLabel, isDnsSubdomain } from '../api/names.js';
import type { AgentAuthenticator, AgentPrincipal } from './auth.js';
import { parseHopId } from './hopids.js';
import type { HopAnswer, HopService } from './hops.js';
import type { CredentialBroker } from '../credentials/broker.js';
import { parseSignRequest, type AwsGateway } from '../aws/gateway.js';
import { MAX_SIGN_REQUEST_BYTES } from '../aws/sign-api.js';
import { parseForwardRequest, type McpGateway } from '../mcp/gateway.js';
import { CHAIN_TOUCHED_HEADER, chainTouchedOf } from '../agent/unbound-uploads.js';
import { kib, MemoryBudget } from '../agent/budget.js';

export interface BrokerDeps {
  auth: Pick<AgentAuthenticator, 'authenticate' | 'untilEnded'>;
  credentials: CredentialBroker;
  hops: HopService;
  issuer: SvidIssuer;
  /** The broker's status writer: the agent's completion is a fact it records. */
  status: Pick<TaskStatusWriter, 'update'>;
  /**
   * Called with the task as written once the agent's completion is in its status, before the
   * agent is answered: this replica refuses the task from then on, and the answer waits for
   * the watch to show the completion, so that the other replicas refuse it too by the time the
   * agent hears it is done.
   */
  completed?: (task: AgentTask, message: string) => Promise<void>;
  clock: Clock;
  log: Logger;
  /** The AWS gateway's signer; without it POST /v1/aws/sign is a 404. */
  aws?: AwsGateway;
  /** The MCP gateway's broker half; without it POST /v1/mcp/forward is a 404. */
  mcp?: McpGateway;
  /** The audience of transaction tokens, which /v1/svid never mints for. */
  trustDomain: string;
  /** The gateways' request bodies held at once (`GATEWAY_BODIES_BYTES` when absent). */
  gatewayBodiesBytes?: number;
  /** Decisions one pod may have in flight at once (`MAX_IN_FLIGHT_PER_POD` when absent). */
  maxInFlightPerPod?: number;
}

/**
 * The hop and gateway requests one pod may have in flight on a replica at once. A replica is one
 * event loop shared by every tenant: a pod sending without waiting for its answers (a thousand
 * connections, each with requests pipelined) would otherwise queue the others behind all of its
 * own; bounded, the others wait behind at most this many (some tens of milliseconds). Legitimate
 * agents, and the sidecar's gateways under load, stay far below it.
 */
export const MAX_IN_FLIGHT_PER_POD = 256;

/** Counts each pod's requests in flight, refusing one past the bound. */
class InFlight {
  private readonly counts = new Map<string, number>();

  constructor(private readonly max: number) {}

  /** Counts `who`'s request until `res` closes (answered, or the connection gone). */
  enter(who: AgentPrincipal, res: ServerResponse): void {
    const pod = who.podUid;
    const now = this.counts.get(pod) ?? 0;
    if (now >= this.max) {
      throw new ChainwardenError('too_many_requests', `pod ${who.podName} has ${now} requests in flight on this broker, the most a pod may; wait for their answers before sending more`);
    }
    this.counts.set(pod, now + 1);
    res.once('close', () => {
      const left = (this.counts.get(pod) ?? 1) - 1;
      if (left > 0) this.counts.set(pod, left);
      else this.counts.delete(pod);
    });
  }
}

const requireMethod = (req: IncomingMessage, method: string) => {
  if (req.method !== method) throw new ChainwardenError('method_not_allowed', `use ${method}`);
};

/** A document the issuer publishes for verifiers: read with GET (or HEAD), cacheable for five minutes. */
const published =
  (document: () => unknown): Handler =>
  (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') throw new ChainwardenError('method_not_allowed', 'use GET');
    return Promise.resolve(sendJson(res, 200, document(), { 'cache-control': 'max-age=300' }));
  };

const pathOf = (req: IncomingMessage) => (req.url ?? '').split('?')[0] ?? '';

/** A path segment as a message quotes it: short, and plainly text. */
const quoted = (segment: string) => JSON.stringify(segment.length > 64 ? `${segment.slice(0, 64)}…` : segment);

/*
 * Path parameters are checked here, before the caller is authenticated and before a body is
 * read: a path that cannot name anything is a 400 that costs no token verification, no API
 * server call and no parsing. Names are never percent-decoded: a valid one needs no escaping.
 */

/** `/v1/tasks/{namespace}/{name}/complete`, checked. */
export function parseTaskPath(path: string): { namespace: string; name: string } {
  const segments = path.slice('/v1/tasks/'.length).split('/');
  if (!path.startsWith('/v1/tasks/') || segments.length !== 3 || segments[2] !== 'complete') {
    throw new ChainwardenError('not_found', 'use POST /v1/tasks/{namespace}/{name}/complete');
  }
  const [namespace = '', name = ''] = segments;
  if (!isDnsLabel(namespace)) {
    throw new ChainwardenError('invalid_request', `the namespace in the path, ${quoted(namespace)}, is not a namespace name: at most 63 lowercase letters, digits and "-"`, { field: 'namespace' });
  }
  if (!isDnsSubdomain(name)) {
    throw new ChainwardenError('invalid_request', `the task name in the path, ${quoted(name)}, is not an AgentTask name: at most 253 lowercase letters, digits, "-" and "."`, { field: 'name' });
  }
  return { namespace, name };
}

/** `/v1/hops/{id}`: the id spelled exactly as the broker mints it. */
export function parseHopPath(path: string): string {
  const id = path.slice('/v1/hops/'.length);
  if (!parseHopId(id)) throw new ChainwardenError('invalid_hop', `${quoted(id)} is not a hop id; use the hopId a hop request answered with`, { field: 'hopId' });
  return id;
}

/** `/v1/credentials` (the `default` credential) or `/v1/credentials/{name}`. */
export function parseCredentialPath(path: string): string {
  if (path === '/v1/credentials') return 'default';
  const name = path.slice('/v1/credentials/'.length);
  if (!isDnsLabel(name)) {
    throw new ChainwardenError('invalid_request', `the credential name in the path, ${quoted(name)}, is not a credential name: at most 63 lowercase letters, digits and "-"`, { field: 'name' });
  }
  return name;
}

/** GET /v1/svid?audience=…: a JWT-SVID for the calling pod's task. */
function svid(deps: BrokerDeps): Handler {
  return async (req, res) => {
    requireMethod(req, 'GET');
    const audience = new URL(req.url ?? '/', 'http://x').searchParams.get('audience');
    if (!audience) throw new ChainwardenError('invalid_request', 'audience is required: GET /v1/svid?audience=<who will verify the token>', { field: 'audience' });
    if (RESERVED_AUDIENCES.includes(audience)) {
      throw new ChainwardenError('forbidden', `audience ${audience} is reserved: AWS credentials come only from /v1/credentials, where they are recorded and revocable; ask for an audience of your own service`, { field: 'audience' });
    }
    // Same issuer, same key, same subject: a service that checked a Txn-Token's signature and audience but not its typ would take the SVID for one.
    if (audience === deps.trustDomain) {
      throw new ChainwardenError('forbidden', `audience ${audience} is the trust domain, the audience of the transaction tokens the gateways send with allowed hops; ask for an audience of your own service`, { field: 'audience' });
    }
    const who = await deps.auth.authenticate(req.headers.authorization, { podTokenOnly: "an SVID is minted for the pod's token, which the sidecar presents: ask through the sidecar" });
    // For the broker itself: bound to this pod, so the SVID is refused once the pod or its binding is gone, as the pod's token is.
    const claims = audience === BROKER_AUDIENCE ? { [SVID_POD_CLAIM]: { namespace: who.namespace, name: who.podName, uid: who.podUid, serviceAccount: who.serviceAccount } } : {};
    const { token, expiresAt } = deps.issuer.mint(who.spiffeId, audience, undefined, claims);
    deps.log.info({ event: 'svid_issued', task: `${who.namespace}/${who.task.metadata.name ?? ''}`, pod: who.podName, audience }, 'JWT-SVID issued');
    sendJson(res, 200, { spiffeID: who.spiffeId, token, expiresAt: new Date(expiresAt).toISOString() }, { 'cache-control': 'no-store' });
  };
}

/** POST /v1/tasks/{namespace}/{name}/complete: the agent says the chain is done. */
function complete(deps: BrokerDeps): Handler {
  return async (req, res) => {
    requireMethod(req, 'POST');
    const { namespace, name } = parseTaskPath(pathOf(req));
    const who = await deps.auth.authenticate(req.headers.authorization);
    if (who.namespace !== namespace || who.task.metadata.name !== name) {
      throw new ChainwardenError('forbidden', `pod ${who.podName} is bound to AgentTask ${who.namespace}/${who.task.metadata.name ?? ''}, not ${namespace}/${name}`);
    }
    const now = deps.clock.now();
    let refusal: string | undefined;
    // A fact, not a state: the controller turns it into Completed (its Event and audit record),
    // and every replica's broker refuses the task as soon as its watch shows the fact.
    const written = await deps.status.update(namespace, name, (task) => {
      const end = endOf(task, now);
      refusal = end?.message;
      if (end) return undefined;
      return { ...task.status, completion: { pod: who.podName, at: new Date(now).toISOString() } };
    });
    if (!written) throw new ChainwardenError('task_not_active', `AgentTask ${namespace}/${name} is gone; it cannot complete`);
    if (refusal !== undefined) throw new ChainwardenError('task_not_active', `AgentTask ${namespace}/${name} ${refusal}; it cannot complete`);
    const state = 'Completed';
    await deps.completed?.(written, endOf(written, now)?.message ?? 'is Completed');
    deps.log.info({ event: 'task_completed', task: `${namespace}/${name}`, pod: who.podName }, 'agent reported completion');
    sendJson(res, 200, { state });
  };
}

/**
 * How long a credential request from a pod its task has not bound yet waits for the binding:
 * well inside the 1 s the AWS SDKs give the credentials endpoint, so an SDK that asks as its
 * task binds gets credentials the first time, and one that asks too early still hears why.
 */
export const CREDENTIALS_BINDING_WAIT_MS = 500;

/**
 * Every broker request is small and answered within seconds (a held MCP call waits in the sidecar,
 * which polls): a connection whose request has not arrived by these times is any pod's in the
 * cluster holding the listener, and is dropped. Any pod can connect without a token, and a kept-alive
 * connection costs the operator some 50 KiB, so one address keeps at most 1,024 open (a sidecar keeps
 * at most 16, and a node that hides its pods behind its own address has room for many).
 */
export const BROKER_LISTENER_LIMITS: ListenerLimits = { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000, maxConnectionsPerSource: 1_024 };

/** GET /v1/credentials[/{name}]: AWS container-credentials for the calling pod's task. */
function credentials(deps: BrokerDeps): Handler {
  return async (req, res) => {
    requireMethod(req, 'GET');
    const name = parseCredentialPath(pathOf(req));
    const who = await deps.auth.authenticate(req.headers.authorization, { waitForBindingMs: CREDENTIALS_BINDING_WAIT_MS });
    sendJson(res, 200, await deps.credentials.forAgent(who, name), { 'cache-control': 'no-store' });
  };
}

/** The longest GET /v1/task holds its answer: well inside the sidecar's 30 s for a silent broker. */
export const MAX_TASK_WAIT_SECONDS = 20;

/** `waitSeconds` of GET /v1/task, checked: a whole number of seconds up to MAX_TASK_WAIT_SECONDS; 0 when absent. */
export function parseWaitSeconds(url: string): number {
  const raw = new URLSearchParams(url.split('?')[1] ?? '').get('waitSeconds');
  if (raw === null) return 0;
  if (!/^\d{1,2}$/.test(raw) || Number(raw) > MAX_TASK_WAIT_SECONDS) {
    throw new ChainwardenError('invalid_request', `waitSeconds must be a whole number of seconds from 0 to ${MAX_TASK_WAIT_SECONDS}, not ${quoted(raw)}`, { field: 'waitSeconds' });
  }
  return Number(raw);
}

/**
 * `touched` of GET /v1/task, checked: what the caller last heard the chain had touched
 * (`CHAIN_TOUCHED_HEADER`), a whole number; undefined when absent.
 */
export function parseTouched(url: string): number | undefined {
  const raw = new URLSearchParams(url.split('?')[1] ?? '').get('touched');
  if (raw === null) return undefined;
  const touched = chainTouchedOf(raw);
  if (touched === undefined) throw new ChainwardenError('invalid_request', `touched must be a whole number (the ${CHAIN_TOUCHED_HEADER} of an earlier answer), not ${quoted(raw)}`, { field: 'touched' });
  return touched;
}

/**
 * GET /v1/task[?waitSeconds=N][&touched=M]: the caller's task while it is live. Answered at once
 * when the task has ended (403 task_not_active, as every endpoint then answers), else as soon as
 * it ends, or, with `touched`, as soon as its chain has touched more systems and data classes
 * than M (at once if it has already), else after `waitSeconds` with the task: how the sidecar
 * learns to close the streams it has open, and to cut the uploads its pod opened before a call of
 * another pod of the task, or one this sidecar did not carry, widened the chain. The answer says
 * what the chain has touched (`CHAIN_TOUCHED_HEADER`), as every answer to a sidecar that may
 * follow a decision does.
 */
function task(deps: BrokerDeps): Handler {
  return async (req, res) => {
    requireMethod(req, 'GET');
    const waitMs = parseWaitSeconds(req.url ?? '') * 1000;
    const touched = parseTouched(req.url ?? '');
    const widened = touched === undefined ? undefined : (who: AgentPrincipal) => deps.hops.touched(who.task) > touched;
    const who = await deps.auth.untilEnded(req.headers.authorization, waitMs, () => req.socket.destroyed, widened);
    const { namespace, name, uid } = who.task.metadata;
    sendJson(res, 200, { namespace, name, uid, state: who.task.status?.state ?? 'Pending' }, decidedHeaders(deps, who));
  };
}

/** The most a hop request may carry. */
const MAX_HOP_BYTES = 64 * 1024;

/**
 * POST /v1/hops: decide one hop; GET /v1/hops/{id}: its decision now (after approval or timeout).
 * The caller is authenticated before its body is read: an unknown caller costs no parsing.
 */
function hops(deps: BrokerDeps, inFlight: InFlight): Handler {
  return async (req, res) => {
    const path = pathOf(req);
    if (path === '/v1/hops') {
      requireMethod(req, 'POST');
      const who = await deps.auth.authenticate(req.headers.authorization);
      inFlight.enter(who, res);
      const body = await readJson(req, MAX_HOP_BYTES);
      const answer = await deps.hops.decide(who, body);
      sendJson(res, 200, answer, decidedHeaders(deps, who, answer));
      return;
    }
    requireMethod(req, 'GET');
    const id = parseHopPath(path);
    const who = await deps.auth.authenticate(req.headers.authorization);
    inFlight.enter(who, res);
    const answer = await deps.hops.status(who, id);
    sendJson(res, 200, answer, decidedHeaders(deps, who));
  };
}

/** An answer that may follow a decision (`decided`, the hop's answer): never cached, and saying what the chain had touched once it was decided. */
const decidedHeaders = (deps: BrokerDeps, who: AgentPrincipal, decided?: HopAnswer) => ({ 'cache-control': 'no-store', [CHAIN_TOUCHED_HEADER]: String(deps.hops.touched(who.task, decided)) });

/** A gateway's answer, and the answer of the hop it went on (its last hop) when it was allowed. */
export interface GatewayAnswer {
  status: number;
  body: unknown;
  decided?: HopAnswer;
}

/**
 * The gateways' request bodies the broker holds at once, as their requests declare them (the
 * bound when they declare none): a sign request may be 4 MiB, read whole and parsed, and every
 * sidecar of the cluster may send its calls at once, slowly. Past this bound a call is refused
 * with a 503, which the sidecar passes on as one SDKs retry, rather than the broker outgrowing
 * its memory limit and every task losing its gateway while it restarts.
 */
export const GATEWAY_BODIES_BYTES = 64 * 1024 * 1024;

/**
 * A gateway's one call from the sidecar: POST, the pod token, a bounded JSON body checked by
 * `parse` and counted against `bodies` while it is held, and the gateway's answer as it is,
 * never cached.
 */
function gatewayRoute<R>(deps: BrokerDeps, inFlight: InFlight, bodies: MemoryBudget, maxBytes: number, parse: (body: unknown) => R, answer: (who: AgentPrincipal, request: R) => Promise<GatewayAnswer>): Handler {
  return async (req, res) => {
    requireMethod(req, 'POST');
    const who = await deps.auth.authenticate(req.headers.authorization, { podTokenOnly: "the gateways' endpoints serve the pod's sidecar, which presents the pod's token: send AWS and MCP calls through the sidecar" });
    inFlight.enter(who, res);
    const declared = Number(req.headers['content-length'] ?? Number.NaN);
    const held = Number.isSafeInteger(declared) && declared >= 0 ? Math.min(declared, maxBytes) : maxBytes;
    if (!bodies.tryTake(held)) {
      throw new ChainwardenError('bodies_held', `the broker holds ${kib(bodies.held)} KiB of gateway calls' bodies already, its bound being ${kib(bodies.max)} KiB; retry shortly`);
    }
    try {
      const { status, body, decided } = await answer(who, parse(await readJson(req, maxBytes)));
      sendJson(res, status, body, decidedHeaders(deps, who, decided));
    } finally {
      bodies.give(held);
    }
  };
}

/** POST /v1/mcp/forward: a call's name and arguments ride along; the rest of an MCP message never comes here. */
const MAX_FORWARD_BYTES = 256 * 1024;

/** The broker's routes; prefixes end in `/`. */
export function brokerRoutes(deps: BrokerDeps): Record<string, Handler> {
  const { aws, mcp } = deps;
  const bodies = new MemoryBudget(deps.gatewayBodiesBytes ?? GATEWAY_BODIES_BYTES);
  // One count for the hop and gateway routes alike: a pod cannot take twice the bound through two of them.
  const inFlight = new InFlight(deps.maxInFlightPerPod ?? MAX_IN_FLIGHT_PER_POD);
  return {
    '/v1/svid': svid(deps),
    '/v1/task': task(deps),
    '/v1/hops': hops(deps, inFlight),
    '/v1/hops/': hops(deps, inFlight),
    '/v1/credentials': credentials(deps),
    '/v1/credentials/': credentials(deps),
    '/v1/tasks/': complete(deps),
    // The sidecar's AWS listener asks whether to send an SDK's call, and how it is signed.
    ...(aws ? { '/v1/aws/sign': gatewayRoute(deps, inFlight, bodies, MAX_SIGN_REQUEST_BYTES, parseSignRequest, (who, request) => aws.sign(who, request)) } : {}),
    // The sidecar's MCP gateway asks where a message goes, and for tools/call whether it may.
    ...(mcp ? { '/v1/mcp/forward': gatewayRoute(deps, inFlight, bodies, MAX_FORWARD_BYTES, parseForwardRequest, (who, request) => mcp.forward(who, request)) } : {}),
    '/keys': published(() => deps.issuer.jwks()),
    '/.well-known/openid-configuration': published(() => deps.issuer.discovery()),
  };
}
