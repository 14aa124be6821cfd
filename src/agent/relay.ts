import type http from 'node:http';
import { HOP_BY_HOP } from '../server/http.js';

/**
 * How the sidecar's gateways pass a request on and its answer back: what belongs to one
 * connection only stays behind, what the broker asks them to add is checked before it goes
 * anywhere, and an answer broken on either side ends both.
 */

const HEADER_NAME = /^[a-z0-9!#$%&'*+.^_`|~-]{1,128}$/;
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;

/**
 * The broker's headers for a request, checked: lowercase token names with single-line values, so
 * nothing the broker answers can split a request or smuggle a second one. Returns a copy; throws
 * `unusable(what)` naming the first header that is not one (its name only when it is readable).
 */
export function checkedBrokerHeaders(headers: unknown, unusable: (what: string) => Error): Record<string, string> {
  if (typeof headers !== 'object' || headers === null || Array.isArray(headers)) throw unusable('it has no headers');
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers as Record<string, unknown>)) {
    if (!HEADER_NAME.test(name) || typeof value !== 'string' || !HEADER_VALUE.test(value)) {
      throw unusable(`header ${HEADER_NAME.test(name) ? name : '(unreadable)'} is not a lowercase name with a single-line value`);
    }
    out[name] = value;
  }
  return out;
}

/** An upstream's answer headers as the client gets them, without those about the upstream connection and any named in `drop`. */
export function downstreamHeaders(raw: string[], drop?: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] ?? '').toLowerCase();
    if (!HOP_BY_HOP.has(name) && !drop?.has(name)) out.push(raw[i] ?? '', raw[i + 1] ?? '');
  }
  return out;
}

/** An upstream's answer headers as the client gets them: only those named in `keep` (lowercase), none about the upstream connection. */
export function keptHeaders(raw: string[], keep: ReadonlySet<string>): string[] {
  const out: string[] = [];
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = (raw[i] ?? '').toLowerCase();
    if (keep.has(name) && !HOP_BY_HOP.has(name)) out.push(raw[i] ?? '', raw[i + 1] ?? '');
  }
  return out;
}

/**
 * Once an answer has begun there is no one to tell: a broken stream on either side ends both.
 * `done` is called once the answer is complete or broken off. Listeners rather than pipeline():
 * this runs for every call, and pipeline's abort machinery costs more than the copy.
 */
export function endTogether(upstream: http.IncomingMessage, res: http.ServerResponse, done: () => void): void {
  const broken = () => {
    upstream.destroy();
    res.destroy();
    done();
  };
  upstream.on('error', broken).on('aborted', broken);
  res.on('close', () => (res.writableFinished ? done() : broken()));
}
