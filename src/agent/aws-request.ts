import type { ChunkedOutput } from '../aws/aws-chunked.js';
import { MAX_SIGN_FORM_BYTES, type AwsSignRequest } from '../aws/sign-api.js';
import { ALGORITHM, parseAuthorization, type AuthorizationHeader } from '../aws/sigv4.js';
import { ChainwardenError } from '../errors.js';
import { protocolOf, type AwsProtocol } from './aws-errors.js';

/** What an SDK's request looks like before any body byte is read. */
export interface AwsRequestHead {
  method: string;
  /** The request target as received: origin-form path and query, percent-encoded as the SDK sent it. */
  url: string;
  /** Every header by lowercased name, each value as received (Node's `headersDistinct`). */
  headers: Record<string, string[]>;
  /** The size of the header section, names and values. */
  headerBytes: number;
}

/** How the body travels: held and hashed (small, any service) or streamed untouched or re-encoded (S3). */
export type BodyPlan =
  | { kind: 'buffer'; maxBytes: number; form: boolean; declaredHash: string | undefined }
  | { kind: 'stream'; reencode: { output: ChunkedOutput; decodedLength: number } | undefined };

/** Everything the gateway decided from the head: what to ask the broker (but the body's hash) and how to move the body. */
export interface AwsRequestPlan {
  protocol: AwsProtocol;
  authorization: AuthorizationHeader;
  /** The sign request without the fields that need the body (`payloadHash` is set already when the body streams). */
  sign: Omit<AwsSignRequest, 'payloadHash' | 'form'> & { payloadHash?: string };
  body: BodyPlan;
  /** Header names the SDK signed, so a header that is usually dropped on the way (Expect) is kept when it is signed. */
  signedHeaders: ReadonlySet<string>;
}

export const AWS_LIMITS = {
  /** SDK requests carry 1–3 KiB of headers; S3 user metadata is capped at 2 KiB. */
  maxHeaderBytes: 16 * 1024,
  /** Non-S3 bodies are held to be hashed; DynamoDB's own limit on a request is 16 MB. */
  maxBufferedBody: 16 * 1024 * 1024,
  /**
   * A body that names the operation or its resource (a query-protocol form, a JSON-protocol
   * document) goes to the broker, which derives the hop from it: at most this, the broker's bound.
   */
  maxForm: MAX_SIGN_FORM_BYTES,
};

/** Signing services whose x-amz-content-sha256 AWS checks against the body, so the body can stream without being hashed here. */
const HASH_CHECKING_SERVICES = new Set(['s3', 's3-object-lambda', 's3-outposts']);
const HEX_SHA256 = /^[0-9a-f]{64}$/;
const STREAM_AS_IS = new Set(['UNSIGNED-PAYLOAD', 'STREAMING-UNSIGNED-PAYLOAD-TRAILER']);
const SIGNED_STREAMING: Record<string, ChunkedOutput> = {
  'STREAMING-AWS4-HMAC-SHA256-PAYLOAD': 'decoded',
  'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER': 'unsigned-trailer',
};

const invalid = (message: string, field?: string) => new ChainwardenError('aws_request_invalid', message, field ? { field } : {});

/** A header's value when it must appear at most once. */
function single(headers: Record<string, string[]>, name: string): string | undefined {
  const values = headers[name];
  if (values === undefined || values.length === 0) return undefined;
  if (values.length > 1) throw invalid(`the request has ${values.length} ${name} headers; it may have one`, name);
  return values[0];
}

/** The request target split as received; only origin-form (`/path?query`) is a request to this listener. */
function splitTarget(url: string): { path: string; query: string } {
  if (!url.startsWith('/')) throw invalid('the request target is not a path: the chainwarden gateway is an AWS endpoint, not a proxy');
  const q = url.indexOf('?');
  return q < 0 ? { path: url, query: '' } : { path: url.slice(0, q), query: url.slice(q + 1) };
}

/**
 * Reads a request's head into a plan, or refuses it with a coded error: parse, then decide,
 * nothing sent anywhere. Pure, so every refusal is a table row in its test.
 */
