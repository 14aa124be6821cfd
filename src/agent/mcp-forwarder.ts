import net from 'node:net';
import { ChainwardenError } from '../errors.js';
import type { McpForwardAnswer, McpForwardRefusal, McpForwardRequest } from '../mcp/forward-api.js';
import { HOP_BY_HOP } from '../server/http.js';
import type { BrokerClient } from './broker-client.js';
import { reasonsOf, safeHopId, type RefusalReason } from './refusal.js';
import { checkedBrokerHeaders } from './relay.js';

/** The broker's answer to one message: go ahead, or the refusal with the status it came with. */
export type McpForwardOutcome = { ok: true; answer: McpForwardAnswer } | { ok: false; status: number; refusal: McpForwardRefusal };

/** A hop's decision now, as `GET /v1/hops/{hopId}` says it. */
export interface McpHopStatus {
  decision: 'allow' | 'deny' | 'pending_approval';
  reasons: RefusalReason[];
}

/**
 * The broker's side of the MCP gateway, as the sidecar sees it: the two calls it makes. The real
 * one goes through the sidecar's `BrokerClient`; tests may script their own.
 */
export interface McpForwarder {
  forward(request: McpForwardRequest): Promise<McpForwardOutcome>;
  /** Throws `HopStatusRefusal` when the broker refuses to say, a `ChainwardenError` when it cannot be reached. */
  hop(hopId: string): Promise<McpHopStatus>;
}

/** The broker refused to tell a hop's decision (the task ended, the hop is unknown, the broker is behind). */
export class HopStatusRefusal extends Error {
  constructor(
    readonly status: number,
    readonly refusal: McpForwardRefusal,
  ) {
    super(refusal.error.message);
  }
}

/** A broker answer is a URL and a few headers (a Txn-Token among them); anything bigger is not one. */
const MAX_ANSWER_BYTES = 64 * 1024;
/** Held no longer than this, whatever the broker says: the agent's client gives up long before. */
const MAX_HOLD_SECONDS = 600;
/** Set by the sidecar itself for the request it sends; the broker's headers never replace them. */
const SIDECAR_SET = new Set(['host', 'content-length']);

const unusable = (path: string) => (what: string) => new ChainwardenError('internal', `the chainwarden broker's answer to ${path} is not usable: ${what}`);

/** The broker's go-ahead, checked once: an http(s) URL without credentials in it, and headers safe to send. */
export function parseForwardAnswer(value: unknown): McpForwardAnswer {
  const fail = unusable('/v1/mcp/forward');
  const answer = (typeof value === 'object' && value !== null ? value : undefined) as Partial<Record<keyof McpForwardAnswer, unknown>> | undefined;
  if (!answer) throw fail('it is not a JSON object');
  let url: URL;
  try {
    url = new URL(String(answer.url));
  } catch {
    throw fail('url is not a URL');
  }
  if ((url.protocol !== 'https:' && url.protocol !== 'http:') || url.username || url.password || url.hash) throw fail('url is not an http(s) URL without credentials or fragment');
  const headers = checkedBrokerHeaders(answer.headers, fail);
  const misplaced = Object.keys(headers).find((name) => HOP_BY_HOP.has(name) || SIDECAR_SET.has(name));
  if (misplaced) throw fail(`header ${misplaced} is about the connection, which the sidecar makes itself`);
  if (answer.hopId !== undefined && safeHopId(answer.hopId) === undefined) throw fail('hopId is not a hop id');
  const visible = answer.visibleTools;
  if (visible !== undefined && !(Array.isArray(visible) && visible.every((g) => typeof g === 'string'))) throw fail('visibleTools is not a list of globs');
  if (answer.address !== undefined && (typeof answer.address !== 'string' || net.isIP(answer.address) === 0)) throw fail('address is not an IP address');
  // A name the sidecar would resolve itself, in the pod whose hosts file the agent may write: every broker replica must resolve it (upgrade them all).
  if (answer.address === undefined && net.isIP(url.hostname.replace(/^\[|\]$/g, '')) === 0) throw fail(`it names the server ${url.hostname} without the address the broker resolved it to; every operator replica must run this version`);
  return {
    url: url.href,
    ...(typeof answer.address === 'string' ? { address: answer.address } : {}),
    headers,
    ...(typeof answer.hopId === 'string' ? { hopId: answer.hopId } : {}),
    reasons: reasonsOf(answer.reasons),
    ...(visible !== undefined ? { visibleTools: visible } : {}),
  };
}

/** A refusal in the broker's error shape, whatever arrived: a body without one still says something a person can act on. */
export function parseRefusal(status: number, value: unknown): McpForwardRefusal {
  const body = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const error = (typeof body.error === 'object' && body.error !== null ? body.error : {}) as Record<string, unknown>;
  const code = typeof error.code === 'string' ? error.code : '';
  const message = typeof error.message === 'string' && error.message !== '' ? error.message : `the chainwarden broker refused the message with HTTP ${status} and ${code ? `code ${code} but no message` : 'no reason'}`;
  const hopId = safeHopId(body.hopId);
  const decision = body.decision === 'deny' || body.decision === 'pending_approval' ? body.decision : undefined;
  const hold = body.holdForSeconds;
  return {
    error: { code, message, ...(typeof error.field === 'string' ? { field: error.field } : {}) },
    ...(hopId ? { hopId } : {}),
    ...(decision ? { decision } : {}),
    reasons: reasonsOf(body.reasons),
    ...(typeof hold === 'number' && Number.isFinite(hold) && hold >= 0 ? { holdForSeconds: Math.min(hold, MAX_HOLD_SECONDS) } : {}),
  };
}

/** `GET /v1/hops/{hopId}`'s answer: its decision and the rules behind it. */
export function parseHopStatus(value: unknown): McpHopStatus {
  const body = (typeof value === 'object' && value !== null ? value : {}) as Record<string, unknown>;
  const decision = body.decision;
  if (decision !== 'allow' && decision !== 'deny' && decision !== 'pending_approval') throw unusable('/v1/hops/{hopId}')('decision is not allow, deny or pending_approval');
  return { decision, reasons: reasonsOf(body.reasons) };
}

/** `POST /v1/mcp/forward` and `GET /v1/hops/{hopId}` on the broker, with the pod token. */
export function brokerMcpForwarder(broker: BrokerClient): McpForwarder {
  return {
    async forward(request) {
      const { status, body } = await broker.requestJson('/v1/mcp/forward', request, MAX_ANSWER_BYTES);
      if (status === 200) return { ok: true, answer: parseForwardAnswer(body) };
      return { ok: false, status, refusal: parseRefusal(status, body) };
    },
    async hop(hopId) {
      if (safeHopId(hopId) === undefined) throw new ChainwardenError('internal', `${hopId} is not a hop id the chainwarden broker could have given`);
      const { status, body } = await broker.getJson(`/v1/hops/${hopId}`, MAX_ANSWER_BYTES);
      if (status !== 200) throw new HopStatusRefusal(status, parseRefusal(status, body));
      return parseHopStatus(body);
    },
  };
}
