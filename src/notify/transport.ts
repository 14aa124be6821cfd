import dns, { type LookupAddress } from 'node:dns';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';

/** The one call made to a notification receiver. `status` is the HTTP status; a transport failure throws. */
export type NotifyTransport = (url: string, request: { headers: Record<string, string>; body: string; signal: AbortSignal }) => Promise<{ status: number }>;

/**
 * Addresses no receiver has: link-local ones, where clouds serve instance metadata and the
 * node's credentials (169.254.169.254, EKS Pod Identity's 169.254.170.23), and the few other
 * addresses where a cloud does: AWS's IPv6 ones (fd00:ec2::254, ::23, the resolver ::253), Alibaba
 * Cloud's metadata (100.100.100.200) and Azure's WireServer (168.63.129.16). A policy's author
 * picks the URL and the header the operator sends, from the operator's place in the network.
 */
const FORBIDDEN = new net.BlockList();
FORBIDDEN.addSubnet('169.254.0.0', 16, 'ipv4');
FORBIDDEN.addSubnet('fe80::', 10, 'ipv6');
FORBIDDEN.addSubnet('fd00:ec2::', 64, 'ipv6');
FORBIDDEN.addAddress('100.100.100.200', 'ipv4');
FORBIDDEN.addAddress('168.63.129.16', 'ipv4');
// Both inside IPv6 as well: NAT64, IPv4-compatible, SIIT and 6to4 addresses.
for (const embedded of ['64:ff9b::6464:64c8', '::6464:64c8', '::ffff:0:6464:64c8', '64:ff9b::a83f:8110', '::a83f:8110', '::ffff:0:a83f:8110']) FORBIDDEN.addAddress(embedded, 'ipv6');
FORBIDDEN.addSubnet('2002:6464:64c8::', 48, 'ipv6');
FORBIDDEN.addSubnet('2002:a83f:8110::', 48, 'ipv6');
// 169.254.0.0/16 inside IPv6: NAT64, IPv4-compatible, SIIT and 6to4 addresses.
FORBIDDEN.addSubnet('64:ff9b::a9fe:0', 112, 'ipv6');
FORBIDDEN.addSubnet('::a9fe:0', 112, 'ipv6');
FORBIDDEN.addSubnet('::ffff:0:a9fe:0', 112, 'ipv6');
FORBIDDEN.addSubnet('2002:a9fe::', 32, 'ipv6');

export function forbiddenReceiverAddress(address: string): boolean {
  // An IPv4 address written as IPv6 (::ffff:169.254.169.254) is that IPv4 address.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)?.[1];
  if (mapped) return FORBIDDEN.check(mapped, 'ipv4');
  const family = net.isIP(address);
  return family !== 0 && FORBIDDEN.check(address, family === 4 ? 'ipv4' : 'ipv6');
}

/** A receiver the operator does not post to; its message names addresses only, never the request. */
export class ReceiverRefused extends Error {
  override readonly name = 'ReceiverRefused';
}

const refusal = (addresses: string[]) =>
  new ReceiverRefused(`its address ${addresses.join(', ')} is link-local, or another where a cloud serves instance metadata and credentials; chainwarden does not post there`);

export type Resolve = (hostname: string, callback: (err: NodeJS.ErrnoException | null, addresses: LookupAddress[]) => void) => void;
export const systemResolve: Resolve = (hostname, callback) => dns.lookup(hostname, { all: true }, callback);

/** Receivers' names resolved at once, at most: each lookup holds one of libuv's four threads until the resolver answers. */
export const MAX_RECEIVER_LOOKUPS = 2;
/** Names waiting for a lookup, at most; past this a notification attempt fails at once and is retried later. */
const MAX_WAITING_LOOKUPS = 256;

/**
 * `resolve`, bounded. The system resolver runs on libuv's small thread pool, which the operator's
 * files, compression and its AWS calls' own lookups share, and a lookup cannot be cancelled: a
 * tenant whose receiver's name never resolves would otherwise hold every thread, each attempt
 * another, until nothing else of the operator's got one. So lookups of one name in flight are
 * one, at most `max` names are looked up at once (a slot is given back when the resolver
 * answers, not when the attempt gives up), and the rest wait their turn, in order.
 */
export function boundedResolve(resolve: Resolve, max = MAX_RECEIVER_LOOKUPS): Resolve {
  type Callback = Parameters<Resolve>[1];
  const inFlight = new Map<string, Callback[]>();
  const waiting = new Map<string, Callback[]>();
  const start = (hostname: string, callbacks: Callback[]) => {
    inFlight.set(hostname, callbacks);
    const answer: Callback = (err, addresses) => {
      inFlight.delete(hostname);
      const next = waiting.entries().next();
      if (!next.done) {
        waiting.delete(next.value[0]);
        start(next.value[0], next.value[1]);
      }
      for (const callback of callbacks) callback(err, addresses);
    };
    // A resolver that throws at once gives its slot back as one that answers does.
    try {
      resolve(hostname, answer);
    } catch (err) {
      answer(err instanceof Error ? err : new Error(String(err)), []);
    }
  };
  return (hostname, callback) => {
    const joined = inFlight.get(hostname) ?? waiting.get(hostname);
    if (joined) return void joined.push(callback);
    if (inFlight.size < max) return start(hostname, [callback]);
    if (waiting.size >= MAX_WAITING_LOOKUPS) return callback(Object.assign(new Error(`${MAX_WAITING_LOOKUPS} names wait to be resolved already`), { code: 'EAI_AGAIN' }), []);
    waiting.set(hostname, [callback]);
  };
}

/**
 * POST with node:http(s). Redirects are not followed: the credential goes to the URL the policy
 * names and nowhere else. The receiver's name is resolved as the connection is made and a
 * link-local address refused then, so a name that resolves elsewhere when checked and to the
 * metadata service when used gets nowhere. The answer's status is all that is read.
 */
export function notifyTransport(resolve: Resolve = boundedResolve(systemResolve)): NotifyTransport {
  const lookup: net.LookupFunction = (hostname, options, callback) => {
    resolve(hostname, (err, addresses) => {
      if (err) return void callback(err, '', 0);
      const usable = addresses.filter((a) => !options.family || a.family === options.family);
      const allowed = usable.filter((a) => !forbiddenReceiverAddress(a.address));
      const first = allowed[0];
      if (!first) {
        const error = usable.length > 0 ? refusal(usable.map((a) => a.address)) : Object.assign(new Error(`${hostname} has no address`), { code: 'ENOTFOUND' });
        return void callback(error, '', 0);
      }
      if (options.all) (callback as unknown as (err: null, addresses: LookupAddress[]) => void)(null, allowed);
      else callback(null, first.address, first.family);
    });
  };
  return (url, { headers, body, signal }) =>
    new Promise((done, fail) => {
      const target = new URL(url);
      const literal = target.hostname.replace(/^\[|\]$/g, '');
      if (forbiddenReceiverAddress(literal)) return fail(refusal([literal]));
      const client = target.protocol === 'https:' ? https : http;
      const req = client.request(target, { method: 'POST', headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) }, signal, lookup, agent: false }, (res) => {
        done({ status: res.statusCode ?? 0 });
        res.destroy();
      });
      req.on('error', fail);
      req.end(body);
    });
}
