import http from 'node:http';
import https from 'node:https';
import { setTimeout as sleep } from 'node:timers/promises';
import { mediaTypeEssence } from '@modelcontextprotocol/sdk/shared/mediaType.js';
import { ErrorCode, type ProgressToken, type RequestId } from '@modelcontextprotocol/sdk/types.js';
import { ChainwardenError, errorMessage } from '../errors.js';
import type { Logger } from '../log.js';
import type { McpForwardAnswer, McpForwardRefusal, McpForwardRequest } from '../mcp/forward-api.js';
import { readBoundedBody, sendJson } from '../server/http.js';
import { HopStatusRefusal, type McpForwarder, type McpHopStatus } from './mcp-forwarder.js';
import {
  answeredId,
  approvalNeeded,
  deniedFailure,
  editFor,
  editResponse,
  failureOfRefusal,
  forwardRequestOf,
  isPending,
  isRpcResponse,
  MAX_MESSAGE_BYTES,
  McpFailure,
  NAMED_TASK_METHODS,
  parseAgentMessage,
  tooLargeMessage,
  unknownEvent,
  unknownSession,
  unknownTask,
  upstreamBody,
  upstreamFailure,
  type AgentMessage,
  type ResponseEdit,
  type RpcFailure,
} from './mcp-message.js';
import { kib, MemoryBudget } from './budget.js';
import { agentRequestKey, McpSessions, type SentRequest } from './mcp-sessions.js';
import { endTogether, keptHeaders } from './relay.js';
import { eventStreamEditor, sseEvent, sseMessage, type EventSourceMessage } from './sse.js';
import type { TaskWatch } from './task-watch.js';

export interface McpGatewayOptions {
  forwarder: McpForwarder;
  log: Logger;
  /** How long an MCP server may take before its answer begins (60 s). Once it has begun, a stream may be quiet for as long as it likes. */
  answerTimeoutMs?: number;
  /** How often a held call asks the broker about its hop (400 ms). */
  pollMs?: number;
  /** How often a held call tells the agent it still waits (1 s). */
  progressMs?: number;
  /** Ends what is on its way to or from an MCP server when the task ends; without it, an exchange runs its course. */
  watch?: Pick<TaskWatch, 'track'>;
  /**
   * How many calls may be held at once (16). Each asks the broker about its hop every `pollMs`
   * for up to 10 minutes; without a bound, an agent that sends the same waiting call a thousand
   * times over would make the broker, shared by every task, answer thousands of polls a second.
   */
  maxHeld?: number;
  /** How much of the servers' answers the gateway holds at once to check them, in bytes (4 MiB; see MAX_HELD_BYTES). */
  maxHeldBytes?: number;
}

/** The policy's `approval.holdFor` when the broker does not say. */
const DEFAULT_HOLD_SECONDS = 30;
/** The most of a server's answer held in memory to check or edit it: one JSON answer, or one event. */
const MAX_EDITED_CHARS = 2 * 1024 * 1024;
/**
 * The most of the servers' answers held at once, in all exchanges: what is being read and checked,
 * and what was written that the agent has not taken yet. Checking an answer parses it and writes
 * it again: measured in a sidecar after ordinary load (about 130 MiB resident), one 4 MiB answer
 * took it to 150 to 185 MiB at its peak, one of 8 MiB to 190 to 230; under the sidecar's 256 MiB
 * limit this leaves room for the AWS gateway's 32 MiB of request bodies. Twice one answer's bound,
 * so one slow answer cannot hold it all. An answer past it is refused, not waited for: two answers
 * each waiting for the other's share would wait for ever.
 */
const MAX_HELD_BYTES = 4 * 1024 * 1024;
/**
 * The most of the agents' messages held at once while they arrive, before each is parsed: a
 * message may be 1 MiB, and a few hundred connections each sending one slowly would otherwise take
 * the sidecar past its memory limit. Each is counted at its declared length (1 MiB when it has
 * none) as its reading begins; one past the bound is refused at once with a 503.
 */
const MAX_ARRIVING_BYTES = 16 * 1024 * 1024;
/** An event of a stream arriving for longer than the answer timeout is cut off once it holds this much: a stalled half-sent event does not keep its share. */
const STALLED_EVENT_CHARS = 64 * 1024;
/** What of the agent's request goes on: the transport's own headers. Never its Authorization, which is the sidecar's local token. */
const PASSED_ON = ['content-type', 'accept', 'mcp-session-id', 'mcp-protocol-version'] as const;
/** Streamable HTTP's three methods. */
const METHODS = new Set(['POST', 'GET', 'DELETE']);
/**
 * What of a server's answer headers reaches the agent: what MCP's Streamable HTTP transport reads,
 * and nothing else. Least of all what would act on the agent's side of the sidecar: a Location its
 * client follows within the sidecar's origin (to the broker endpoints, with the local token), a
 * Set-Cookie, a WWW-Authenticate that starts its client's OAuth flow.
 */
const ANSWER_HEADERS = new Set(['content-type', 'cache-control', 'mcp-session-id', 'mcp-protocol-version']);
/** Of an answer passed on without its body (a 202): what it says of the session. */
const BODYLESS_ANSWER_HEADERS = new Set(['mcp-session-id', 'mcp-protocol-version']);
/**
 * Of a server's own HTTP error, passed on as it came: its framing, and when to retry. Never its
 * Mcp-Session-Id: the agent's client takes a session from any answer, the gateway only from a
 * 2xx, so a session an error began would be refused at the agent's next message.
 */
