import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isPresignedQuery, planAwsRequest, type AwsRequestHead } from '../../../src/agent/aws-request.js';
import { ChainwardenError } from '../../../src/errors.js';

const SIG = 'a'.repeat(64);
const EMPTY = 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855';
const auth = (service: string, signed = 'host;x-amz-content-sha256;x-amz-date') => `AWS4-HMAC-SHA256 Credential=CWPLACEHOLDER0001/20261121/us-east-1/${service}/aws4_request, SignedHeaders=${signed}, Signature=${SIG}`;

function head(method: string, url: string, headers: Record<string, string | string[]>): AwsRequestHead {
  const all = { host: '127.0.0.1:15081', 'x-amz-date': '20261121T081159Z', ...headers };
  return { method, url, headers: Object.fromEntries(Object.entries(all).map(([k, v]) => [k, Array.isArray(v) ? v : [v]])), headerBytes: 900 };
}

/** An S3 PUT as an SDK signs it: every header it sends signed, `extra` too. */
const s3Put = (contentSha: string, extra: Record<string, string> = {}) => {
  const headers = { 'x-amz-content-sha256': contentSha, 'content-encoding': 'aws-chunked', 'x-amz-decoded-content-length': '100', ...extra };
  const signed = ['host', 'x-amz-date', ...Object.keys(headers)].sort().join(';');
  return head('PUT', '/bkt/a/b%20c.txt?x-id=PutObject', { authorization: auth('s3', signed), ...headers });
};

const refusal = (h: AwsRequestHead) => {
  try {
    planAwsRequest(h);
    return 'planned';
  } catch (err) {
    return err instanceof ChainwardenError ? err.code : `uncoded: ${String(err)}`;
  }
};