export function planAwsRequest(head: AwsRequestHead): AwsRequestPlan {
  if (head.headerBytes > AWS_LIMITS.maxHeaderBytes) throw new ChainwardenError('aws_headers_too_large', `the request's headers are ${head.headerBytes} bytes, more than the ${AWS_LIMITS.maxHeaderBytes} the chainwarden gateway takes`);
  const { path, query } = splitTarget(head.url);
  const protocol = protocolOf({ method: head.method, headers: { 'x-amz-target': single(head.headers, 'x-amz-target'), 'content-type': single(head.headers, 'content-type') } }, query);
  if (isPresignedQuery(query)) {
    throw new ChainwardenError('aws_auth_unsupported', 'the chainwarden gateway does not take presigned URLs: one signed with the placeholder credentials is worthless, and the gateway signs only what the SDK sends it signed in the Authorization header');
  }
  const header = single(head.headers, 'authorization');
  const authorization = parseSigV4(header);
  const signed: Record<string, string> = {};
  for (const name of authorization.signedHeaders) {
    const values = head.headers[name];
    if (!values || values.length === 0) throw invalid(`SignedHeaders names ${name}, which the request does not have`, 'authorization');
    // Repeated headers are one comma-separated value in SigV4's canonical form.
    signed[name] = values.join(',');
  }
  // S3 refuses x-amz-* headers its signature does not cover. Passed on without them, a copy would
  // go as an empty PutObject and an encrypted upload as a plain one: refused here as S3 would.
  if (HASH_CHECKING_SERVICES.has(authorization.service)) {
    const unsigned = Object.keys(head.headers).filter((name) => name.startsWith('x-amz-') && !authorization.signedHeaders.includes(name));
    if (unsigned.length > 0) throw invalid(`the request has x-amz- headers its signature does not cover (${unsigned.slice(0, 4).join(', ')}), which S3 refuses: sign every x-amz- header`, unsigned[0]);
  }
  const { body, payloadHash, forward } = payloadPlan(head, query, authorization, protocol);
  return {
    protocol,
    authorization,
    sign: { authorization: header ?? '', method: head.method, path, query, headers: signed, ...(payloadHash ? { payloadHash } : {}), ...(forward ? { forward } : {}) },
    body,
    signedHeaders: new Set(authorization.signedHeaders),
  };
}

/** Schemes an SDK may sign with that the gateway cannot pass on, named so the refusal says what to change. */
const OTHER_SCHEMES: Record<string, string> = {
  AWS: 'Signature Version 2',
  'AWS4-ECDSA-P256-SHA256': 'SigV4a (multi-region access points)',
};

/**
 * The SDK's SigV4 Authorization, read with the broker's parser. Before it, what only the sidecar
 * tells apart: no header at all (403 MissingAuthenticationToken) and another scheme (403
 * AccessDenied); a SigV4 header that does not parse is the parser's 400.
 */
function parseSigV4(header: string | undefined): AuthorizationHeader {
  const scheme = header?.trim().split(/\s/, 1)[0] ?? '';
  if (header !== undefined && scheme !== '' && scheme !== ALGORITHM) {
    throw new ChainwardenError('aws_auth_unsupported', `the chainwarden gateway passes on requests signed with ${ALGORITHM} in the Authorization header only, not ${OTHER_SCHEMES[scheme] ?? 'another scheme'}: use an AWS SDK with the credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI`, { field: 'authorization' });
  }
  return parseAuthorization(header?.trim() === '' ? undefined : header?.trim());
}

/**
 * Query parameters that sign a URL (SigV4 presigning; SigV2's always has AWSAccessKeyId beside its
 * Signature); names are compared decoded and without case, as AWS reads them.
 */
const PRESIGNING_PARAMETERS = new Set(['x-amz-algorithm', 'x-amz-credential', 'x-amz-signature', 'awsaccesskeyid']);

/** Whether a raw query string (without `?`) carries presigned-URL authentication. */
export function isPresignedQuery(query: string): boolean {
  return queryNames(query).some((name) => PRESIGNING_PARAMETERS.has(name.toLowerCase()));
}

/** The names of a raw query string's parameters (without `?`), percent-decoded as AWS reads them. */
function queryNames(query: string): string[] {
  if (query === '') return [];
  return query.split('&').map((pair) => {
    const name = pair.split('=', 1)[0] ?? '';
    try {
      return decodeURIComponent(name);
    } catch {
      return name;
    }
  });
}