const ERROR_ANSWER_HEADERS = new Set(['content-type', 'content-length', 'cache-control', 'mcp-protocol-version', 'retry-after', 'allow']);

/** What one exchange has come to so far, for the answer if it fails and for the log. */
interface Exchange {
  readonly req: http.IncomingMessage;
  readonly res: http.ServerResponse;
  readonly system: string;
  /** The session the agent's request names (`Mcp-Session-Id`), one the sidecar saw begin; or the one the server's answer begins. */
  sessionId?: string;
  /** The server's event id a GET resumes after, from the agent's `Last-Event-ID`. */
  lastEventId?: string;
  /** The agent's request as it went upstream, with the sidecar's id. */
  sent?: SentRequest;
  /** Aborted by the agent's `notifications/cancelled` for this request before it went upstream. */
  readonly cancel: AbortController;
  id: RequestId | null;
  method?: string;
  hopId?: string;
  /** The gateway began an event stream to the agent itself (a held call): what follows goes into it. */
  streaming: boolean;
  /** The request to the system's server, once sent. */
  upstream?: http.ClientRequest;
  /** Why the exchange was ended from outside (the task ended), which is what the agent is told. */
  stopped?: McpFailure;
  /** How much of the server's answer this exchange holds to check it (bytes, or characters of an event stream), counted in the gateway's budget. */
  held: number;
}

/**
 * The sidecar's MCP gateway, `/mcp/<system>` on its main listener. The agent's MCP client talks
 * Streamable HTTP to it as to any MCP server; each message is checked, then the broker says
 * whether and where it goes and with which headers (the system's credential, the hop's
 * Txn-Token), and only then is it sent to the system's server, whose answer streams back. The
 * agent never holds the credential; a denied call never leaves the pod; a call that waits for a
 * person is held here, with progress notifications, until the broker decides it.
 */
export class McpGateway {
  private readonly agents = { 'http:': new http.Agent({ keepAlive: true }), 'https:': new https.Agent({ keepAlive: true }) };
  private readonly answerTimeoutMs: number;
  private readonly pollMs: number;
  private readonly progressMs: number;
  private readonly maxHeld: number;
  private held = 0;
  private readonly sessions = new McpSessions();
  /** The agent's requests not yet sent upstream (asked about, or held), by system, session and id: a cancellation of one ends it here. */
  private readonly unsent = new Map<string, Exchange>();
  private readonly answers: MemoryBudget;
  private readonly arriving = new MemoryBudget(MAX_ARRIVING_BYTES);

  constructor(private readonly options: McpGatewayOptions) {
    this.answerTimeoutMs = options.answerTimeoutMs ?? 60_000;
    this.pollMs = options.pollMs ?? 400;
    this.progressMs = options.progressMs ?? 1_000;
    this.maxHeld = options.maxHeld ?? 16;
    this.answers = new MemoryBudget(options.maxHeldBytes ?? MAX_HELD_BYTES);
  }

  /** Serves one request of the authenticated agent for `system`; every failure is answered here, as a JSON-RPC error. */
  async handle(req: http.IncomingMessage, res: http.ServerResponse, system: string): Promise<void> {
    const exchange: Exchange = { req, res, system, id: null, streaming: false, cancel: new AbortController(), held: 0 };
    try {
      await this.serve(exchange);
    } catch (err) {
      this.fail(exchange, err);
    } finally {
      this.giveBack(exchange);
    }
  }

  /** Counts `amount` more of an answer this exchange holds; false, counting nothing, when the gateway holds all it may. */
  private holdAnswer(ex: Exchange, amount: number): boolean {
    if (!this.answers.tryTake(amount)) return false;
    ex.held += amount;
    return true;
  }

  private giveBack(ex: Exchange, amount = ex.held): void {
    this.answers.give(amount);
    ex.held -= amount;
  }

  /** Why an answer was not passed on: the gateway holds as much of the servers' answers as it may. */
  private answersHeld(): string {
    return `the chainwarden gateway holds ${kib(this.answers.held)} KiB of MCP servers' answers to check already, its bound being ${kib(this.answers.max)} KiB`;
  }

  close(): void {
    this.agents['http:'].destroy();
    this.agents['https:'].destroy();
  }