describe('planAwsRequest: what the broker is asked and how the body travels', () => {
  it('S3 with a hex payload hash: streamed as is, the path and query as the SDK encoded them', () => {
    const plan = planAwsRequest(head('GET', '/bkt/?list-type=2&prefix=a%2F', { authorization: auth('s3'), 'x-amz-content-sha256': EMPTY }));
    expect(plan.body).toEqual({ kind: 'stream', reencode: undefined });
    expect(plan.sign).toEqual({
      authorization: auth('s3'),
      method: 'GET',
      path: '/bkt/',
      query: 'list-type=2&prefix=a%2F',
      headers: { host: '127.0.0.1:15081', 'x-amz-content-sha256': EMPTY, 'x-amz-date': '20261121T081159Z' },
      payloadHash: EMPTY,
    });
  });

  it.each(['UNSIGNED-PAYLOAD', 'STREAMING-UNSIGNED-PAYLOAD-TRAILER'])('S3 with %s: streamed as is', (marker) => {
    const plan = planAwsRequest(s3Put(marker));
    expect(plan.body).toEqual({ kind: 'stream', reencode: undefined });
    expect(plan.sign.payloadHash).toBe(marker);
    expect(plan.sign.forward).toBeUndefined();
  });

  it('signed aws-chunked without a trailer: decoded, sent as UNSIGNED-PAYLOAD of the decoded length, and the broker told', () => {
    const plan = planAwsRequest(s3Put('STREAMING-AWS4-HMAC-SHA256-PAYLOAD', { 'content-encoding': 'aws-chunked,gzip' }));
    expect(plan.body).toEqual({ kind: 'stream', reencode: { output: 'decoded', decodedLength: 100 } });
    expect(plan.sign.payloadHash).toBe('STREAMING-AWS4-HMAC-SHA256-PAYLOAD');
    expect(plan.sign.forward).toEqual({ payloadHash: 'UNSIGNED-PAYLOAD', headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', 'content-length': '100', 'content-encoding': 'gzip', 'x-amz-decoded-content-length': null } });
    expect(planAwsRequest(s3Put('STREAMING-AWS4-HMAC-SHA256-PAYLOAD')).sign.forward?.headers['content-encoding']).toBeNull();
  });

  it('signed aws-chunked with a trailer: re-framed unsigned, sent chunked, and the broker told', () => {
    const plan = planAwsRequest(s3Put('STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER', { 'x-amz-trailer': 'x-amz-checksum-crc32' }));
    expect(plan.body).toEqual({ kind: 'stream', reencode: { output: 'unsigned-trailer', decodedLength: 100 } });
    expect(plan.sign.forward).toEqual({ payloadHash: 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', headers: { 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER', 'content-length': null } });
  });

  it('JSON protocol (DynamoDB): the body is held, hashed, the SDK\'s hash checked against it, and shown to the broker', () => {
    const plan = planAwsRequest(head('POST', '/', { authorization: auth('dynamodb', 'content-type;host;x-amz-date;x-amz-target'), 'x-amz-target': 'DynamoDB_20120810.PutItem', 'content-type': 'application/x-amz-json-1.0', 'content-length': '41', 'x-amz-content-sha256': EMPTY }));
    expect(plan.protocol).toBe('json');
    expect(plan.body).toEqual({ kind: 'buffer', maxBytes: 2 * 1024 * 1024, form: true, declaredHash: EMPTY });
    expect(plan.sign.payloadHash).toBeUndefined();
  });

  it('S3 DeleteObjects: its body is held and shown to the broker, which decides each object it names; its hash must be signed', () => {
    const del = (sha: string, extra: Record<string, string> = {}) => head('POST', '/bkt/?delete=', { authorization: auth('s3', 'content-length;host;x-amz-content-sha256;x-amz-date'), 'x-amz-content-sha256': sha, 'content-length': '120', ...extra });
    expect(planAwsRequest(del(EMPTY)).body).toEqual({ kind: 'buffer', maxBytes: 2 * 1024 * 1024, form: true, declaredHash: EMPTY });
    // Named with an encoded name, it is still DeleteObjects to S3.
    expect(planAwsRequest(head('POST', '/bkt/?%64elete=', { authorization: auth('s3', 'host;x-amz-content-sha256;x-amz-date'), 'x-amz-content-sha256': EMPTY })).body).toMatchObject({ kind: 'buffer', form: true });
    expect(refusal(del('UNSIGNED-PAYLOAD'))).toBe('aws_request_invalid');
    expect(refusal(del(EMPTY, { 'content-length': String(2 * 1024 * 1024 + 1) }))).toBe('body_too_large');
  });

  it('query protocol (STS): the form goes to the broker', () => {
    const plan = planAwsRequest(head('POST', '/', { authorization: auth('sts', 'content-type;host;x-amz-date'), 'content-type': 'application/x-www-form-urlencoded; charset=utf-8', 'content-length': '43' }));
    expect(plan.protocol).toBe('query');
    expect(plan.body).toMatchObject({ kind: 'buffer', form: true, maxBytes: 2 * 1024 * 1024 });
  });

  it('a query naming Action encoded (Act%69on), as the broker and AWS read it, is the query protocol: its body goes to the broker, or is refused, as with Action', () => {
    const outcome = (url: string) => {
      try {
        const plan = planAwsRequest(head('POST', url, { authorization: auth('sts', 'host;x-amz-date'), 'content-length': '40' }));
        return { protocol: plan.protocol, body: plan.body };
      } catch (err) {
        return (err as ChainwardenError).code;
      }
    };
    for (const encoded of ['/?Act%69on=GetCallerIdentity', '/?%41ction=GetCallerIdentity&Version=2011-06-15']) {
      expect(outcome(encoded), encoded).toEqual(outcome(encoded.replace(/Act%69on|%41ction/, 'Action')));
      expect(outcome(encoded), encoded).not.toMatchObject({ protocol: 'rest-xml' });
    }
  });

  it('repeated signed headers are one comma-joined value, as SigV4 canonicalizes them', () => {
    const plan = planAwsRequest(head('GET', '/bkt/k', { authorization: auth('s3', 'host;x-amz-content-sha256;x-amz-date;x-amz-meta-a'), 'x-amz-content-sha256': EMPTY, 'x-amz-meta-a': ['1', '2'] }));
    expect(plan.sign.headers['x-amz-meta-a']).toBe('1,2');
  });

  it.each([
    ['no Authorization', head('GET', '/bkt/k', {}), 'aws_unsigned'],
    ['an empty Authorization', head('GET', '/bkt/k', { authorization: '  ' }), 'aws_unsigned'],
    ['a Bearer token', head('GET', '/bkt/k', { authorization: 'Bearer abc.def.ghi' }), 'aws_auth_unsupported'],
    ['Signature Version 2', head('GET', '/bkt/k', { authorization: 'AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=' }), 'aws_auth_unsupported'],
    ['SigV4a', head('GET', '/bkt/k', { authorization: auth('s3').replace('AWS4-HMAC-SHA256', 'AWS4-ECDSA-P256-SHA256') }), 'aws_auth_unsupported'],
    ['the SigV4 scheme alone', head('GET', '/bkt/k', { authorization: 'AWS4-HMAC-SHA256' }), 'aws_request_invalid'],
    ['a SigV4 header without a signature', head('GET', '/bkt/k', { authorization: auth('s3').replace(/, Signature=.*/, '') }), 'aws_request_invalid'],
    ['two Authorization headers', head('GET', '/bkt/k', { authorization: [auth('s3'), auth('s3')] }), 'aws_request_invalid'],
    ['a presigned URL', head('GET', '/bkt/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=K&X-Amz-Signature=abc', {}), 'aws_auth_unsupported'],
    ['a presigned URL beside a header', head('GET', '/bkt/k?X-Amz-Signature=abc', { authorization: auth('s3'), 'x-amz-content-sha256': EMPTY }), 'aws_auth_unsupported'],
    ['a proxy-style absolute target', head('GET', 'http://169.254.169.254/latest/meta-data', { authorization: auth('s3') }), 'aws_request_invalid'],
    ['a signed header the request does not have', head('GET', '/bkt/k', { authorization: auth('s3', 'host;x-amz-content-sha256;x-amz-date;x-amz-meta-gone'), 'x-amz-content-sha256': EMPTY }), 'aws_request_invalid'],
    ['a SigV4a payload marker', s3Put('STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD'), 'aws_request_invalid'],
    ['garbage as payload hash', s3Put('not-a-hash'), 'aws_request_invalid'],
    ['signed aws-chunked without its decoded length', s3Put('STREAMING-AWS4-HMAC-SHA256-PAYLOAD', { 'x-amz-decoded-content-length': '-1' }), 'aws_request_invalid'],
    ['UNSIGNED-PAYLOAD to a service that hashes the body itself', head('POST', '/', { authorization: auth('dynamodb'), 'x-amz-target': 'DynamoDB_20120810.PutItem', 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' }), 'aws_request_invalid'],
    ['a DynamoDB body over 2 MiB', head('POST', '/', { authorization: auth('dynamodb', 'host;x-amz-date'), 'x-amz-target': 'DynamoDB_20120810.PutItem', 'content-length': String(2 * 1024 * 1024 + 1) }), 'body_too_large'],
    ['a REST-JSON body (Lambda) over 16 MiB', head('POST', '/2015-03-31/functions/f/invocations', { authorization: auth('lambda', 'host;x-amz-date'), 'content-length': String(16 * 1024 * 1024 + 1) }), 'body_too_large'],
    ['a form over 2 MiB', head('POST', '/', { authorization: auth('sts', 'host;x-amz-date'), 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(2 * 1024 * 1024 + 1) }), 'body_too_large'],
    ['an S3 request with an x-amz- header its signature does not cover (S3 refuses it; dropped, a copy would be an empty PutObject)', head('PUT', '/bkt/k', { authorization: auth('s3'), 'x-amz-content-sha256': EMPTY, 'x-amz-copy-source': 'customers/4711.json' }), 'aws_request_invalid'],
    ['an S3 request with an unsigned x-amz-server-side-encryption (dropped, the object would be stored unencrypted)', head('PUT', '/bkt/k', { authorization: auth('s3'), 'x-amz-content-sha256': EMPTY, 'x-amz-server-side-encryption': 'aws:kms' }), 'aws_request_invalid'],
    ['headers over 16 KiB', { ...head('GET', '/bkt/k', { authorization: auth('s3') }), headerBytes: 16 * 1024 + 1 }, 'aws_headers_too_large'],
  ])('%s is refused (%s)', (_name, h, code) => {
    expect(refusal(h)).toBe(code);
  });
});

describe('any Authorization header', () => {
  it('is planned or refused with a code, never anything else, and never quoted back', () => {
    const secretish = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ maxLength: 300 }).map((t) => `AWS4-HMAC-SHA256 ${t}`), fc.string({ maxLength: 60 }).map((t) => auth(t))), (text) => {
        let outcome = 'planned';
        try {
          planAwsRequest(head('GET', '/bkt/k', { authorization: `${text} ${secretish}`, 'x-amz-content-sha256': EMPTY }));
        } catch (err) {
          expect(err).toBeInstanceOf(ChainwardenError);
          expect((err as Error).message).not.toContain('wJalrXUtnFEMI');
          outcome = (err as ChainwardenError).code;
        }
        expect(outcome).toMatch(/^(planned|aws_unsigned|aws_auth_unsupported|aws_request_invalid)$/);
      }),
      { numRuns: 1000 },
    );
  });
});

describe('isPresignedQuery', () => {
  it.each([
    ['', false],
    ['list-type=2&prefix=a%2F', false],
    ['x-id=PutObject', false],
    ['X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=K%2F20261121%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature=abc', true],
    ['x-amz-signature=abc', true],
    ['X-Amz-%53ignature=abc', true],
    ['AWSAccessKeyId=AKID&Signature=abc&Expires=1', true],
    ['%zz=1', false],
  ])('%j → %s', (query, expected) => {
    expect(isPresignedQuery(query)).toBe(expected);
  });
});
