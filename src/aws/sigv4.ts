import { createHash, createHmac, hash, timingSafeEqual } from 'node:crypto';
import { getCanonicalHeaders, getCanonicalQuery, getSigningKey } from '@smithy/signature-v4';
import type { Checksum, HttpRequest, SourceData } from '@smithy/types';
import { ChainwardenError } from '../errors.js';

/**
 * Signature Version 4 for the gateway, on both sides of it: checking what an SDK signed with its
 * placeholder key, and signing the same request for AWS with the task's session. The fiddly
 * parts of the canonical form (query and header encoding, the signing-key derivation) are the
 * AWS SDK's own signer's functions.
 */

export const ALGORITHM = 'AWS4-HMAC-SHA256';

/** What an `Authorization: AWS4-HMAC-SHA256 …` header says. */
export interface AuthorizationHeader {
  accessKeyId: string;
  shortDate: string;
  region: string;
  service: string;
  signedHeaders: string[];
  signature: string;
}

const invalid = (message: string) => new ChainwardenError('aws_request_invalid', message);

export function parseAuthorization(header: string | undefined): AuthorizationHeader {
  if (!header) throw new ChainwardenError('aws_unsigned', 'the request is not signed: an AWS SDK signs with the credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI');
  if (header.length > 4096) throw invalid('the Authorization header is longer than 4096 characters');
  if (!header.startsWith(`${ALGORITHM} `)) throw invalid(`only ${ALGORITHM} signatures are accepted (Signature Version 4)`);
  const fields = new Map<string, string>();
  for (const part of header.slice(ALGORITHM.length + 1).split(',')) {
    const eq = part.indexOf('=');
    if (eq > 0) fields.set(part.slice(0, eq).trim(), part.slice(eq + 1).trim());
  }
  const credential = /^([A-Z0-9]{16,128})\/(\d{8})\/([a-z0-9-]{1,32})\/([a-z0-9-]{1,64})\/aws4_request$/.exec(fields.get('Credential') ?? '');
  const signedHeaders = fields.get('SignedHeaders') ?? '';
  const signature = fields.get('Signature') ?? '';
  if (!credential) throw invalid('the Authorization header has no valid Credential=<key id>/<date>/<region>/<service>/aws4_request');
  if (!/^[a-z0-9_-]+(;[a-z0-9_-]+)*$/.test(signedHeaders)) throw invalid('the Authorization header has no valid SignedHeaders');
  if (!/^[0-9a-f]{64}$/.test(signature)) throw invalid('the Authorization header has no valid Signature');
  const [, accessKeyId = '', shortDate = '', region = '', service = ''] = credential;
  return { accessKeyId, shortDate, region, service, signedHeaders: signedHeaders.split(';'), signature };
}

const toBytes = (data: ArrayBuffer | ArrayBufferView): Uint8Array => (ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : new Uint8Array(data));

/** node:crypto behind the checksum interface the SDK's key derivation takes. */
export class Sha256 implements Checksum {
  private hash: ReturnType<typeof createHash> | ReturnType<typeof createHmac>;
  private readonly secret: string | Uint8Array | undefined;
  constructor(secret?: SourceData) {
    this.secret = secret === undefined || typeof secret === 'string' ? secret : toBytes(secret);
    this.hash = this.fresh();
  }
  private fresh() {
    return this.secret === undefined ? createHash('sha256') : createHmac('sha256', this.secret);
  }
  update(data: SourceData): void {
    this.hash.update(typeof data === 'string' ? data : toBytes(data));
  }
  digest(): Promise<Uint8Array> {
    return Promise.resolve(new Uint8Array(this.hash.digest()));
  }
  reset(): void {
    this.hash = this.fresh();
  }
}

export const sha256Hex = (data: string | Uint8Array) => hash('sha256', data, 'hex');

function queryObject(query: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const part of query.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const decode = (s: string) => {
      try {
        return decodeURIComponent(s);
      } catch {
        throw invalid(`the query string is not valid percent-encoding near ${JSON.stringify(s.slice(0, 40))}`);
      }
    };
    const key = decode(eq < 0 ? part : part.slice(0, eq));
    const value = decode(eq < 0 ? '' : part.slice(eq + 1));
    const known = out[key];
    out[key] = known === undefined ? value : Array.isArray(known) ? [...known, value] : [known, value];
  }
  return out;
}

const escapeUri = (s: string) => encodeURIComponent(s).replace(/[!'()*]/g, (c) => `%${c.charCodeAt(0).toString(16).toUpperCase()}`);

/** The canonical path: S3 signs the path as sent; every other service its normalized, encoded-again form. */
function canonicalPath(service: string, path: string): string {
  if (service === 's3') return path || '/';
  const segments: string[] = [];
  for (const segment of path.split('/')) {
    if (segment === '' || segment === '.') continue;
    if (segment === '..') segments.pop();
    else segments.push(segment);
  }
  const normalized = `/${segments.join('/')}${segments.length > 0 && path.endsWith('/') ? '/' : ''}`;
  return escapeUri(normalized).replace(/%2F/g, '/');
}

export interface SignatureInput {
  method: string;
  path: string;
  query: string;
  /** Exactly the headers to sign, lowercased names. */
  headers: Record<string, string>;
  payloadHash: string;
  amzDate: string;
  region: string;
  service: string;
}

/** The hex signature of `input` under the secret key, with the scope and signed-header list it covers. */
export async function signatureOf(input: SignatureInput, credentials: { accessKeyId: string; secretAccessKey: string }): Promise<{ signature: string; scope: string; signedHeaders: string }> {
  const names = Object.keys(input.headers).sort();
  const canonical = getCanonicalHeaders({ headers: input.headers } as unknown as HttpRequest, undefined, new Set(names));
  const canonicalHeaders = names.map((n) => `${n}:${canonical[n] ?? ''}\n`).join('');
  const signedHeaders = names.join(';');
  const request = [input.method, canonicalPath(input.service, input.path), getCanonicalQuery({ query: queryObject(input.query) } as unknown as HttpRequest), canonicalHeaders, signedHeaders, input.payloadHash].join('\n');
  const shortDate = input.amzDate.slice(0, 8);
  const scope = `${shortDate}/${input.region}/${input.service}/aws4_request`;
  const stringToSign = [ALGORITHM, input.amzDate, scope, sha256Hex(request)].join('\n');
  const key = await getSigningKey(Sha256, credentials, shortDate, input.region, input.service);
  return { signature: createHmac('sha256', key).update(stringToSign).digest('hex'), scope, signedHeaders };
}

/** Whether `auth` is the SDK's signature of `input` with `secretAccessKey`, compared in constant time. */
export async function verifySignature(auth: AuthorizationHeader, input: SignatureInput, secretAccessKey: string): Promise<boolean> {
  const { signature } = await signatureOf(input, { accessKeyId: auth.accessKeyId, secretAccessKey });
  return timingSafeEqual(Buffer.from(signature, 'hex'), Buffer.from(auth.signature, 'hex'));
}

/** `X-Amz-Date` form of a time: 20261121T101500Z. */
export const amzDateOf = (ms: number) => new Date(ms).toISOString().replace(/[-:]/g, '').replace(/\.\d{3}/, '');

export function parseAmzDate(value: string | undefined): number | undefined {
  const m = /^(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z$/.exec(value ?? '');
  return m ? Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]), Number(m[4]), Number(m[5]), Number(m[6])) : undefined;
}