  /** parse → ask the broker → pass on, hold, or refuse. */
  private async serve(ex: Exchange): Promise<void> {
    const verb = ex.req.method ?? 'GET';
    if (!METHODS.has(verb)) throw new McpFailure({ status: 405, code: ErrorCode.InvalidRequest, message: `the chainwarden MCP gateway takes POST, GET and DELETE (MCP's Streamable HTTP transport), not ${verb}` });
    const message = verb === 'POST' ? await this.readMessage(ex.req) : undefined;
    ex.id = message?.id ?? null;
    ex.method = message?.method;
    const sessionId = ex.req.headers['mcp-session-id'];
    if (sessionId !== undefined) {
      if (typeof sessionId !== 'string' || !this.sessions.knows(ex.system, sessionId)) throw new McpFailure(unknownSession(ex.system));
      ex.sessionId = sessionId;
    }
    // A stream resumes after an event the sidecar handed out in this session, and only with a GET, as MCP resumes.
    const lastEventId = ex.req.headers['last-event-id'];
    if (verb === 'GET' && lastEventId !== undefined) {
      ex.lastEventId = typeof lastEventId === 'string' ? this.sessions.upstreamEventId(ex.system, ex.sessionId, lastEventId) : undefined;
      if (ex.lastEventId === undefined) throw new McpFailure(unknownEvent(ex.system));
    }
    if (message?.method !== undefined && NAMED_TASK_METHODS.has(message.method)) {
      const taskId = (message.json.params as { taskId?: unknown } | undefined)?.taskId;
      if (typeof taskId !== 'string' || this.sessions.hopOfTask(ex.system, ex.sessionId, taskId) === undefined) throw new McpFailure(unknownTask(ex.system, message.method, taskId));
    }
    if (message?.method === 'notifications/cancelled' && this.cancelledHere(ex, message)) return void ex.res.writeHead(202).end();
    const unsent = message?.id === undefined ? undefined : agentRequestKey(ex.system, ex.sessionId, message.id);
    if (unsent !== undefined) this.unsent.set(unsent, ex);
    try {
      const request = forwardRequestOf(ex.system, message);
      const outcome = await this.options.forwarder.forward(request);
      if (outcome.ok) return await this.passOn(ex, outcome.answer, message);
      ex.hopId = outcome.refusal.hopId;
      if (message?.call && ex.hopId && isPending(outcome.refusal)) return await this.hold(ex, { request, message, refusal: outcome.refusal, hopId: ex.hopId });
      throw new McpFailure(failureOfRefusal(ex.system, outcome.status, outcome.refusal));
    } finally {
      if (unsent !== undefined && this.unsent.get(unsent) === ex) this.unsent.delete(unsent);
    }
  }

  /** The agent's message, read whole and parsed, counted in `arriving` until it is. */
  private async readMessage(req: http.IncomingMessage): Promise<AgentMessage> {
    const declared = Number(req.headers['content-length']);
    const bytes = Number.isSafeInteger(declared) && declared >= 0 ? Math.min(declared, MAX_MESSAGE_BYTES) : MAX_MESSAGE_BYTES;
    if (!this.arriving.tryTake(bytes)) {
      throw new McpFailure({ status: 503, code: ErrorCode.InternalError, message: `the chainwarden gateway holds ${kib(this.arriving.held)} KiB of messages arriving already, its bound being ${kib(this.arriving.max)} KiB; retry shortly, or send fewer large messages at once` });
    }
    try {
      return parseAgentMessage(await readBoundedBody(req, MAX_MESSAGE_BYTES, tooLargeMessage));
    } finally {
      this.arriving.give(bytes);
    }
  }

  /**
   * The agent cancels a request: one not yet sent upstream (the broker still deciding it, or held
   * for approval) ends here and never goes; one sent goes on to the server under the id it was
   * sent with. A cancellation naming neither goes nowhere. True when it is done with here.
   */
  private cancelledHere(ex: Exchange, message: AgentMessage): boolean {
    const params = message.json.params as { requestId?: unknown } | undefined;
    const requestId = params?.requestId;
    if (typeof requestId !== 'string' && typeof requestId !== 'number') return true;
    const waiting = this.unsent.get(agentRequestKey(ex.system, ex.sessionId, requestId));
    if (waiting) {
      waiting.cancel.abort();
      return true;
    }
    return this.sessions.upstreamIdOf(ex.system, ex.sessionId, requestId) === undefined;
  }

  /** A request the agent cancelled before it went upstream: nothing more is said of it (an event stream it has ends, a plain request is a 202). */
  private endCancelled(ex: Exchange): void {
    this.options.log.debug({ system: ex.system, method: ex.method, hopId: ex.hopId }, 'mcp request cancelled by the agent before it was sent');
    if (ex.streaming) return void ex.res.end();
    if (!ex.res.headersSent) ex.res.writeHead(202).end();
  }

  /**
   * A call that waits for a person is held rather than refused: the broker is asked about its hop
   * every `pollMs`, and once it says allow the same call is asked for again (the broker allows it
   * now, using the approval once) and passed on. If it is pending still (an identical call held
   * on the same hop used the approval first), it now waits on the hop the broker names, which is
   * the one to approve. An agent that takes an event stream gets one at once, with progress
   * notifications when it asked for them; the answer then comes in it. A deny ends the hold with
   * -32001, the end of `holdForSeconds` with -32002, and an agent that goes away ends it quietly.
   */
  private async hold(ex: Exchange, held: { request: McpForwardRequest; message: AgentMessage; refusal: McpForwardRefusal; hopId: string }): Promise<void> {
    if (this.held >= this.maxHeld) {
      throw new McpFailure(approvalNeeded(`${held.refusal.error.message}; ${this.maxHeld} calls are held already, the most the chainwarden agent holds at once, so it is not held`, held.hopId, held.refusal.reasons ?? []));
    }
    this.held++;
    try {
      await this.holdUntilDecided(ex, held);
    } finally {
      this.held--;
    }
  }

