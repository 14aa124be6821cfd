import net from 'node:net';
import { ChainwardenError } from '../errors.js';
import { boundedResolve, systemResolve, type Resolve } from '../notify/transport.js';
import type { Clock } from '../runtime/clock.js';

/** The address the sidecar connects to for an MCP server, as the broker resolved the server's name. */
export interface UpstreamAddress {
  address: string;
  family: 4 | 6;
}

/** How long a name's address is reused, and how many names are remembered. */
const TTL_MS = 30_000;
const MAX_NAMES = 1_024;
/** Names looked up at once, at most: each lookup holds one of libuv's four threads until the resolver answers. */
const MAX_LOOKUPS = 2;

/**
 * Where a system's MCP server is, resolved by the broker rather than in the pod. The sidecar
 * shares the pod's `/etc/hosts` and `/etc/resolv.conf` with the agent, which may write them: a
 * name the sidecar resolved itself could lead to a listener of the agent's, and the credential
 * the sidecar adds would go with it. A name without a dot is one of the task's namespace, as it
 * is to a pod there (`tickets-mcp` is `tickets-mcp.<namespace>.svc`), and otherwise looked up as
 * written. An address literal in the URL needs no lookup: the sidecar connects to it.
 */
export class UpstreamAddresses {
  private readonly known = new Map<string, { at: number; address: UpstreamAddress }>();

  constructor(
    private readonly clock: Clock,
    private readonly resolve: Resolve = boundedResolve(systemResolve, MAX_LOOKUPS),
  ) {}

  /** The address of `url`'s host for a task in `namespace`; undefined for an address literal. Throws `mcp_upstream_unreachable` when the name does not resolve. */
  async of(url: string, namespace: string, field: string): Promise<UpstreamAddress | undefined> {
    const host = new URL(url).hostname.replace(/^\[|\]$/g, '');
    if (net.isIP(host) !== 0) return undefined;
    const key = `${namespace}/${host}`;
    const now = this.clock.now();
    const known = this.known.get(key);
    if (known && now - known.at < TTL_MS) return known.address;
    const names = host.includes('.') ? [host] : [`${host}.${namespace}.svc`, host];
    const failures: string[] = [];
    for (const name of names) {
      try {
        const address = await this.lookup(name);
        if (this.known.size >= MAX_NAMES) this.known.delete(this.known.keys().next().value ?? '');
        this.known.delete(key);
        this.known.set(key, { at: now, address });
        return address;
      } catch (err) {
        failures.push(`${name}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    throw new ChainwardenError('mcp_upstream_unreachable', `the MCP server's name ${host} (${field}) does not resolve where the broker runs (${failures.join('; ')}); the sidecar connects only to an address the broker resolved, so that the pod's own hosts file cannot send the system's credential elsewhere: use a name the cluster's DNS serves, or an address`, { field });
  }

  private lookup(name: string): Promise<UpstreamAddress> {
    return new Promise((done, fail) => {
      this.resolve(name, (err, addresses) => {
        const first = addresses.find((a) => a.family === 4) ?? addresses[0];
        if (err || !first) return fail(err ?? new Error('no address'));
        done({ address: first.address, family: first.family === 6 ? 6 : 4 });
      });
    });
  }
}
