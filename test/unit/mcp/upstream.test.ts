import { describe, expect, it } from 'vitest';
import type { LookupAddress } from 'node:dns';
import { boundedResolve, type Resolve } from '../../../src/notify/transport.js';
import { UpstreamAddresses } from '../../../src/mcp/upstream.js';

/** The names the broker's resolver serves, and every lookup it was asked for. */
function resolver(names: Record<string, LookupAddress[]>) {
  const asked: string[] = [];
  let now = 0;
  const addresses = new UpstreamAddresses({ now: () => now }, (name, found) => {
    asked.push(name);
    const known = names[name];
    if (known) found(null, known);
    else found(Object.assign(new Error(`getaddrinfo ENOTFOUND ${name}`), { code: 'ENOTFOUND' }), []);
  });
  return { addresses, asked, later: (ms: number) => void (now += ms) };
}

describe("where the sidecar connects for an MCP server: the broker's resolution, never the pod's", () => {
  it("resolves a name without a dot in the task's namespace first, as a pod there would, and a full name as written", async () => {
    const { addresses, asked } = resolver({ 'tickets.support.svc': [{ address: '10.96.0.7', family: 4 }], 'tickets.other.svc.cluster.local': [{ address: '10.96.9.9', family: 4 }], localhost: [{ address: '127.0.0.1', family: 4 }] });
    await expect(addresses.of('http://tickets:8080/mcp', 'support', 'f')).resolves.toEqual({ address: '10.96.0.7', family: 4 });
    await expect(addresses.of('http://tickets.other.svc.cluster.local/mcp', 'support', 'f')).resolves.toEqual({ address: '10.96.9.9', family: 4 });
    await expect(addresses.of('http://localhost:3000/mcp', 'support', 'f')).resolves.toEqual({ address: '127.0.0.1', family: 4 });
    expect(asked).toEqual(['tickets.support.svc', 'tickets.other.svc.cluster.local', 'localhost.support.svc', 'localhost']);
  });

  it('prefers IPv4 and takes IPv6 when that is all there is; an address in the URL needs no lookup', async () => {
    const named = resolver({ 'dual.example': [{ address: 'fd00::7', family: 6 }, { address: '10.0.0.7', family: 4 }], 'six.example': [{ address: 'fd00::8', family: 6 }] });
    await expect(named.addresses.of('http://dual.example/mcp', 'ns', 'f')).resolves.toEqual({ address: '10.0.0.7', family: 4 });
    await expect(named.addresses.of('https://six.example/mcp', 'ns', 'f')).resolves.toEqual({ address: 'fd00::8', family: 6 });
    await expect(named.addresses.of('http://127.0.0.1:9000/mcp', 'ns', 'f')).resolves.toBeUndefined();
    await expect(named.addresses.of('http://[::1]:9000/mcp', 'ns', 'f')).resolves.toBeUndefined();
    expect(named.asked).toEqual(['dual.example', 'six.example']);
  });

  it('reuses an address for 30 s, then looks again; a name that does not resolve is refused naming the field and the fix', async () => {
    const { addresses, asked, later } = resolver({ 'mcp.example': [{ address: '10.0.0.1', family: 4 }] });
    await addresses.of('http://mcp.example/mcp', 'ns', 'f');
    later(29_000);
    await addresses.of('http://mcp.example/mcp', 'ns', 'f');
    expect(asked).toEqual(['mcp.example']);
    later(2_000);
    await addresses.of('http://mcp.example/mcp', 'ns', 'f');
    expect(asked).toEqual(['mcp.example', 'mcp.example']);
    const refused = await addresses.of('http://gone:8080/mcp', 'support', 'spec.systems[2].mcp.url').catch((err: unknown) => err);
    expect(refused).toMatchObject({ code: 'mcp_upstream_unreachable', status: 502 });
    expect(String((refused as Error).message)).toContain("the MCP server's name gone (spec.systems[2].mcp.url) does not resolve where the broker runs (gone.support.svc: getaddrinfo ENOTFOUND gone.support.svc; gone: getaddrinfo ENOTFOUND gone)");
    expect(String((refused as Error).message)).toContain("use a name the cluster's DNS serves, or an address");
  });

  it("one tenant's names that never answer hold up no other tenant's, nor more than one lookup of the resolver's two; a name never seen is waited for 50 ms here", async () => {
    const hanging = new Set(['slow-a.example', 'slow-b.example']);
    const asked: string[] = [];
    const answer: Resolve = (name, found) => {
      asked.push(name);
      if (!hanging.has(name)) found(null, [{ address: '10.0.0.9', family: 4 }]);
    };
    let now = 0;
    const addresses = new UpstreamAddresses({ now: () => now }, boundedResolve(answer, 2), 50);
    const refused = (url: string, ns: string) => addresses.of(url, ns, 'f').then(() => 'resolved', (err: Error) => err.message);
    // The hostile tenant's two names: the second waits behind the first in its namespace's lane, taking no second lookup.
    expect(await Promise.all([refused('http://slow-a.example/mcp', 'hostile'), refused('http://slow-b.example/mcp', 'hostile')])).toEqual([expect.stringContaining('no answer within 0.05 s'), expect.stringContaining('no answer within 0.05 s')]);
    expect(asked).toEqual(['slow-a.example']);
    // Another tenant's name still resolves at once.
    await expect(addresses.of('http://tickets.other.svc/mcp', 'support', 'f')).resolves.toEqual({ address: '10.0.0.9', family: 4 });
    // An address already known stands in while it is looked up again, even when that lookup hangs.
    now += 31_000;
    hanging.add('tickets.other.svc');
    await expect(addresses.of('http://tickets.other.svc/mcp', 'support', 'f')).resolves.toEqual({ address: '10.0.0.9', family: 4 });
  });

  it('a name that failed is not looked up again for 30 s', async () => {
    const { addresses, asked, later } = resolver({});
    await expect(addresses.of('http://gone.example/mcp', 'ns', 'f')).rejects.toThrow(/gone.example/);
    await expect(addresses.of('http://gone.example/mcp', 'ns', 'f')).rejects.toThrow(/ENOTFOUND gone.example/);
    expect(asked).toEqual(['gone.example']);
    later(30_000);
    await expect(addresses.of('http://gone.example/mcp', 'ns', 'f')).rejects.toThrow(/gone.example/);
    expect(asked).toEqual(['gone.example', 'gone.example']);
  });
});