  private async holdUntilDecided(ex: Exchange, held: { request: McpForwardRequest; message: AgentMessage; refusal: McpForwardRefusal; hopId: string }): Promise<void> {
    const holdSeconds = held.refusal.holdForSeconds ?? DEFAULT_HOLD_SECONDS;
    const deadline = Date.now() + holdSeconds * 1000;
    const gone = agentGone(ex.res);
    const waitEnds = AbortSignal.any([gone, ex.cancel.signal]);
    if (acceptsEventStream(ex.req)) this.openStream(ex);
    const progress = ex.streaming && held.message.progressToken !== undefined ? this.reportWaiting(ex, held.message.progressToken, () => held.hopId) : undefined;
    try {
      for (;;) {
        await pause(Math.min(this.pollMs, deadline - Date.now()), waitEnds);
        if (gone.aborted) return this.options.log.debug({ system: ex.system, hopId: held.hopId }, 'held mcp call abandoned by the agent');
        if (ex.cancel.signal.aborted) return this.endCancelled(ex);
        const status = await this.hopStatus(ex, held.hopId);
        if (status?.decision === 'deny') {
          throw new McpFailure(deniedFailure(`the call to tool ${held.message.call?.name ?? ''} of system ${ex.system} was rejected while it waited for approval`, held.hopId, status.reasons));
        }
        if (status?.decision === 'allow' && !gone.aborted) {
          const again = await this.options.forwarder.forward(held.request);
          if (again.ok) {
            clearInterval(progress);
            return await this.passOn(ex, again.answer, held.message);
          }
          if (!isPending(again.refusal)) throw new McpFailure(failureOfRefusal(ex.system, again.status, again.refusal));
          held.refusal = again.refusal;
          held.hopId = again.refusal.hopId ?? held.hopId;
          ex.hopId = held.hopId;
        }
        if (Date.now() >= deadline) throw new McpFailure(approvalNeeded(`${held.refusal.error.message}; held ${holdSeconds}s without a decision`, held.hopId, held.refusal.reasons ?? []));
      }
    } finally {
      clearInterval(progress);
    }
  }

  /** The hop's decision now, or undefined while the broker is out of reach or behind: it may still answer before the hold ends. */
  private async hopStatus(ex: Exchange, hopId: string): Promise<McpHopStatus | undefined> {
    try {
      return await this.options.forwarder.hop(hopId);
    } catch (err) {
      if (err instanceof HopStatusRefusal && err.status < 500) throw new McpFailure(failureOfRefusal(ex.system, err.status, err.refusal));
      if (!(err instanceof HopStatusRefusal) && !(err instanceof ChainwardenError && err.code === 'broker_unreachable')) throw err;
      this.options.log.warn({ system: ex.system, hopId, reason: errorMessage(err) }, 'the broker cannot say how a held mcp call is decided; still holding it');
      return undefined;
    }
  }

  /** The agent's event stream, begun now so that its client sees the call is alive. */
  private openStream(ex: Exchange): void {
    ex.res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    ex.res.flushHeaders();
    ex.streaming = true;
  }

  /** `notifications/progress` for the agent's token, once a `progressMs`, while the call is held. */
  private reportWaiting(ex: Exchange, progressToken: ProgressToken, hopId: () => string): NodeJS.Timeout {
    let ticks = 0;
    return setInterval(() => {
      ticks++;
      const waited = Math.round((ticks * this.progressMs) / 1000);
      ex.res.write(sseMessage({ jsonrpc: '2.0', method: 'notifications/progress', params: { progressToken, progress: ticks, message: `waiting ${waited}s for an AgentApproval of hop ${hopId()}` } }));
    }, this.progressMs);
  }

  /**
   * Sends the agent's message (as the gateway read it) where the broker says, with the broker's
   * headers, and passes the server's answer back. A task that ends meanwhile ends the exchange:
   * the request to the server is cut off, and an event stream to the agent stops.
   */
  private async passOn(ex: Exchange, answer: McpForwardAnswer, message: AgentMessage | undefined): Promise<void> {
    if (ex.cancel.signal.aborted) return this.endCancelled(ex);
    const edit = editFor(message, answer) ?? this.taskEdit(ex, message);
    ex.hopId = answer.hopId ?? ex.hopId;
    const release = this.options.watch?.track((error) => {
      ex.stopped = new McpFailure(failureOfRefusal(ex.system, error.status, { error: { code: error.code, message: error.message } }));
      ex.upstream?.destroy(error);
    });
    try {
      const reply = await this.send(ex, answer, message && this.bodyFor(ex, message, edit));
      this.noteSession(ex, reply);
      await this.relay(ex, reply);
      this.options.log.debug({ system: ex.system, method: ex.method, hopId: ex.hopId, status: reply.statusCode }, 'mcp message passed on');
    } finally {
      release?.();
    }
  }

  /**
   * A `tasks/result` (for a task a call of this session began, as `serve` checks): its result
   * carries the call's hop id, as the call's own result would. A `tasks/list`: only the tasks
   * calls of this session began are shown.
   */
  private taskEdit(ex: Exchange, message: AgentMessage | undefined): ResponseEdit | undefined {
    if (message?.id === undefined) return undefined;
    const { system, sessionId } = ex;
    if (message.method === 'tasks/list') return { id: message.id, ownTask: (taskId) => this.sessions.hopOfTask(system, sessionId, taskId) !== undefined };
    if (message.method !== 'tasks/result') return undefined;
    const taskId = (message.json.params as { taskId?: unknown } | undefined)?.taskId;
    const hopId = typeof taskId === 'string' ? this.sessions.hopOfTask(ex.system, ex.sessionId, taskId) : undefined;
    return hopId ? { id: message.id, hopId } : undefined;
  }

