import { MAX_HOP_ATTRIBUTE, MAX_HOP_RESOURCE } from '../api/schema.js';
import type { AgentPrincipal } from '../broker/auth.js';
import type { CallHop, GatewayHops, GatewayVerdict } from '../broker/gateway-hops.js';
import type { HopAnswer } from '../broker/hops.js';
import type { CredentialBroker } from '../credentials/broker.js';
import { ChainwardenError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';
import { awsOperation, type AwsOperation } from './operations.js';
import type { Placeholders } from './placeholders.js';
import { amzDateOf, parseAmzDate, parseAuthorization, sha256Hex, signatureOf, verifySignature } from './sigv4.js';
import { CONNECTION_HEADERS, MAX_SIGN_FORM_BYTES, type AwsSignAnswer, type AwsSignRefusal, type AwsSignRequest } from './sign-api.js';

/** The SHA-256 of an empty body: what a call that carries none signs. */
const EMPTY_SHA256 = sha256Hex('');

/** How far an SDK's X-Amz-Date may be from the broker's clock, as AWS allows. */
const MAX_SKEW_MS = 15 * 60_000;
/** The methods whose body is what the call does (S3 ignores a GET's). */
const CARRIES_BODY = new Set(['PUT', 'POST', 'PATCH']);
/** Headers the broker sets for the real endpoint; the SDK's values of them are never signed on. */
const REPLACED = new Set(['authorization', 'x-amz-date', 'x-amz-security-token', 'host', 'x-amz-content-sha256']);
/**
 * Signed headers the request's hash leaves out: those that change from one sending of the same
 * call to the next (the SDK's invocation id and attempt, its clock and name, a trace) and those the
 * body's hash binds already. A call retried once approved must be the hop that was approved.
 */
const UNBOUND = new Set([...REPLACED, 'date', 'amz-sdk-invocation-id', 'amz-sdk-request', 'user-agent', 'x-amz-user-agent', 'x-amzn-trace-id', 'expect', 'content-length', 'x-amz-decoded-content-length', 'transfer-encoding', 'connection']);

export interface AwsGatewayDeps {
  placeholders: Placeholders;
  credentials: Pick<CredentialBroker, 'credentials'>;
  /** Decides the call's hops: pending dedupe, approvals used once, transaction tokens. */
  hops: Pick<GatewayHops, 'decideCall'>;
  /** The region the gateway serves: where the operator's sessions are used. */
  region: string;
  /** One endpoint for every service (a local emulator); the service's regional AWS endpoint otherwise. */
  endpoint?: string;
  clock: Clock;
  log: Logger;
}

/** `decided`: the answer of the hop the call goes on, for what the chain had touched when it was decided. */
export type AwsSignResult = { status: 200; body: AwsSignAnswer; decided: HopAnswer } | { status: number; body: AwsSignRefusal };

/** The service's regional endpoint in the role's partition; IAM is global. */
export function awsEndpoint(service: string, region: string, partition: string): string {
  const domain = partition === 'aws-cn' ? 'amazonaws.com.cn' : 'amazonaws.com';
  if (service === 'iam') return partition === 'aws-cn' ? `https://iam.cn-north-1.${domain}` : `https://iam.${domain}`;
  return `https://${service}.${region}.${domain}`;
}

const refusal = (err: ChainwardenError, extra: Partial<AwsSignRefusal> = {}): AwsSignResult => ({ status: err.status, body: { error: { code: err.code, message: err.message, ...(err.field ? { field: err.field } : {}) }, ...extra } });

/**
 * The broker's half of the AWS gateway (see sign-api.ts): checks what the SDK signed with its
 * placeholder key, decides the call as a hop with the whole chain in view, and on allow signs
 * it for the real endpoint with the task's STS session, which never leaves the broker.
 */
export class AwsGateway {
  constructor(private readonly deps: AwsGatewayDeps) {}

  async sign(who: AgentPrincipal, request: AwsSignRequest): Promise<AwsSignResult> {
    const task = who.task;
    const key = `${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''}`;
    const auth = parseAuthorization(request.authorization);
    const credential = this.deps.placeholders.credentialOf(task, auth.accessKeyId);
    if (!credential) throw new ChainwardenError('aws_unknown_key', `the key id ${auth.accessKeyId} is not one of AgentTask ${key}'s: sign with the credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI`);
    const spec = task.spec.credentials?.find((c) => c.name === credential);
    if (spec?.aws.delivery === 'Direct') throw new ChainwardenError('aws_request_invalid', `credential ${credential} of AgentTask ${key} is delivered Direct: its SDK calls AWS itself, not the gateway`);
    const headers = lowercase(request.headers);
    for (const name of auth.signedHeaders) if (headers[name] === undefined) throw new ChainwardenError('aws_request_invalid', `the signed header ${name} was not passed on`, { field: `headers.${name}` });
    for (const name of ['host', 'x-amz-date']) if (!auth.signedHeaders.includes(name)) throw new ChainwardenError('aws_request_invalid', `the signature must cover the ${name} header`);
    // Signed, it would go on to AWS beside the sidecar's own framing: two framings of one body, which a front end may read as two requests.
    const framing = auth.signedHeaders.find((name) => CONNECTION_HEADERS.has(name));
    if (framing !== undefined) throw new ChainwardenError('aws_request_invalid', `the signature covers ${framing}, a header about one connection that the gateway sets for itself: sign without it (AWS SDKs leave it out)`, { field: `headers.${framing}` });
    const amzDate = headers['x-amz-date'] ?? '';
    const signedAt = parseAmzDate(amzDate);
    if (signedAt === undefined || Math.abs(signedAt - this.deps.clock.now()) > MAX_SKEW_MS) throw new ChainwardenError('aws_request_invalid', `X-Amz-Date ${amzDate} is not within 15 minutes of the broker's clock`);
    if (amzDate.slice(0, 8) !== auth.shortDate) throw new ChainwardenError('aws_request_invalid', 'the credential scope date is not the X-Amz-Date day');
    const signed = Object.fromEntries(auth.signedHeaders.map((n) => [n, headers[n] ?? '']));
    const placeholder = this.deps.placeholders.of(task, credential);
    const sdk = { method: request.method, path: request.path, query: request.query, headers: signed, payloadHash: request.payloadHash, amzDate, region: auth.region, service: auth.service };
    if (!(await verifySignature(auth, sdk, placeholder.secretAccessKey))) {
      throw new ChainwardenError('aws_signature_mismatch', `the signature does not match the request signed with credential ${credential}'s key: sign with the credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI`);
    }
    if (request.forward !== undefined) checkForward(request.payloadHash, signed, request.forward);
    if (request.form !== undefined) {
      if (request.form.length > MAX_SIGN_FORM_BYTES) throw new ChainwardenError('aws_request_invalid', `the request body passed on is longer than ${MAX_SIGN_FORM_BYTES} characters`, { field: 'form' });
      if (sha256Hex(request.form) !== request.payloadHash) throw new ChainwardenError('aws_request_invalid', 'the request body passed on is not the body the SDK signed', { field: 'form' });
    }
    if (auth.region !== this.deps.region && auth.service !== 'iam') {
      throw new ChainwardenError('aws_request_invalid', `region ${auth.region}: this gateway serves ${this.deps.region}; configure the SDK's region as ${this.deps.region}`);
    }
    const roleArn = spec?.aws.roleArn ?? '';
    const [, partition = 'aws', , , account = ''] = roleArn.split(':');
    // Decided on the signed headers alone: those are the ones signed on for AWS.
    const operation = awsOperation({ service: auth.service, region: auth.region, account, partition, method: request.method, path: request.path, query: request.query, headers: signed, body: request.form });
    if (operation.protocol !== 'rest') {
      // What the service reads is what was decided: a body the broker was not shown (a GET or PUT
      // with one), or one the service would decompress first, would be read unseen.
      if (request.form === undefined && request.payloadHash !== EMPTY_SHA256) throw new ChainwardenError('aws_request_invalid', `a ${operation.protocol}-protocol call carries its parameters in its query or in a POSTed ${operation.protocol === 'json' ? 'JSON document' : 'form'}, and this one has a body besides`, { field: 'payloadHash' });
      if (signed['content-encoding'] !== undefined) throw new ChainwardenError('aws_request_invalid', `the body is sent with Content-Encoding ${JSON.stringify(signed['content-encoding'].slice(0, 40))}: the service would read it decoded, which the broker cannot decide on; send it uncompressed`, { field: 'headers.content-encoding' });
    }
    // An approval binds the hop's attributes: with the payload's hash among them, approving a PutItem releases that item, not any the agent then sends.
    // A body sent unhashed (UNSIGNED-PAYLOAD, a streaming marker) is named by its marker, and no approval releases it (`approvable`).
    // The rest of the request is bound too: a query's parameters (an SQS message sent in the URL) and the headers signed (an S3 object's metadata).
    const attributes: Record<string, string> = {};
    if (/^[0-9a-f]{64}$/.test(request.payloadHash) || CARRIES_BODY.has(request.method)) attributes.payloadSha256 = request.payloadHash || 'absent';
    attributes.requestSha256 = requestHash(request.method, request.path, request.query, signed);
    // Which of the task's credentials signs is bound as well: an approval of a call signed with a reader's keys releases no writer's.
    const verdict = await this.decideHops(who, operation, attributes, credential);
    if (!verdict.allowed) return refusal(verdict.error, { hopId: verdict.hopId, decision: verdict.decision, reasons: verdict.reasons });
    const answer = verdict.answer;
    const session = await this.deps.credentials.credentials(who, credential);
    const url = new URL(this.deps.endpoint ?? awsEndpoint(auth.service, auth.region, partition));
    const upstream: Record<string, string> = {};
    for (const name of auth.signedHeaders) if (!REPLACED.has(name)) upstream[name] = headers[name] ?? '';
    for (const [name, value] of Object.entries(lowercase(request.forward?.headers ?? {}))) {
      if (REPLACED.has(name)) continue;
      if (value === null) delete upstream[name];
      else upstream[name] = value;
    }
    const date = amzDateOf(this.deps.clock.now());
    Object.assign(upstream, { host: url.host, 'x-amz-date': date, 'x-amz-security-token': session.sessionToken, 'x-amz-content-sha256': request.forward?.payloadHash ?? request.payloadHash });
    const { signature, scope, signedHeaders } = await signatureOf(
      { method: request.method, path: request.path, query: request.query, headers: upstream, payloadHash: upstream['x-amz-content-sha256'] ?? '', amzDate: date, region: auth.region, service: auth.service },
      session,
    );
    this.deps.log.debug({ task: key, hopId: answer.hopId, action: operation.action, upstream: url.origin }, 'AWS call signed');
    return {
      status: 200,
      decided: answer,
      body: {
        hopId: answer.hopId,
        decision: 'allow',
        reasons: answer.reasons,
        url: url.origin,
        headers: {
          authorization: `AWS4-HMAC-SHA256 Credential=${session.accessKeyId}/${scope}, SignedHeaders=${signedHeaders}, Signature=${signature}`,
          'x-amz-date': date,
          'x-amz-security-token': session.sessionToken,
          'x-amz-content-sha256': upstream['x-amz-content-sha256'] ?? '',
          host: url.host,
          // Not signed: AWS passes over it; a service behind a proxy that knows it can verify the chain.
          'txn-token': verdict.txnToken,
        },
      },
    };
  }

  /**
   * The call's hops: a copy is the read of its source, then the write (each names the other, so
   * approving one copy releases no other); a DeleteObjects is each object it deletes; any other
   * call is one hop. Each names the credential that would sign it. Decided as one call (`GatewayHops.decideCall`): it goes on only if every
   * hop is allowed, and hops that need approval wait together.
   */
  private decideHops(who: AgentPrincipal, operation: AwsOperation, attributes: Record<string, string>, credential: string): Promise<GatewayVerdict> {
    const hop = (action: string, resource: string, attrs: Record<string, string>, what: string, after?: number): CallHop => ({
      request: { tool: operation.tool, action, resource, intent: '', attributes: { ...attrs, credential } },
      what: `${action} on ${resource}${what}`,
      ...(after !== undefined ? { after } : {}),
    });
    const each = operation.each ?? [];
    // Checked for all before any is decided, so that a long key at the end leaves no decisions behind.
    const long = each.findIndex((one) => one.resource.length > MAX_HOP_RESOURCE);
    if (long >= 0) throw new ChainwardenError('aws_request_invalid', `object ${long + 1} of the DeleteObjects is ${each[long]?.resource.slice(0, 80) ?? ''}…, longer than the ${MAX_HOP_RESOURCE} characters a hop's resource takes`, { field: 'delete' });
    const hops = operation.reads
      ? [
          hop(operation.reads.action, operation.reads.resource, { copyTo: attributeValue(operation.resource) }, ' (the source of a copy)'),
          hop(operation.action, operation.resource, { ...attributes, copySource: attributeValue(operation.reads.resource) }, '', 0),
        ]
      : each.length > 0
        ? each.map((one, i) => hop(one.action, one.resource, mapValues(one.attributes ?? {}, attributeValue), ` (object ${i + 1} of the ${each.length} a DeleteObjects deletes)`))
        : [hop(operation.action, operation.resource, attributes, '')];
    return this.deps.hops.decideCall(who, hops, RETRY);
  }
}

/**
 * The sidecar may re-encode a signed aws-chunked body on its way (the chunk signatures are the
 * placeholder's), and says how in `forward`. Those two re-encodings are all it may ask the broker
 * to sign instead of what the SDK signed: nothing else the SDK sent can be changed under the
 * broker's signature.
 */
function checkForward(sdkHash: string, headers: Record<string, string>, forward: NonNullable<AwsSignRequest['forward']>): void {
  const refuse = (what: string) => new ChainwardenError('aws_request_invalid', `forward: ${what}; the gateway re-encodes only a signed aws-chunked body`, { field: 'forward' });
  const changes = lowercase(forward.headers);
  const allowed: Record<string, (value: string | null) => boolean> =
    sdkHash === 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER' && forward.payloadHash === 'STREAMING-UNSIGNED-PAYLOAD-TRAILER'
      ? { 'x-amz-content-sha256': (v) => v === forward.payloadHash, 'content-length': (v) => v === null }
      : sdkHash === 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD' && forward.payloadHash === 'UNSIGNED-PAYLOAD'
        ? {
            'x-amz-content-sha256': (v) => v === forward.payloadHash,
            'content-length': (v) => v === headers['x-amz-decoded-content-length'],
            'x-amz-decoded-content-length': (v) => v === null,
            // What the SDK declared, less aws-chunked: the body's own encoding stays.
            'content-encoding': (v) => (v ?? '') === withoutAwsChunked(headers['content-encoding'] ?? ''),
          }
        : {};
  if (Object.keys(allowed).length === 0) throw refuse(`a payload signed ${JSON.stringify(sdkHash.slice(0, 64))} cannot be sent on as ${JSON.stringify(forward.payloadHash.slice(0, 64))}`);
  for (const [name, value] of Object.entries(changes)) {
    if (!allowed[name]?.(value)) throw refuse(`the header change ${name}: ${JSON.stringify(value)?.slice(0, 80) ?? ''} is not that re-encoding's`);
  }
}

const withoutAwsChunked = (encodings: string) =>
  encodings
    .split(',')
    .map((e) => e.trim())
    .filter((e) => e !== '' && e.toLowerCase() !== 'aws-chunked')
    .join(',');

const bad = (field: string, message: string) => new ChainwardenError('aws_request_invalid', `${field}: ${message}`, { field });

/** The sidecar's request, checked field by field; the first problem is a 400 naming the field. */
export function parseSignRequest(body: unknown): AwsSignRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('body', 'must be a JSON object');
  const b = body as Record<string, unknown>;
  const text = (field: string, max: number, optional = false): string | undefined => {
    const v = b[field];
    if (v === undefined && optional) return undefined;
    if (typeof v !== 'string') throw bad(field, 'must be a string');
    if (v.length > max) throw bad(field, `must be at most ${max} characters`);
    return v;
  };
  const headerMap = (field: string, v: unknown, nullable: boolean): Record<string, string | null> => {
    if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(field, 'must be an object of header names to values');
    const entries = Object.entries(v as Record<string, unknown>);
    if (entries.length > 100) throw bad(field, 'may have at most 100 headers');
    for (const [k, value] of entries) {
      if (!/^[A-Za-z0-9_-]{1,128}$/.test(k)) throw bad(`${field}.${k}`, 'is not a header name');
      if (!(typeof value === 'string' && value.length <= 8192) && !(nullable && value === null)) throw bad(`${field}.${k}`, `must be a string of at most 8192 characters${nullable ? ' or null' : ''}`);
    }
    return v as Record<string, string | null>;
  };
  const method = text('method', 16) ?? '';
  if (!/^[A-Z]+$/.test(method)) throw bad('method', 'must be an HTTP method');
  const path = text('path', 4096) ?? '';
  if (!path.startsWith('/')) throw bad('path', 'must start with /');
  const request: AwsSignRequest = {
    authorization: text('authorization', 4096) ?? '',
    method,
    path,
    query: text('query', 16384) ?? '',
    headers: headerMap('headers', b.headers, false) as Record<string, string>,
    payloadHash: text('payloadHash', 128) ?? '',
  };
  const form = text('form', MAX_SIGN_FORM_BYTES, true);
  if (form !== undefined) request.form = form;
  if (b.forward !== undefined) {
    const f = b.forward as Record<string, unknown> | null;
    if (typeof f !== 'object' || f === null) throw bad('forward', 'must be an object {payloadHash, headers}');
    if (typeof f.payloadHash !== 'string' || f.payloadHash.length > 128) throw bad('forward.payloadHash', 'must be a string of at most 128 characters');
    request.forward = { payloadHash: f.payloadHash, headers: headerMap('forward.headers', f.headers ?? {}, true) };
  }
  return request;
}

/** How to go on after a refusal that waits for approval. */
const RETRY = 'retry the call once an AgentApproval for it exists';

/** A resource as a hop attribute: as it is when it fits one, else its hash. */
const mapValues = (record: Record<string, string>, f: (value: string) => string): Record<string, string> => Object.fromEntries(Object.entries(record).map(([k, v]) => [k, f(v)]));

function attributeValue(resource: string): string {
  return resource.length <= MAX_HOP_ATTRIBUTE ? resource : `sha256:${sha256Hex(resource)}`;
}

function lowercase<T>(headers: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(headers).map(([k, v]) => [k.toLowerCase(), v]));
}

/** The request but its body, as it goes to AWS: method, path and query as signed, and the signed headers an approval binds (not `UNBOUND`). */
function requestHash(method: string, path: string, query: string, signed: Record<string, string>): string {
  const headers = Object.entries(signed)
    .filter(([name]) => !UNBOUND.has(name))
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return sha256Hex(JSON.stringify([method, path, query, headers]));
}
