import net from 'node:net';
import { ChainwardenError } from '../errors.js';
import { boundedResolve, systemResolve, type Resolve } from '../notify/transport.js';
import type { Clock } from '../runtime/clock.js';

/** The address the sidecar connects to for an MCP server, as the broker resolved the server's name. */
export interface UpstreamAddress {
  address: string;
  family: 4 | 6;
}

/** How long a name's address (or its failure to resolve) is reused before it is looked up again. */
const TTL_MS = 30_000;
/** How many names are remembered. */
const MAX_NAMES = 1_024;
/** Names looked up at once, at most: each lookup holds one of libuv's threads until the resolver answers. */
const MAX_LOOKUPS = 2;
/** How long a call waits for a name never looked up before; the lookup itself goes on, and its answer is kept. */
const WAIT_MS = 3_000;

type Known = { at: number; address: UpstreamAddress } | { at: number; failure: string };

/**
 * Where a system's MCP server is, resolved by the broker rather than in the pod. The sidecar
 * shares the pod's `/etc/hosts` and `/etc/resolv.conf` with the agent, which may write them: a
 * name the sidecar resolved itself could lead to a listener of the agent's, and the credential
 * the sidecar adds would go with it. A name without a dot is one of the task's namespace, as it
 * is to a pod there (`tickets-mcp` is `tickets-mcp.<namespace>.svc`), and otherwise looked up as
 * written. An address literal in the URL needs no lookup: the sidecar connects to it.
 *
 * One tenant's names cannot hold up another's: a namespace has one lookup in flight at most (the
 * resolver runs two at once in all), an answer or a failure is kept 30 s, a name already known is
 * answered from what is known while it is looked up again, and a call waits at most 3 s for a
 * name never seen.
 */
export class UpstreamAddresses {
  private readonly known = new Map<string, Known>();
  private readonly looking = new Map<string, Promise<Known>>();
  /** Per namespace, the end of its queue of lookups. */
  private readonly lanes = new Map<string, Promise<unknown>>();

  constructor(
    private readonly clock: Clock,
    private readonly resolve: Resolve = boundedResolve(systemResolve, MAX_LOOKUPS),
    private readonly waitMs = WAIT_MS,
  ) {}

  /** The address of `url`'s host for a task in `namespace`; undefined for an address literal. Throws `mcp_upstream_unreachable` when the name does not resolve. */
  async of(url: string, namespace: string, field: string): Promise<UpstreamAddress | undefined> {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
    if (net.isIP(host) !== 0) return undefined;
    const key = `${namespace}/${host}`;
    let known = this.known.get(key);
    if (!known || this.clock.now() - known.at >= TTL_MS) {
      const fresh = this.lookUp(key, host, namespace);
      // What was known stands in while the name is looked up again; a name never seen is waited for, a while.
      known ??= await this.waitFor(fresh);
    }
    if ('address' in known) return known.address;
    throw new ChainwardenError('mcp_upstream_unreachable', `the MCP server's name ${host} (${field}) does not resolve where the broker runs (${known.failure}); the sidecar connects only to an address the broker resolved, so that the pod's own hosts file cannot send the system's credential elsewhere: use a name the cluster's DNS serves, or an address`, { field });
  }

  /** The lookup's answer, or a failure once the wait is over; the timer goes with the answer. */
  private async waitFor(fresh: Promise<Known>): Promise<Known> {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<Known>((done) => {
      timer = setTimeout(() => done({ at: 0, failure: `no answer within ${this.waitMs / 1000} s` }), this.waitMs).unref();
    });
    try {
      return await Promise.race([fresh, late]);
    } finally {
      clearTimeout(timer);
    }
  }

  /** One lookup of a name at a time, queued behind the namespace's others; its answer, or failure, is kept. */
  private lookUp(key: string, host: string, namespace: string): Promise<Known> {
    const inFlight = this.looking.get(key);
    if (inFlight) return inFlight;
    const names = host.includes('.') ? [host] : [`${host}.${namespace}.svc`, host];
    const lookup = (this.lanes.get(namespace) ?? Promise.resolve())
      .then(async (): Promise<Known> => {
        const failures: string[] = [];
        for (const name of names) {
          try {
            return { at: this.clock.now(), address: await this.lookupOne(name) };
          } catch (err) {
            failures.push(`${name}: ${err instanceof Error ? err.message : String(err)}`);
          }
        }
        return { at: this.clock.now(), failure: failures.join('; ') };
      })
      .then((answer) => {
        if (this.known.size >= MAX_NAMES && !this.known.has(key)) this.known.delete(this.known.keys().next().value ?? '');
        this.known.set(key, answer);
        return answer;
      })
      .finally(() => {
        this.looking.delete(key);
        if (this.lanes.get(namespace) === lookup) this.lanes.delete(namespace);
      });
    this.looking.set(key, lookup);
    this.lanes.set(namespace, lookup);
    return lookup;
  }

  private lookupOne(name: string): Promise<UpstreamAddress> {
    return new Promise((done, fail) => {
      this.resolve(name, (err, addresses) => {
        const first = addresses.find((a) => a.family === 4) ?? addresses[0];
        if (err || !first) return fail(err ?? new Error('no address'));
        done({ address: first.address, family: first.family === 6 ? 6 : 4 });
      });
    });
  }
}