  /** The message as it goes upstream: a request with the sidecar's own id, remembered with the agent's and the edit of its answer. */
  private bodyFor(ex: Exchange, message: AgentMessage, edit: ResponseEdit | undefined): Buffer {
    if (message.id !== undefined) {
      ex.sent = this.sessions.send(ex.system, ex.sessionId, message.id, edit);
      // From here a cancellation goes upstream, under the id the request went with.
      this.unsent.delete(agentRequestKey(ex.system, ex.sessionId, message.id));
    }
    return upstreamBody(message, ex.sent?.upstreamId, (agentId) => this.sessions.upstreamIdOf(ex.system, ex.sessionId, agentId));
  }

  /** What the server's answer says of the session: the one it begins, the one the agent ended. */
  private noteSession(ex: Exchange, reply: http.IncomingMessage): void {
    const status = reply.statusCode ?? 502;
    if (status < 200 || status > 299) return;
    if (ex.req.method === 'DELETE') {
      if (ex.sessionId !== undefined) this.sessions.end(ex.system, ex.sessionId);
      return;
    }
    const begun = reply.headers['mcp-session-id'];
    if (ex.sessionId === undefined && typeof begun === 'string' && begun !== '') {
      this.sessions.begin(ex.system, begun, ex.sent);
      ex.sessionId = begun;
    }
  }

