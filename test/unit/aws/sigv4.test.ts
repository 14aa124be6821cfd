import { DynamoDBClient, GetItemCommand } from '@aws-sdk/client-dynamodb';
import { GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { describe, expect, it } from 'vitest';
import { awsOperation } from '../../../src/aws/operations.js';
import { parseAuthorization, sha256Hex, verifySignature } from '../../../src/aws/sigv4.js';

const credentials = { accessKeyId: 'ASIACWEXAMPLEKEYID01', secretAccessKey: 'placeholder-secret-for-the-test-0000000', sessionToken: 'chainwarden-placeholder-x' };

interface Captured {
  method: string;
  path: string;
  query: string;
  headers: Record<string, string>;
  body: string;
}

/** An SDK client's request as it leaves the SDK, signed; the response is a canned empty success. */
function capturing(): { handler: { handle(req: unknown): Promise<{ response: unknown }> }; sent: Captured[] } {
  const sent: Captured[] = [];
  const handler = {
    handle(req: unknown) {
      const r = req as { method: string; path: string; query?: Record<string, string | string[] | null>; headers: Record<string, string>; body?: unknown };
      const query = Object.entries(r.query ?? {})
        .flatMap(([k, v]) => (Array.isArray(v) ? v.map((x) => [k, x]) : [[k, v ?? '']]))
        .map(([k, v]) => `${encodeURIComponent(k ?? '')}=${encodeURIComponent(v ?? '')}`)
        .join('&');
      const body = typeof r.body === 'string' ? r.body : r.body instanceof Uint8Array ? Buffer.from(r.body).toString('utf8') : '';
      sent.push({ method: r.method, path: r.path, query, headers: Object.fromEntries(Object.entries(r.headers).map(([k, v]) => [k.toLowerCase(), v])), body });
      return Promise.reject(new Error('captured'));
    },
  };
  return { handler, sent };
}

async function capture(send: (handler: ReturnType<typeof capturing>['handler']) => Promise<unknown>): Promise<Captured> {
  const c = capturing();
  await send(c.handler).catch(() => undefined);
  const first = c.sent[0];
  if (!first) throw new Error('nothing was sent');
  return first;
}

const common = { region: 'us-east-1', endpoint: 'http://127.0.0.1:15081', credentials, maxAttempts: 1 };

async function verified(c: Captured, secret = credentials.secretAccessKey): Promise<boolean> {
  const auth = parseAuthorization(c.headers.authorization);
  const headers = Object.fromEntries(auth.signedHeaders.map((n) => [n, c.headers[n] ?? '']));
  return verifySignature(auth, { method: c.method, path: c.path, query: c.query, headers, payloadHash: c.headers['x-amz-content-sha256'] ?? sha256Hex(c.body), amzDate: c.headers['x-amz-date'] ?? '', region: auth.region, service: auth.service }, secret);
}

const op = (c: Captured) => {
  const auth = parseAuthorization(c.headers.authorization);
  return awsOperation({ service: auth.service, region: auth.region, account: '123456789012', partition: 'aws', method: c.method, path: c.path, query: c.query, headers: c.headers, body: c.body });
};

describe('the gateway reads what an unmodified AWS SDK signed', () => {
  it.each([
    ['STS GetCallerIdentity (query protocol)', () => capture((h) => new STSClient({ ...common, requestHandler: h }).send(new GetCallerIdentityCommand({}))), { tool: 'aws:sts', action: 'sts:GetCallerIdentity', resource: '*', protocol: 'query' }],
    ['DynamoDB GetItem (JSON protocol)', () => capture((h) => new DynamoDBClient({ ...common, requestHandler: h }).send(new GetItemCommand({ TableName: 'orders', Key: { id: { S: '1' } } }))), { tool: 'aws:dynamodb', action: 'dynamodb:GetItem', resource: 'arn:aws:dynamodb:us-east-1:123456789012:table/orders', protocol: 'json' }],
    ['SQS SendMessage', () => capture((h) => new SQSClient({ ...common, requestHandler: h }).send(new SendMessageCommand({ QueueUrl: 'http://127.0.0.1:15081/123456789012/tickets', MessageBody: 'hello' }))), { tool: 'aws:sqs', action: 'sqs:SendMessage', resource: 'arn:aws:sqs:us-east-1:123456789012:tickets' }],
    ['S3 GetObject (REST, path-style)', () => capture((h) => new S3Client({ ...common, requestHandler: h }).send(new GetObjectCommand({ Bucket: 'customers', Key: 'a b/ü.json' }))), { tool: 'aws:s3', action: 's3:GetObject', resource: 'arn:aws:s3:::customers/a b/ü.json', protocol: 'rest' }],
    ['S3 PutObject', () => capture((h) => new S3Client({ ...common, requestHandler: h }).send(new PutObjectCommand({ Bucket: 'customers', Key: 'k', Body: 'data' }))), { tool: 'aws:s3', action: 's3:PutObject', resource: 'arn:aws:s3:::customers/k' }],
    ['S3 ListObjectsV2', () => capture((h) => new S3Client({ ...common, requestHandler: h }).send(new ListObjectsV2Command({ Bucket: 'customers', Prefix: 'x y' }))), { tool: 'aws:s3', action: 's3:ListBucket', resource: 'arn:aws:s3:::customers' }],
  ] as const)('%s: the signature verifies with the placeholder secret, and the hop is the operation', async (_name, send, expected) => {
    const c = await send();
    expect(await verified(c)).toBe(true);
    expect(await verified(c, 'another-secret')).toBe(false);
    expect(op(c)).toMatchObject(expected);
  });

  it('a request changed after signing no longer verifies', async () => {
    const c = await capture((h) => new S3Client({ ...common, requestHandler: h }).send(new GetObjectCommand({ Bucket: 'customers', Key: 'public' })));
    expect(await verified({ ...c, path: '/customers/secret' })).toBe(false);
    expect(await verified({ ...c, headers: { ...c.headers, host: 'evil.example' } })).toBe(false);
  });

  it.each([
    [undefined, 'aws_unsigned'],
    ['Basic dXNlcjpwYXNz', 'aws_request_invalid'],
    ['AWS4-HMAC-SHA256 Credential=ASIA/x, SignedHeaders=host, Signature=00', 'aws_request_invalid'],
    [`AWS4-HMAC-SHA256 ${'x'.repeat(5000)}`, 'aws_request_invalid'],
  ])('refuses the Authorization header %j with %s', (header, code) => {
    expect(() => parseAuthorization(header)).toThrow(expect.objectContaining({ code }));
  });
});