/** How the body travels, and for a streamed body the payload hash and header changes the broker signs instead of the SDK's. */
function payloadPlan(head: AwsRequestHead, query: string, authorization: AuthorizationHeader, protocol: AwsProtocol): { body: BodyPlan } & Pick<AwsSignRequest, 'forward'> & { payloadHash?: string } {
  const contentSha = single(head.headers, 'x-amz-content-sha256');
  if (authorization.service === 's3' && head.method === 'POST' && queryNames(query).includes('delete')) {
    // DeleteObjects names its objects in its body: held and shown to the broker, which decides each.
    // Its hash must be signed, so that S3 checks it deletes the objects decided.
    if (contentSha === undefined || !HEX_SHA256.test(contentSha)) {
      throw invalid('a DeleteObjects body must be signed with its SHA-256 in x-amz-content-sha256: the broker decides each object it names, and S3 must check it deletes those', 'x-amz-content-sha256');
    }
    if (Number(single(head.headers, 'content-length') ?? '0') > AWS_LIMITS.maxForm) throw tooLarge(AWS_LIMITS.maxForm, true);
    return { body: { kind: 'buffer', maxBytes: AWS_LIMITS.maxForm, form: true, declaredHash: contentSha } };
  }
  if (contentSha !== undefined && HASH_CHECKING_SERVICES.has(authorization.service)) {
    if (HEX_SHA256.test(contentSha) || STREAM_AS_IS.has(contentSha)) return { body: { kind: 'stream', reencode: undefined }, payloadHash: contentSha };
    const output = SIGNED_STREAMING[contentSha];
    if (output === undefined) {
      throw invalid(`x-amz-content-sha256 is ${describeMarker(contentSha)}: the chainwarden gateway passes on a hex SHA-256, UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER and signed aws-chunked (STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER])`, 'x-amz-content-sha256');
    }
    const length = decodedLength(head);
    return { body: { kind: 'stream', reencode: { output, decodedLength: length } }, payloadHash: contentSha, forward: reencodedForward(head, output, length) };
  }
  if (contentSha !== undefined && !HEX_SHA256.test(contentSha)) {
    throw invalid(`x-amz-content-sha256 is ${describeMarker(contentSha)}, which only S3 takes; ${authorization.service} hashes the payload itself`, 'x-amz-content-sha256');
  }
  // The broker derives these calls' resource from the body: a body it cannot see would be a hop on `*`.
  const form = (protocol === 'query' && head.method === 'POST') || protocol === 'json';
  const maxBytes = form ? AWS_LIMITS.maxForm : AWS_LIMITS.maxBufferedBody;
  const declared = Number(single(head.headers, 'content-length') ?? '0');
  if (declared > maxBytes) throw tooLarge(maxBytes, form);
  return { body: { kind: 'buffer', maxBytes, form, declaredHash: contentSha } };
}

/**
 * Whether the body streams to AWS without its signature binding it: UNSIGNED-PAYLOAD, or
 * aws-chunked, whose chunks the agent signs with its placeholder key. Its content is not known
 * when the broker decides the call (see `UnboundUploads`); a hex SHA-256, which S3 checks, is.
 */
export const unboundBody = (plan: Pick<AwsRequestPlan, 'body' | 'sign'>): boolean => plan.body.kind === 'stream' && !HEX_SHA256.test(plan.sign.payloadHash ?? '');

/** What a re-encoded body is sent as. */
function reencodedForward(head: AwsRequestHead, output: ChunkedOutput, length: number): NonNullable<AwsSignRequest['forward']> {
  if (output === 'unsigned-trailer') {
    // Dropping the chunk signatures changes the length by an amount known only at the end: the body goes on chunked.
    return { payloadHash: 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', headers: { 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', 'content-length': null } };
  }
  const encodings = (single(head.headers, 'content-encoding') ?? '')
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '' && e.toLowerCase() !== 'aws-chunked');
  return {
    payloadHash: 'UNSIGNED-PAYLOAD',
    headers: {
      'x-amz-content-sha256': 'UNSIGNED-PAYLOAD',
      'content-length': String(length),
      'content-encoding': encodings.length > 0 ? encodings.join(',') : null,
      'x-amz-decoded-content-length': null,
    },
  };
}

function decodedLength(head: AwsRequestHead): number {
  const text = single(head.headers, 'x-amz-decoded-content-length');
  if (text === undefined || !/^\d{1,15}$/.test(text)) throw invalid('a signed aws-chunked body needs x-amz-decoded-content-length, the payload\'s length in decimal', 'x-amz-decoded-content-length');
  return Number(text);
}

/** A marker named in a message only when it looks like one; anything else is not echoed. */
function describeMarker(value: string): string {
  return /^[A-Z0-9-]{1,64}$/.test(value) ? value : 'not a payload hash';
}

export function tooLarge(maxBytes: number, form: boolean): ChainwardenError {
  return new ChainwardenError(
    'body_too_large',
    form
      ? `the body is over ${maxBytes} bytes; the chainwarden gateway shows the broker the bodies of query- and JSON-protocol calls, which name what the call acts on, and takes at most that`
      : `the body is over ${maxBytes} bytes; the chainwarden gateway hashes bodies of services other than S3 in memory and takes at most that`,
  );
}