  /** The request to the system's server, at the address the broker resolved its name to (never the pod's resolver, which the agent may steer); settles once its answer begins, or fails naming the system when it does not begin in time. */
  private send(ex: Exchange, answer: McpForwardAnswer, body: Buffer | undefined): Promise<http.IncomingMessage> {
    const target = new URL(answer.url);
    const protocol = target.protocol === 'https:' ? 'https:' : 'http:';
    const headers: http.OutgoingHttpHeaders = {};
    for (const name of PASSED_ON) if (typeof ex.req.headers[name] === 'string') headers[name] = ex.req.headers[name];
    if (ex.lastEventId !== undefined) headers['last-event-id'] = ex.lastEventId;
    // The body is the gateway's own JSON, UTF-8 whatever charset the agent named.
    if (body) Object.assign(headers, { 'content-type': 'application/json', 'content-length': String(body.length) });
    Object.assign(headers, answer.headers);
    return new Promise((resolve, reject) => {
      // To the address itself, so that the pool keeps its connections by address: one made to another address is never reused for this one.
      const pinned = answer.address ? { hostname: answer.address, headers: { ...headers, host: target.host }, ...(protocol === 'https:' ? { servername: target.hostname } : {}) } : { headers };
      const request = (protocol === 'https:' ? https : http).request(target, { method: ex.req.method, agent: this.agents[protocol], ...pinned });
      ex.upstream = request;
      const timer = setTimeout(() => request.destroy(new Error(`it sent no answer within ${this.answerTimeoutMs / 1000}s`)), this.answerTimeoutMs);
      // An agent that goes away takes its request with it, answered or not.
      ex.res.once('close', () => {
        if (!ex.res.writableFinished) request.destroy(new Error('the agent went away'));
      });
      request.on('error', (err) => {
        clearTimeout(timer);
        reject(ex.stopped ?? new McpFailure(upstreamFailure(ex.system, `(${target.origin}${target.pathname}) could not be reached: ${err.message}`)));
      });
      request.on('response', (reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      request.end(body);
    });
  }

  /**
   * The server's answer on its way to the agent. Every event stream (a POST's answer, the GET
   * stream, a resumed one) is re-emitted event by event through the session's book; a 2xx JSON
   * answer to a request must be a JSON-RPC response to it; a notification's 202 and the server's
   * own HTTP errors pass as they came, with only the headers MCP reads; a redirect does not pass.
   */
  private async relay(ex: Exchange, reply: http.IncomingMessage): Promise<void> {
    const status = reply.statusCode ?? 502;
    const type = mediaTypeEssence(reply.headers['content-type']);
    if (ex.streaming) return this.relayIntoStream(ex, reply, status, type);
    const ok = status >= 200 && status <= 299;
    if (ok && type === 'text/event-stream') {
      ex.res.writeHead(status, keptHeaders(reply.rawHeaders, ANSWER_HEADERS));
      ex.res.flushHeaders();
      return this.editEvents(ex, reply);
    }
    // The agent's client would follow it within the sidecar's origin, re-sending the message with the local token: to /v1/tasks/…/complete, say.
    if (status >= 300 && status <= 399) {
      discard(reply);
      throw new McpFailure(upstreamFailure(ex.system, `answered with a redirect (HTTP ${status}), which the chainwarden gateway neither follows nor passes on; if the server has moved, set the system's mcp.url in the AgentPolicy to where it answers now`));
    }
    // The server's own HTTP errors pass as they came.
    if (!ok) return passThrough(reply, ex.res, keptHeaders(reply.rawHeaders, ERROR_ANSWER_HEADERS));
    // What asks no answer (a notification, the agent's answer to the server, a GET, a DELETE) gets
    // its status with nothing in it, or an event stream: a client may read any body of a GET as a
    // stream, and nothing the gateway has not checked reaches the agent.
    if (ex.id === null || (type === undefined && (status === 202 || status === 204))) {
      discard(reply);
      if (type === undefined || status === 202 || status === 204) return void ex.res.writeHead(status, keptHeaders(reply.rawHeaders, BODYLESS_ANSWER_HEADERS)).end();
      throw new McpFailure(upstreamFailure(ex.system, `answered a message that asks for no answer with HTTP ${status}${type ? ` (${type})` : ''}, not 202 or an event stream`));
    }
    if (type !== 'application/json') {
      discard(reply);
      throw new McpFailure(upstreamFailure(ex.system, `answered with ${type ?? 'no content type'}, not application/json or text/event-stream: it does not speak MCP's Streamable HTTP there`));
    }
    const json = await this.checkedJson(ex, reply);
    ex.res.writeHead(status, keptHeaders(reply.rawHeaders, ANSWER_HEADERS));
    // Counted until the agent has taken it: an agent that does not read holds it here.
    await written(ex.res, json);
  }

  /** A held call's answer, into the event stream the agent already has. */
  private async relayIntoStream(ex: Exchange, reply: http.IncomingMessage, status: number, type: string | undefined): Promise<void> {
    if (status === 200 && type === 'application/json') return written(ex.res, sseEvent({ event: 'message', data: await this.checkedJson(ex, reply) }));
    if (status === 200 && type === 'text/event-stream') return this.editEvents(ex, reply);
    discard(reply);
    throw new McpFailure(upstreamFailure(ex.system, `answered the approved call with HTTP ${status}${type ? ` (${type})` : ''}`));
  }

  /** A JSON answer read whole, checked to be a JSON-RPC response to the request sent, and given back the agent's id and edited. */
  private async checkedJson(ex: Exchange, reply: http.IncomingMessage): Promise<string> {
    const text = await readText(reply, MAX_EDITED_CHARS, this.answerTimeoutMs, (bytes) => this.holdAnswer(ex, bytes)).catch((err: unknown) => {
      reply.destroy();
      if (err instanceof AnswersHeld) {
        const message = `the MCP server of system ${ex.system} answered, but ${this.answersHeld()}: the call ran and its answer was not passed on; retry once fewer large answers are on their way (a call that changes something: check first whether it did)`;
        throw new McpFailure({ status: 503, code: ErrorCode.InternalError, message, data: { system: ex.system } });
      }
      throw new McpFailure(upstreamFailure(ex.system, `broke off its answer: ${errorMessage(err)}`));
    });
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new McpFailure(upstreamFailure(ex.system, 'answered with something that is not JSON, though it said application/json'));
    }
    if (!isRpcResponse(value)) throw new McpFailure(upstreamFailure(ex.system, 'answered with JSON that is not a JSON-RPC response'));
    const answer = this.toAgent(ex, value);
    if (answer === undefined) throw new McpFailure(upstreamFailure(ex.system, 'answered a request the chainwarden gateway did not send it'));
    try {
      return answer === value ? text : JSON.stringify(answer);
    } catch {
      throw new McpFailure(upstreamFailure(ex.system, 'answered with JSON nested too deep for the chainwarden gateway to check'));
    }
  }

  /** An event stream re-emitted event by event: the answers in it given back to the agent, the event ids bound to the session. */
  private editEvents(ex: Exchange, reply: http.IncomingMessage): Promise<void> {
    const edit = (event: EventSourceMessage): EventSourceMessage | undefined => {
      // MCP sends messages only; an event of another type no client of it reads is not passed on.
      if (event.event !== undefined && event.event !== 'message') return this.dropped(ex, `an event of type ${event.event}`);
      // A priming event (an id, no data) passes; data that is not one JSON-RPC message or batch does not.
      const data = event.data === '' ? '' : this.agentData(ex, event.data);
      if (data === undefined) return undefined;
      return { ...event, data, ...(event.id ? { id: this.sessions.agentEventId(ex.system, ex.sessionId, event.id) } : {}) };
    };
    return relayEvents(reply, ex.res, edit, {
      take: (amount) => (this.holdAnswer(ex, amount) ? undefined : new Error(`${this.answersHeld()}; the agent's client may resume the stream`)),
      give: (amount) => this.giveBack(ex, amount),
      stalledMs: this.answerTimeoutMs,
      cutOff: (err) => this.options.log.warn({ system: ex.system, reason: errorMessage(err) }, 'an mcp event stream was cut off'),
    });
  }

  private dropped(ex: Exchange, what: string): undefined {
    this.options.log.warn({ system: ex.system }, `${what} in an mcp event stream was not passed on`);
    return undefined;
  }

  /** One event's data for the agent; undefined when nothing of it is the agent's, or it is not JSON (nothing the gateway cannot read goes on). */
  private agentData(ex: Exchange, data: string): string | undefined {
    let value: unknown;
    try {
      value = JSON.parse(data);
    } catch {
      return this.dropped(ex, 'an event whose data is not JSON');
    }
    if (!Array.isArray(value)) {
      const answer = this.toAgent(ex, value);
      return answer === value ? data : answer === undefined ? undefined : JSON.stringify(answer);
    }
    // A batch, as MCP's 2025-03-26 revision allowed.
    const kept = value.map((each) => this.toAgent(ex, each)).filter((each) => each !== undefined);
    return kept.length === 0 ? undefined : JSON.stringify(kept);
  }

  /**
   * A server's message as the agent gets it. An answer comes back only to the request it answers,
   * by the id the sidecar sent it with: with the agent's id, and edited as that request's answer is
   * (live or replayed). An answer to a request the sidecar did not send in this session is not
   * the agent's (undefined). Requests and notifications of the server pass as they came.
   */
  private toAgent(ex: Exchange, message: unknown): unknown {
    const id = answeredId(message);
    if (id === undefined) return message;
    const sent = ex.sent?.upstreamId === id ? ex.sent : this.sessions.sent(ex.system, ex.sessionId, id);
    if (sent === undefined) {
      this.options.log.warn({ system: ex.system }, 'an mcp answer to a request this sidecar did not send in the session was not passed on');
      return undefined;
    }
    const answer = { ...(message as Record<string, unknown>), id: sent.agentId };
    if (!sent.edit) return answer;
    const edited = editResponse(answer, sent.edit);
    // A call asked to run as a task that began one (protocol 2025-11-25): the task's result, fetched later, is the call's.
    const taskId = sent.edit.beginsTask ? taskIdOf(edited) : undefined;
    if (taskId !== undefined && sent.edit.hopId) this.sessions.noteTask(ex.system, ex.sessionId, taskId, sent.edit.hopId);
    return edited;
  }

  /** The JSON-RPC error for whatever ended the exchange, with the request's id; into the event stream if the agent has one. */
  private fail(ex: Exchange, err: unknown): void {
    // The task's end, when that is what broke the exchange, rather than the break it caused.
    const failure = ex.stopped ?? err;
    const rpc = failure instanceof McpFailure ? failure.rpc : this.failureOf(failure);
    const id = failure instanceof McpFailure && failure.id !== undefined ? failure.id : ex.id;
    const answer = { jsonrpc: '2.0', id, error: { code: rpc.code, message: rpc.message, ...(rpc.data ? { data: rpc.data } : {}) } };
    this.options.log.info({ system: ex.system, method: ex.method, hopId: ex.hopId, code: rpc.code, status: rpc.status }, 'mcp message refused');
    const { req, res } = ex;
    if (ex.streaming) {
      if (!res.writableEnded && !res.destroyed) res.end(sseMessage(answer));
      return;
    }
    if (res.headersSent) return void res.destroy();
    sendJson(res, rpc.status, answer, { 'cache-control': 'no-store' });
    // The rest of a body too large to take is read and dropped, so the client, still sending, reads this answer rather than a reset.
    if (!req.complete) req.resume();
  }

  /** Failures that are not the gateway's own: the broker out of reach, a broker answer not usable, a defect. */
  private failureOf(err: unknown): RpcFailure {
    if (err instanceof ChainwardenError) return { status: err.code === 'internal' ? 502 : err.status, code: ErrorCode.InternalError, message: err.message, data: { code: err.code } };
    this.options.log.error({ err }, 'mcp gateway failed');
    return { status: 500, code: ErrorCode.InternalError, message: 'the chainwarden agent failed; see its log' };
  }
}

/** Whether the agent's client takes an event stream as the answer to its POST. */
function acceptsEventStream(req: http.IncomingMessage): boolean {
  return (req.headers.accept ?? '').split(',').some((part) => mediaTypeEssence(part) === 'text/event-stream');
}

/** Aborted when the agent goes away before its answer is complete. */
function agentGone(res: http.ServerResponse): AbortSignal {
  const controller = new AbortController();
  res.once('close', () => {
    if (!res.writableFinished) controller.abort();
  });
  return controller.signal;
}

async function pause(ms: number, signal: AbortSignal): Promise<void> {
  if (ms > 0) await sleep(ms, undefined, { signal }).catch(() => undefined);
}

/**
 * A server's answer whose body nothing reads. One that has arrived whole is read and dropped, so
 * the connection serves the next message; one still arriving is cut off, since a body that never
 * ends would otherwise be read on after the exchange is over, past the end of the task.
 */
function discard(reply: http.IncomingMessage): void {
  // A body of no bytes is not yet `complete` when its answer's head is handed on: Node ends it just after.
  const empty = reply.headers['content-length'] === '0' || reply.statusCode === 204 || reply.statusCode === 304;
  if (reply.complete || empty) reply.resume();
  else reply.destroy();
}

/** The server's answer as it came, with `headers`. */
function passThrough(reply: http.IncomingMessage, res: http.ServerResponse, headers: string[]): Promise<void> {
  res.writeHead(reply.statusCode ?? 502, headers);
  return new Promise((resolve) => {
    endTogether(reply, res, resolve);
    reply.pipe(res);
  });
}

/** How an event stream counts what it holds, and what it does when it must stop. */
interface StreamHold {
  /** Counts `amount` more; an error (and nothing counted) when the gateway holds all it may. */
  take(amount: number): Error | undefined;
  give(amount: number): void;
  /** How long an event may take to arrive whole once it holds `STALLED_EVENT_CHARS`. */
  stalledMs: number;
  cutOff(err: Error): void;
}

/** A blank line (two line ends, each `\r\n`, `\n` or `\r`): where an event, or a comment's block, ends. */
const BLANK_LINE = /(?:\r\n|\n|\r(?!\n))(?:\r\n|\n|\r(?!\n))/g;

/** How many characters of `text` come after its last blank line, or undefined when it has none ending past `from`. */
function afterBlankLine(text: string, from: number): number | undefined {
  let end: number | undefined;
  for (const match of text.matchAll(BLANK_LINE)) end = match.index + match[0].length;
  return end !== undefined && end > from ? text.length - end : undefined;
}

/**
 * An event stream re-emitted event by event through `edit` (undefined: the event is left out);
 * writes wait for a slow agent. What the stream holds is counted: each part as it is read, before
 * it is parsed; then, once it is, the block not ended yet and what was written that the agent has
 * not taken. The stream is cut off when the count would pass the gateway's bound, or when an event
 * holding `STALLED_EVENT_CHARS` has not ended within `stalledMs`.
 */
function relayEvents(reply: http.IncomingMessage, res: http.ServerResponse, edit: (event: EventSourceMessage) => EventSourceMessage | undefined, hold: StreamHold): Promise<void> {
  return new Promise((resolve) => {
    let held = 0;
    let open = 0;
    let tail = '';
    let stalled: NodeJS.Timeout | undefined;
    let over = false;
    const stop = (err: Error) => {
      if (over) return;
      over = true;
      clearTimeout(stalled);
      hold.cutOff(err);
      reply.destroy();
      res.destroy();
    };
    /** Counts what is held now: the open block and what the agent has not taken. */
    const settle = () => {
      const now = open + res.writableLength;
      if (now < held) hold.give(held - now);
      else if (now > held) {
        const refused = hold.take(now - held);
        if (refused) return stop(refused);
      }
      held = now;
      if (open < STALLED_EVENT_CHARS) stalled = void clearTimeout(stalled);
      else stalled ??= setTimeout(() => stop(new Error(`an event of ${open} characters or more took over ${hold.stalledMs / 1000}s to arrive whole`)), hold.stalledMs);
    };
    endTogether(reply, res, () => {
      clearTimeout(stalled);
      resolve();
    });
    let draining = false;
    // Once a write is handed to the socket, what the agent has not taken is counted afresh.
    const recount = () => {
      if (!over) settle();
    };
    const write = (text: string) => {
      if (res.write(text, recount) || draining) return;
      draining = true;
      reply.pause();
      res.once('drain', () => {
        draining = false;
        if (!over) settle();
        reply.resume();
      });
    };
    const editor = eventStreamEditor(edit, write, stop, MAX_EDITED_CHARS);
    reply.setEncoding('utf8');
    reply.on('data', (text: string) => {
      if (over) return;
      // Counted before it is parsed: checking an event happens within `feed`.
      const refused = hold.take(text.length);
      if (refused) return stop(refused);
      held += text.length;
      editor.feed(text);
      const scanned = tail + text;
      open = afterBlankLine(scanned, tail.length) ?? open + text.length;
      tail = scanned.slice(-3);
      if (!over) settle();
    });
    reply.on('end', () => res.end());
  });
}

/** Writes the last of an answer; resolves once the agent has taken it (or gone), not when the socket merely holds it. */
function written(res: http.ServerResponse, text: string): Promise<void> {
  const { socket } = res;
  return new Promise((resolve) => {
    if (!socket || socket.destroyed) {
      res.end(text);
      return resolve();
    }
    // The socket outlives the exchange (keep-alive): its listeners go with the exchange.
    const done = () => {
      socket.off('close', done);
      socket.off('drain', done);
      resolve();
    };
    socket.once('close', done);
    res.end(text, () => {
      if (socket.writableLength === 0) return done();
      socket.once('drain', done);
    });
  });
}

/** The task a `tools/call`'s answer began: a CreateTaskResult (a task, and no content of a finished call). */
function taskIdOf(message: unknown): string | undefined {
  const result = (message as { result?: { task?: { taskId?: unknown }; content?: unknown } } | undefined)?.result;
  if (result === undefined || result.content !== undefined) return undefined;
  return typeof result.task?.taskId === 'string' ? result.task.taskId : undefined;
}

/** An answer was not read on: the gateway holds as much of the servers' answers as it may. */
class AnswersHeld extends Error {}

/**
 * A whole JSON answer as text, up to `maxBytes`, each part counted by `hold` as it is read. Unlike
 * an event stream, a JSON answer has no reason to pause: one that sends nothing for `idleMs`, or
 * has not ended within twice that, is given up, so the agent is not left waiting and what it holds
 * is given back.
 */
async function readText(reply: http.IncomingMessage, maxBytes: number, idleMs: number, hold: (bytes: number) => boolean): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  const idle = setTimeout(() => reply.destroy(new Error(`it stopped sending for ${idleMs / 1000}s`)), idleMs);
  const whole = setTimeout(() => reply.destroy(new Error(`it took over ${(2 * idleMs) / 1000}s to send its answer`)), 2 * idleMs);
  try {
    for await (const chunk of reply as AsyncIterable<Buffer>) {
      idle.refresh();
      size += chunk.length;
      if (size > maxBytes) throw new Error(`its answer is larger than the ${maxBytes} bytes the chainwarden gateway reads to check it`);
      if (!hold(chunk.length)) throw new AnswersHeld();
      chunks.push(chunk);
    }
  } finally {
    clearTimeout(idle);
    clearTimeout(whole);
  }
  return Buffer.concat(chunks).toString('utf8');
}
