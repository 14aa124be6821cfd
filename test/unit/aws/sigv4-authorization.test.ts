import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isPresignedQuery, MAX_AUTHORIZATION_LENGTH, parseSigV4Authorization } from '../../../src/aws/sigv4-authorization.js';
import { ChainwardenError } from '../../../src/errors.js';

const SIG = 'fe5f80f77d5fa3beca038a248ff027d0445342fe2855ddc963176630326f1024';
const header = (credential = 'CWPLACEHOLDER0001/20261121/us-east-1/s3/aws4_request', signed = 'host;x-amz-content-sha256;x-amz-date', signature = SIG) =>
  `AWS4-HMAC-SHA256 Credential=${credential}, SignedHeaders=${signed}, Signature=${signature}`;

const codeOf = (text: string | undefined) => {
  try {
    parseSigV4Authorization(text);
    return 'parsed';
  } catch (err) {
    return err instanceof ChainwardenError ? err.code : `uncoded: ${String(err)}`;
  }
};

describe('parseSigV4Authorization', () => {
  it('reads the credential scope, the signed headers and the signature of what SDKs send', () => {
    expect(parseSigV4Authorization(header())).toEqual({
      accessKeyId: 'CWPLACEHOLDER0001',
      date: '20261121',
      region: 'us-east-1',
      service: 's3',
      signedHeaders: ['host', 'x-amz-content-sha256', 'x-amz-date'],
      signature: SIG,
    });
    // botocore and the Java SDK write the components without spaces, some clients in another order.
    expect(parseSigV4Authorization(`AWS4-HMAC-SHA256 Signature=${SIG},Credential=K/20261121/eu-west-1/dynamodb/aws4_request,SignedHeaders=host`)).toMatchObject({ service: 'dynamodb', region: 'eu-west-1', signedHeaders: ['host'] });
  });

  it.each([
    ['no header', undefined, 'aws_unsigned'],
    ['an empty header', '  ', 'aws_unsigned'],
    ['a Bearer token', 'Bearer abc.def.ghi', 'aws_auth_unsupported'],
    ['Signature Version 2', 'AWS AKIDEXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=', 'aws_auth_unsupported'],
    ['SigV4a', header().replace('AWS4-HMAC-SHA256', 'AWS4-ECDSA-P256-SHA256'), 'aws_auth_unsupported'],
    ['the scheme alone', 'AWS4-HMAC-SHA256', 'aws_authorization_malformed'],
    ['no Signature', 'AWS4-HMAC-SHA256 Credential=K/20261121/us-east-1/s3/aws4_request, SignedHeaders=host', 'aws_authorization_malformed'],
    ['a short signature', header(undefined, undefined, 'abc'), 'aws_authorization_malformed'],
    ['an uppercase signature', header(undefined, undefined, SIG.toUpperCase()), 'aws_authorization_malformed'],
    ['a scope of four parts', header('K/20261121/us-east-1/aws4_request'), 'aws_authorization_malformed'],
    ['a wrong terminator', header('K/20261121/us-east-1/s3/aws5_request'), 'aws_authorization_malformed'],
    ['a month 13', header('K/20261321/us-east-1/s3/aws4_request'), 'aws_authorization_malformed'],
    ['an empty access key', header('/20261121/us-east-1/s3/aws4_request'), 'aws_authorization_malformed'],
    ['a key with a space', header('K K/20261121/us-east-1/s3/aws4_request'), 'aws_authorization_malformed'],
    ['an uppercase service', header('K/20261121/us-east-1/S3/aws4_request'), 'aws_authorization_malformed'],
    ['an uppercase signed header', header(undefined, 'Host;x-amz-date'), 'aws_authorization_malformed'],
    ['an empty signed header', header(undefined, 'host;;x-amz-date'), 'aws_authorization_malformed'],
    ['a header signed twice', header(undefined, 'host;host'), 'aws_authorization_malformed'],
    ['a component twice', `${header()}, Signature=${SIG}`, 'aws_authorization_malformed'],
    ['an unknown component', `${header()}, Extra=1`, 'aws_authorization_malformed'],
    ['a trailing comma', `${header()},`, 'aws_authorization_malformed'],
    ['a huge header', header(undefined, Array.from({ length: 2000 }, (_, i) => `x-h${i}`).join(';')), 'aws_authorization_malformed'],
    ['too many signed headers', header(undefined, Array.from({ length: 200 }, (_, i) => `h${i}`).join(';')), 'aws_authorization_malformed'],
  ])('%s is refused as %s', (_name, text, code) => {
    expect(codeOf(text)).toBe(code);
  });

  it('never quotes the header in its message, so a caller cannot make the gateway echo what it sent', () => {
    const secretish = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY';
    for (const text of [`AWS4-HMAC-SHA256 Credential=${secretish}`, `AWS4-HMAC-SHA256 ${secretish}=1`, `Bearer ${secretish}`, `AWS4-HMAC-SHA256 Credential=K/20261121/us-east-1/s3/aws4_request, SignedHeaders=host, Signature=${secretish}`]) {
      expect(() => parseSigV4Authorization(text)).toThrow(ChainwardenError);
      try {
        parseSigV4Authorization(text);
      } catch (err) {
        expect((err as Error).message).not.toContain('wJalrXUtnFEMI');
      }
    }
  });

  it('any string is parsed or refused with a code, never anything else', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ maxLength: 300 }), fc.string({ maxLength: 300 }).map((s) => `AWS4-HMAC-SHA256 ${s}`), fc.string({ maxLength: 50 }).map((s) => header(s))), (text) => {
        expect(codeOf(text)).toMatch(/^(parsed|aws_unsigned|aws_auth_unsupported|aws_authorization_malformed)$/);
      }),
      { numRuns: 2000 },
    );
    expect(codeOf('x'.repeat(MAX_AUTHORIZATION_LENGTH + 1))).toBe('aws_authorization_malformed');
  });

  it('every well-formed header reads back what was written', () => {
    const name = fc.stringMatching(/^[a-z0-9-]{1,20}$/);
    fc.assert(
      fc.property(fc.stringMatching(/^[A-Z0-9]{16,40}$/), name, name, fc.uniqueArray(name, { minLength: 1, maxLength: 12 }), fc.stringMatching(/^[0-9a-f]{64}$/), (key, region, service, signed, signature) => {
        const parsed = parseSigV4Authorization(header(`${key}/20261121/${region}/${service}/aws4_request`, signed.join(';'), signature));
        expect(parsed).toEqual({ accessKeyId: key, date: '20261121', region, service, signedHeaders: signed, signature });
      }),
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
