import { createHash, randomBytes } from 'node:crypto';
import { crc32 } from 'node:zlib';
import http from 'node:http';
import { CompleteMultipartUploadCommand, CopyObjectCommand, CreateBucketCommand, CreateMultipartUploadCommand, DeleteObjectsCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client, UploadPartCopyCommand } from '@aws-sdk/client-s3';
import { CreateTableCommand, DynamoDBClient, GetItemCommand, PutItemCommand } from '@aws-sdk/client-dynamodb';
import { CreateQueueCommand, SendMessageCommand, SQSClient } from '@aws-sdk/client-sqs';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { SignatureV4 } from '@smithy/signature-v4';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { startAgentProxy, type RunningAgent } from '../../../src/agent/proxy.js';
import type { AgentTask } from '../../../src/api/schema.js';
import { GatewayHops } from '../../../src/broker/gateway-hops.js';
import { AwsGateway, parseSignRequest } from '../../../src/aws/gateway.js';
import { hopDigest } from '../../../src/broker/decide-hop.js';
import { MAX_SIGN_FORM_BYTES, MAX_SIGN_REQUEST_BYTES } from '../../../src/aws/sign-api.js';
import { Placeholders } from '../../../src/aws/placeholders.js';
import type { AgentPrincipal } from '../../../src/broker/auth.js';
import type { HopAnswer, HopRequest } from '../../../src/broker/hops.js';
import { ChainwardenError } from '../../../src/errors.js';
import { silentLogger } from '../../../src/log.js';
import { CertificateAuthority } from '../../../src/pki/authority.js';
import { systemClock } from '../../../src/runtime/clock.js';
import { readJson, sendJson } from '../../../src/server/http.js';
import { serveHttps, type RunningServer } from '../../../src/server/https.js';
import { signedAwsChunked } from '../../builders/aws-chunked.js';
import { SESSION, Sha256, startGatewayWorld } from '../../builders/aws-gateway-twins.js';

/**
 * The sidecar with the broker's real half of the gateway (src/aws/gateway.ts: signature check,
 * hop derivation, signing with the session), only the hop decision and the session stubbed: what
 * the twin in aws-gateway.test.ts stands for, checked against the real thing.
 */

const task: AgentTask = {
  apiVersion: 'chainwarden.io/v1alpha1',
  kind: 'AgentTask',
  metadata: { name: 't', namespace: 'ns', uid: '6f1c0d8e-0000-0000-0000-00000000aw5g', generation: 1 },
  spec: { serviceAccountName: 'sa', policyRef: { name: 'p' }, ttl: '30m', credentials: [{ name: 'default', aws: { roleArn: 'arn:aws:iam::123456789012:role/agent' } }, { name: 'writer', aws: { roleArn: 'arn:aws:iam::123456789012:role/agent-writer' } }] },
  status: { state: 'Bound', spiffeID: 'spiffe://cluster.local/ns/ns/sa/sa/task/t' },
};
const who: AgentPrincipal = { namespace: 'ns', podName: 'agent-0', podUid: 'u', serviceAccount: 'sa', task, spiffeId: task.status?.spiffeID ?? '' };
const placeholders = new Placeholders(randomBytes(32));
/** What /v1/credentials hands the agent's SDK under Gateway delivery. */
const keys = placeholders.of(task, 'default');

let world: Awaited<ReturnType<typeof startGatewayWorld>>;
let broker: RunningServer;
let sidecar: RunningAgent;
const decided: HopRequest[] = [];
let decide: (hop: HopRequest) => Pick<HopAnswer, 'decision' | 'reasons'> = () => ({ decision: 'allow', reasons: [{ rule: 'allow-aws', effect: 'Allow' }] });
let hops = 0;
let gateway: AwsGateway;

beforeAll(async () => {
  world = await startGatewayWorld();
  gateway = new AwsGateway({
    placeholders,
    credentials: { credentials: () => Promise.resolve({ ...SESSION, expiration: new Date(Date.now() + 3_600_000) }) },
    hops: new GatewayHops({
      hops: {
        decideForGateway: (_who, hop, _approvedBy, mint) => {
          decided.push(hop);
          const answer = { hopId: `h1_${String(++hops).padStart(12, 'A')}_CCCCCCCCCCCCCCCC`, depth: 1, ...decide(hop) };
          return Promise.resolve(answer.decision === 'allow' ? { answer, txnToken: mint({ hopId: answer.hopId, depth: 1, policy: 'p', dataClassesTouched: [] }) } : { answer });
        },
        isHopOf: () => true,
        // The forecast of a call of several hops, by the same stubbed decision.
        mayWait: () => true,
        preview: function* (_who, planned) {
          for (const p of planned) {
            const { decision, reasons } = p.approval ? { decision: 'allow' as const, reasons: [{ rule: `approval:${p.approval.name}`, effect: 'Allow' }] } : decide(p.request);
            yield { decision, rules: reasons.map((r) => r.rule) };
          }
        },
      },
      approvals: () => [],
      claim: () => Promise.resolve(false),
      release: () => Promise.resolve(false),
      issuer: { mintTxnToken: (input) => `txn.${input.tctx.hopId}.token` },
      trustDomain: 'cluster.local',
      marker: () => 'cw-marker',
      spiffeId: () => who.spiffeId,
      clock: systemClock,
    }),
    region: 'us-east-1',
    endpoint: world.front.url,
    clock: systemClock,
    log: silentLogger(),
  });
  const ca = await CertificateAuthority.create('aws-gateway-broker-test');
  // The broker's /v1/aws/sign handler, with the pod token as the only principal.
  const route = async (req: http.IncomingMessage, res: http.ServerResponse) => {
    if (req.headers.authorization !== `Bearer ${world.podToken}`) throw new ChainwardenError('unauthenticated', 'not a pod token');
    const { status, body } = await gateway.sign(who, parseSignRequest(await readJson(req, MAX_SIGN_REQUEST_BYTES)));
    sendJson(res, status, body, { 'cache-control': 'no-store' });
  };
  broker = await serveHttps({ '/v1/aws/sign': route }, await ca.issueServing('broker', { ips: ['127.0.0.1'] }), { host: '127.0.0.1', port: 0 }, silentLogger());
  sidecar = await startAgentProxy({ brokerUrl: broker.url, caPem: ca.certPem, tokenFile: world.tokenFile, listen: { host: '127.0.0.1', port: 0 }, awsListen: { host: '127.0.0.1', port: 0 }, log: silentLogger() });
}, 90_000);

afterAll(async () => {
  await sidecar?.close();
  await broker?.close();
  await world?.close();
});

beforeEach(() => {
  decide = () => ({ decision: 'allow', reasons: [{ rule: 'allow-aws', effect: 'Allow' }] });
});

const config = (credentials: { accessKeyId: string; secretAccessKey: string; sessionToken?: string } = keys, region = 'us-east-1') => ({ endpoint: sidecar.awsUrl, region, credentials, maxAttempts: 1 });
const hopsOf = (from: number) => decided.slice(from).map((h) => `${h.tool} ${h.action} ${h.resource}`);
const frontSince = (from: number) => world.front.records.slice(from);

async function rejection(promise: Promise<unknown>): Promise<{ name: string; message: string }> {
  try {
    await promise;
  } catch (err) {
    return { name: (err as Error).name, message: (err as Error).message };
  }
  throw new Error('the call went through');
}

describe('unmodified SDKs, the sidecar and the broker\'s own signing half', () => {
  it('S3: each call a hop on the object or bucket it names, signed so AWS accepts it', async () => {
    const [from, front] = [decided.length, world.front.records.length];
    const s3 = new S3Client(config());
    await s3.send(new CreateBucketCommand({ Bucket: 'customers' }));
    await s3.send(new PutObjectCommand({ Bucket: 'customers', Key: '4711.json', Body: '{"name":"Ada"}' }));
    expect(await (await s3.send(new GetObjectCommand({ Bucket: 'customers', Key: '4711.json' }))).Body?.transformToString()).toBe('{"name":"Ada"}');
    await s3.send(new ListObjectsV2Command({ Bucket: 'customers' }));
    s3.destroy();
    expect(hopsOf(from)).toEqual(['aws:s3 s3:CreateBucket arn:aws:s3:::customers', 'aws:s3 s3:PutObject arn:aws:s3:::customers/4711.json', 'aws:s3 s3:GetObject arn:aws:s3:::customers/4711.json', 'aws:s3 s3:ListBucket arn:aws:s3:::customers']);
    // The write is bound to its body, which the SDK hashed: an approval of it releases that body alone.
    expect(decided[from + 1]?.attributes).toEqual({ payloadSha256: createHash('sha256').update('{"name":"Ada"}').digest('hex'), requestSha256: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown, credential: 'default' });
    expect(frontSince(front).map((r) => r.refused)).toEqual([undefined, undefined, undefined, undefined]);
  });

  it('S3 CopyObject and UploadPartCopy: the read of the source is a hop, the write its child, and the copy lands; a denied read stops the copy before AWS', async () => {
    const s3 = new S3Client(config());
    await s3.send(new CreateBucketCommand({ Bucket: 'reports' }));
    await s3.send(new PutObjectCommand({ Bucket: 'reports', Key: 'q4.txt', Body: 'quarterly figures' }));
    const from = decided.length;
    await s3.send(new CopyObjectCommand({ Bucket: 'reports', Key: 'archive/q4 copy.txt', CopySource: 'reports/q4.txt' }));
    expect(await (await s3.send(new GetObjectCommand({ Bucket: 'reports', Key: 'archive/q4 copy.txt' }))).Body?.transformToString()).toBe('quarterly figures');
    const [read, write] = decided.slice(from);
    expect(hopsOf(from).slice(0, 2)).toEqual(['aws:s3 s3:GetObject arn:aws:s3:::reports/q4.txt', 'aws:s3 s3:PutObject arn:aws:s3:::reports/archive/q4 copy.txt']);
    // Each names the other: an approval of this copy releases no other copy, and the write follows the read in the chain.
    expect(read?.attributes).toEqual({ copyTo: 'arn:aws:s3:::reports/archive/q4 copy.txt', credential: 'default' });
    expect(write?.attributes).toMatchObject({ copySource: 'arn:aws:s3:::reports/q4.txt' });
    expect(write?.parentHop).toMatch(/^h1_/);

    const upload = await s3.send(new CreateMultipartUploadCommand({ Bucket: 'reports', Key: 'archive/q4 parts.txt' }));
    const partFrom = decided.length;
    const part = await s3.send(new UploadPartCopyCommand({ Bucket: 'reports', Key: 'archive/q4 parts.txt', UploadId: upload.UploadId, PartNumber: 1, CopySource: 'reports/q4.txt' }));
    expect(hopsOf(partFrom)).toEqual(['aws:s3 s3:GetObject arn:aws:s3:::reports/q4.txt', 'aws:s3 s3:PutObject arn:aws:s3:::reports/archive/q4 parts.txt']);
    await s3.send(new CompleteMultipartUploadCommand({ Bucket: 'reports', Key: 'archive/q4 parts.txt', UploadId: upload.UploadId, MultipartUpload: { Parts: [{ PartNumber: 1, ETag: part.CopyPartResult?.ETag }] } }));
    expect(await (await s3.send(new GetObjectCommand({ Bucket: 'reports', Key: 'archive/q4 parts.txt' }))).Body?.transformToString()).toBe('quarterly figures');

    decide = (hop) => (hop.action === 's3:GetObject' ? { decision: 'deny', reasons: [{ rule: 'reports-stay-put', effect: 'Deny' }] } : { decision: 'allow', reasons: [{ rule: 'allow-aws', effect: 'Allow' }] });
    const deniedFrom = decided.length;
    const front = world.front.records.length;
    const denied = await rejection(s3.send(new CopyObjectCommand({ Bucket: 'reports', Key: 'elsewhere.txt', CopySource: 'reports/q4.txt' })));
    expect(denied.name).toBe('AccessDenied');
    expect(denied.message).toMatch(/s3:GetObject on arn:aws:s3:::reports\/q4.txt \(the source of a copy\) was denied by reports-stay-put \(hop h1_/);
    expect(hopsOf(deniedFrom)).toEqual(['aws:s3 s3:GetObject arn:aws:s3:::reports/q4.txt']);
    expect(frontSince(front)).toEqual([]);
    s3.destroy();
  });

  it('S3 DeleteObjects: each object is a hop, and the objects go; one denied, the call is refused whole and nothing reaches AWS', async () => {
    const s3 = new S3Client(config());
    await s3.send(new CreateBucketCommand({ Bucket: 'scratch' }));
    const keys = ['tmp/a.txt', 'tmp/b & c <d>.txt', 'keep/ledger.csv'];
    for (const key of keys) await s3.send(new PutObjectCommand({ Bucket: 'scratch', Key: key, Body: key }));
    const listed = async () => ((await s3.send(new ListObjectsV2Command({ Bucket: 'scratch' }))).Contents ?? []).map((c) => c.Key).sort();

    decide = (hop) => (hop.resource === 'arn:aws:s3:::scratch/keep/ledger.csv' ? { decision: 'deny', reasons: [{ rule: 'keep-the-ledger', effect: 'Deny' }] } : { decision: 'allow', reasons: [{ rule: 'allow-aws', effect: 'Allow' }] });
    const from = decided.length;
    const front = world.front.records.length;
    const denied = await rejection(s3.send(new DeleteObjectsCommand({ Bucket: 'scratch', Delete: { Objects: keys.map((Key) => ({ Key })) } })));
    expect(denied.name).toBe('AccessDenied');
    expect(denied.message).toMatch(/s3:DeleteObject on arn:aws:s3:::scratch\/keep\/ledger.csv \(object 3 of the 3 a DeleteObjects deletes\) was denied by keep-the-ledger \(hop h1_/);
    expect(hopsOf(from)).toEqual(keys.map((k) => `aws:s3 s3:DeleteObject arn:aws:s3:::scratch/${k}`));
    expect(frontSince(front)).toEqual([]);
    expect(await listed()).toEqual([...keys].sort());

    decide = () => ({ decision: 'allow', reasons: [{ rule: 'allow-aws', effect: 'Allow' }] });
    const allowedFrom = decided.length;
    const result = await s3.send(new DeleteObjectsCommand({ Bucket: 'scratch', Delete: { Objects: keys.slice(0, 2).map((Key) => ({ Key })) } }));
    expect(result.Deleted?.map((d) => d.Key).sort()).toEqual(keys.slice(0, 2).sort());
    expect(hopsOf(allowedFrom)).toEqual(keys.slice(0, 2).map((k) => `aws:s3 s3:DeleteObject arn:aws:s3:::scratch/${k}`));
    expect(await listed()).toEqual(['keep/ledger.csv']);
    s3.destroy();
  });

  it('S3 DeleteObjects with objects that need approval: all wait at once, a retry meanwhile decides and spends nothing, and once all are approved one retry goes through', async () => {
    const s3 = new S3Client(config());
    await s3.send(new CreateBucketCommand({ Bucket: 'held' }));
    const keys = ['hold/a', 'free/b', 'hold/c', 'hold/d'];
    for (const key of keys) await s3.send(new PutObjectCommand({ Bucket: 'held', Key: key, Body: key }));
    const del = () => s3.send(new DeleteObjectsCommand({ Bucket: 'held', Delete: { Objects: keys.map((Key) => ({ Key })) } }));
    decide = (hop) => (hop.resource.includes('/hold/') ? { decision: 'pending_approval', reasons: [{ rule: 'holds-need-a-person', effect: 'RequireApproval' }] } : { decision: 'allow', reasons: [{ rule: 'allow-aws', effect: 'Allow' }] });
    const from = decided.length;
    const waiting = await rejection(del());
    expect(waiting.name).toBe('ChainwardenApprovalPending');
    expect(waiting.message).toMatch(/s3:DeleteObject on arn:aws:s3:::held\/hold\/a \(object 1 of the 4 a DeleteObjects deletes\).*; 2 more of its hops wait for approval too/);
    // The three held objects were decided in that one try, so they wait together; the free one is decided once the call can go.
    expect(hopsOf(from)).toEqual(keys.filter((k) => k.startsWith('hold/')).map((k) => `aws:s3 s3:DeleteObject arn:aws:s3:::held/${k}`));

    // As the operator records them: the task's waiting hops, by digest.
    const pendingHops = decided.slice(from).filter((h) => h.resource.includes('/hold/')).map((h, i) => ({ hopId: `h1_${String(i).padStart(12, 'W')}_CCCCCCCCCCCCCCCC`, digest: hopDigest(h), tool: h.tool, action: h.action, resource: h.resource, depth: 1, rules: ['holds-need-a-person'], requestedAt: new Date().toISOString() }));
    task.status = { ...task.status, pendingHops } as AgentTask['status'];
    try {
      const retried = decided.length;
      const again = await rejection(del());
      expect(again.name).toBe('ChainwardenApprovalPending');
      expect(again.message).toContain(pendingHops[0]?.hopId ?? '?');
      expect(decided.length).toBe(retried);
    } finally {
      task.status = { ...task.status, pendingHops: [] };
    }
    // Approved (the waiting hops gone from the status, the decisions now allow): one retry, and the objects go.
    decide = () => ({ decision: 'allow', reasons: [{ rule: 'approval:ok', effect: 'Allow' }] });
    const through = decided.length;
    const result = await del();
    expect(result.Deleted?.map((d) => d.Key).sort()).toEqual([...keys].sort());
    expect(hopsOf(through)).toEqual(keys.map((k) => `aws:s3 s3:DeleteObject arn:aws:s3:::held/${k}`));
    s3.destroy();
  });

  it('a resource longer than a hop takes is refused before anything is decided: a long key in a path, or among the objects of a DeleteObjects', async () => {
    const s3 = new S3Client(config());
    const long = `tmp/${'k'.repeat(1_020)}`;
    const from = decided.length;
    const get = await rejection(s3.send(new GetObjectCommand({ Bucket: 'scratch', Key: long })));
    expect(get).toMatchObject({ name: 'InvalidRequest', message: expect.stringMatching(/is 1045 characters, more than the 1024 a hop takes/) as unknown });
    const bulk = await rejection(s3.send(new DeleteObjectsCommand({ Bucket: 'scratch', Delete: { Objects: [{ Key: 'tmp/a.txt' }, { Key: long }] } })));
    expect(bulk).toMatchObject({ name: 'InvalidRequest', message: expect.stringMatching(/object 2 of the DeleteObjects is arn:aws:s3:::scratch\/tmp\/k+…, longer than the 1024 characters/) as unknown });
    expect(decided.length).toBe(from);
    s3.destroy();
  });

  it('DynamoDB and SQS (JSON protocol): the hop names the table and the queue, read from the body the sidecar shows the broker', async () => {
    const from = decided.length;
    const ddb = new DynamoDBClient(config());
    await ddb.send(new CreateTableCommand({ TableName: 'orders', KeySchema: [{ AttributeName: 'id', KeyType: 'HASH' }], AttributeDefinitions: [{ AttributeName: 'id', AttributeType: 'S' }], BillingMode: 'PAY_PER_REQUEST' }));
    await ddb.send(new PutItemCommand({ TableName: 'orders', Item: { id: { S: '981' } } }));
    expect((await ddb.send(new GetItemCommand({ TableName: 'orders', Key: { id: { S: '981' } } }))).Item?.id?.S).toBe('981');
    ddb.destroy();
    const sqs = new SQSClient(config());
    const queue = await sqs.send(new CreateQueueCommand({ QueueName: 'refunds' }));
    await sqs.send(new SendMessageCommand({ QueueUrl: queue.QueueUrl, MessageBody: 'refund 981' }));
    sqs.destroy();
    expect(hopsOf(from)).toEqual([
      'aws:dynamodb dynamodb:CreateTable arn:aws:dynamodb:us-east-1:123456789012:table/orders',
      'aws:dynamodb dynamodb:PutItem arn:aws:dynamodb:us-east-1:123456789012:table/orders',
      'aws:dynamodb dynamodb:GetItem arn:aws:dynamodb:us-east-1:123456789012:table/orders',
      expect.stringMatching(/^aws:sqs sqs:CreateQueue /) as unknown,
      'aws:sqs sqs:SendMessage arn:aws:sqs:us-east-1:123456789012:refunds',
    ]);
    // Each hop carries its body's hash, so an approval of one PutItem releases that item only.
    const put = decided[from + 1];
    const item = JSON.stringify({ TableName: 'orders', Item: { id: { S: '981' } } });
    expect(put?.attributes).toEqual({ payloadSha256: createHash('sha256').update(item).digest('hex'), requestSha256: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown, credential: 'default' });
  });

  it('an approval binds the whole request: the same call sent again by the SDK is the same hop; other metadata, another message in the query, or the same call signed with another of the task\'s credentials is another hop', async () => {
    const from = decided.length;
    const s3 = new S3Client(config());
    await s3.send(new CreateBucketCommand({ Bucket: 'outbox' }));
    const put = (audience?: string) => s3.send(new PutObjectCommand({ Bucket: 'outbox', Key: 'r.csv', Body: 'a,b', ...(audience ? { Metadata: { audience } } : {}) }));
    await put();
    await new Promise((r) => setTimeout(r, 1_100)); // another X-Amz-Date, as a retry an approval later has
    await put();
    await put('everyone');
    s3.destroy();
    // The same bytes signed with the writer's keys: approved as the reader's call, it would be signed with the writer's session.
    const asWriter = new S3Client(config(placeholders.of(task, 'writer')));
    await asWriter.send(new PutObjectCommand({ Bucket: 'outbox', Key: 'r.csv', Body: 'a,b' }));
    asWriter.destroy();
    // SQS's query protocol with the message in the URL: the body is empty either way.
    const port = Number(new URL(sidecar.awsUrl ?? '').port);
    const send = async (message: string) => {
      const query = { Action: 'SendMessage', QueueUrl: 'https://sqs.us-east-1.amazonaws.com/123456789012/refunds', MessageBody: message, Version: '2012-11-05' };
      const signed = await new SignatureV4({ credentials: keys, region: 'us-east-1', service: 'sqs', sha256: Sha256 }).sign({ method: 'GET', protocol: 'http:', hostname: '127.0.0.1', port, path: '/', query, headers: { host: `127.0.0.1:${port}` } });
      await new Promise<void>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, method: 'GET', path: `/?${new URLSearchParams(query).toString().replace(/\+/g, '%20')}`, headers: signed.headers, setHost: false }, (res) => res.resume().on('end', resolve));
        req.on('error', reject);
        req.end();
      });
    };
    await send('refund order 1');
    await send('refund order 2');
    const [, first, again, tagged, writer, messageOne, messageTwo] = decided.slice(from);
    expect([first, again, tagged, writer].map((h) => `${h?.action} ${h?.attributes?.credential}`)).toEqual(['s3:PutObject default', 's3:PutObject default', 's3:PutObject default', 's3:PutObject writer']);
    expect(hopDigest(writer as HopRequest)).not.toBe(hopDigest(first as HopRequest));
    expect([messageOne, messageTwo].map((h) => `${h?.action} ${h?.resource}`)).toEqual(['sqs:SendMessage arn:aws:sqs:us-east-1:123456789012:refunds', 'sqs:SendMessage arn:aws:sqs:us-east-1:123456789012:refunds']);
    expect(hopDigest(again as HopRequest)).toBe(hopDigest(first as HopRequest));
    expect(hopDigest(tagged as HopRequest)).not.toBe(hopDigest(first as HopRequest));
    expect(hopDigest(messageTwo as HopRequest)).not.toBe(hopDigest(messageOne as HopRequest));
  });

  it('STS (query protocol) through the broker', async () => {
    const from = decided.length;
    expect((await new STSClient(config()).send(new GetCallerIdentityCommand({}))).Account).toBe('123456789012');
    expect(hopsOf(from)).toEqual(['aws:sts sts:GetCallerIdentity *']);
  });

  it('signed aws-chunked with a trailer: the broker signs what the sidecar says it forwards, and AWS accepts it', async () => {
    const port = Number(new URL(sidecar.awsUrl ?? '').port);
    const payload = randomBytes(200_000);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(payload));
    const headers = { host: `127.0.0.1:${port}`, 'content-encoding': 'aws-chunked', 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER', 'x-amz-decoded-content-length': String(payload.length), 'x-amz-trailer': 'x-amz-checksum-crc32', 'x-amz-security-token': keys.sessionToken };
    const signed = await new SignatureV4({ credentials: keys, region: 'us-east-1', service: 's3', sha256: Sha256, uriEscapePath: false }).sign({ method: 'PUT', protocol: 'http:', hostname: '127.0.0.1', port, path: '/customers/java.bin', query: {}, headers });
    const body = signedAwsChunked([payload.subarray(0, 100_000), payload.subarray(100_000)], [['x-amz-checksum-crc32', crc.toString('base64')]], { secretAccessKey: keys.secretAccessKey, amzDate: String(signed.headers['x-amz-date']), region: 'us-east-1', service: 's3', seedSignature: /Signature=([0-9a-f]{64})/.exec(String(signed.headers.authorization))?.[1] ?? '' });
    const front = world.front.records.length;
    const status = await new Promise<number>((resolve, reject) => {
      const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/customers/java.bin', headers: { ...signed.headers, 'content-length': String(body.length) }, setHost: false }, (res) => {
        res.resume().on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', reject);
      req.end(body);
    });
    expect(status).toBe(200);
    // Its body is signed chunk by chunk with the placeholder key the agent holds: nothing binds it, and the hop says so (no approval releases it).
    expect(decided.at(-1)?.attributes).toEqual({ payloadSha256: 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER', requestSha256: expect.stringMatching(/^[0-9a-f]{64}$/) as unknown, credential: 'default' });
    expect(frontSince(front)).toMatchObject([{ headers: { 'x-amz-content-sha256': 'STREAMING-UNSIGNED-PAYLOAD-TRAILER' } }]);
    expect(frontSince(front)[0]?.refused).toBeUndefined();
    const s3 = new S3Client(config());
    expect(Buffer.from((await (await s3.send(new GetObjectCommand({ Bucket: 'customers', Key: 'java.bin' }))).Body?.transformToByteArray()) ?? []).equals(payload)).toBe(true);
    s3.destroy();
  });

  it('a caller holding the pod token cannot have the broker sign anything but what was decided: no other header, payload or missing body', async () => {
    /** A request as an SDK signs it with the placeholder keys, in the shape the sidecar passes on. */
    const signed = async (service: string, method: string, path: string, headers: Record<string, string>, body = '', signable: string[] = []) => {
      const payloadHash = headers['x-amz-content-sha256'] ?? createHash('sha256').update(body).digest('hex');
      const request = await new SignatureV4({ credentials: keys, region: 'us-east-1', service, sha256: Sha256, uriEscapePath: service !== 's3' }).sign({ method, protocol: 'http:', hostname: '127.0.0.1', path, query: {}, headers: { host: '127.0.0.1:15081', ...headers }, body }, { signableHeaders: new Set(signable) });
      const authorization = String(request.headers.authorization);
      const names = /SignedHeaders=([^,]+)/.exec(authorization)?.[1]?.split(';') ?? [];
      return { authorization, method, path, query: '', headers: Object.fromEntries(names.map((n) => [n, String(request.headers[n] ?? request.headers[Object.keys(request.headers).find((k) => k.toLowerCase() === n) ?? ''])])), payloadHash };
    };
    const before = decided.length;
    const get = await signed('s3', 'GET', '/gw-bucket/public.json', { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' });
    // Headers to sign on that the SDK never signed, or a payload other than the one it signed: only a signed aws-chunked body may be re-encoded.
    for (const forward of [{ payloadHash: 'UNSIGNED-PAYLOAD', headers: { 'x-amz-target': 'x.DeleteBucket' } }, { payloadHash: createHash('sha256').update('other').digest('hex'), headers: {} }]) {
      await expect(gateway.sign(who, parseSignRequest({ ...get, forward }))).rejects.toMatchObject({ code: 'aws_request_invalid', field: 'forward' });
    }
    const chunked = await signed('s3', 'PUT', '/gw-bucket/up', { 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD', 'x-amz-decoded-content-length': '5', 'content-encoding': 'aws-chunked' });
    const reencoded = { payloadHash: 'UNSIGNED-PAYLOAD', headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', 'content-length': '5', 'content-encoding': null, 'x-amz-decoded-content-length': null } };
    await expect(gateway.sign(who, parseSignRequest({ ...chunked, forward: { ...reencoded, headers: { ...reencoded.headers, 'x-amz-acl': 'public-read' } } }))).rejects.toMatchObject({ field: 'forward' });
    await expect(gateway.sign(who, parseSignRequest({ ...chunked, forward: { ...reencoded, headers: { ...reencoded.headers, 'content-length': '5000' } } }))).rejects.toMatchObject({ field: 'forward' });
    // The JSON document names the table: without it the call is not decided on `*`.
    const scan = await signed('dynamodb', 'POST', '/', { 'x-amz-target': 'DynamoDB_20120810.Scan', 'content-type': 'application/x-amz-json-1.0' }, '{"TableName":"secrets"}');
    await expect(gateway.sign(who, parseSignRequest(scan))).rejects.toMatchObject({ code: 'aws_request_invalid', field: 'form' });
    // An X-Amz-Target passed along unsigned is not what the broker decides on: it would not be signed on for AWS either.
    const body = '{"TableName":"public"}';
    const bare = await signed('dynamodb', 'POST', '/', {}, body);
    await expect(gateway.sign(who, parseSignRequest({ ...bare, headers: { ...bare.headers, 'x-amz-target': 'DynamoDB_20120810.DeleteTable' }, form: body }))).rejects.toMatchObject({ code: 'aws_request_invalid', message: expect.stringContaining('names no dynamodb operation') as string });
    // Framing signed by the caller would go on to AWS beside the sidecar's own: two framings of one body, which a front end may read as two requests.
    for (const [name, value] of [['transfer-encoding', 'chunked'], ['connection', 'keep-alive'], ['upgrade', 'h2c']] as const) {
      const framed = await signed('dynamodb', 'POST', '/', { 'x-amz-target': 'DynamoDB_20120810.Scan', 'content-type': 'application/x-amz-json-1.0', [name]: value }, body, [name]);
      expect(framed.authorization).toContain(name);
      await expect(gateway.sign(who, parseSignRequest({ ...framed, form: body }))).rejects.toMatchObject({ code: 'aws_request_invalid', field: `headers.${name}`, message: expect.stringContaining('sign without it') as string });
    }
    // A document past what the broker reads is refused by name, never decided on the part that fits.
    expect(() => parseSignRequest({ ...scan, form: `{"TableName":"secrets","pad":"${'x'.repeat(MAX_SIGN_FORM_BYTES)}"}` })).toThrow(expect.objectContaining({ code: 'aws_request_invalid', field: 'form' }));
    expect(decided.length).toBe(before);
    // Expect frames nothing, and an SDK may sign it (Go's first SDK does, for uploads): signed.
    const expecting = await signed('s3', 'PUT', '/gw-bucket/up', { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', expect: '100-continue' }, '', ['expect']);
    expect(expecting.authorization).toContain('expect');
    expect(await gateway.sign(who, parseSignRequest(expecting))).toMatchObject({ status: 200 });
    // The re-encoding the sidecar does make is signed.
    expect(await gateway.sign(who, parseSignRequest({ ...chunked, forward: reencoded }))).toMatchObject({ status: 200, body: { headers: { 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD' } } });
    // A query-protocol call whose body the broker is not shown (a GET with a form in it), or one the
    // service would decompress before reading: what AWS read would not be what was decided.
    const during = decided.length;
    const inBody = 'Action=GetSessionToken&Version=2011-06-15';
    const hidden = await new SignatureV4({ credentials: keys, region: 'us-east-1', service: 'sts', sha256: Sha256 }).sign({ method: 'GET', protocol: 'http:', hostname: '127.0.0.1', path: '/', query: { Action: 'GetCallerIdentity', Version: '2011-06-15' }, headers: { host: '127.0.0.1:15081', 'content-type': 'application/x-www-form-urlencoded' }, body: inBody });
    const hiddenNames = /SignedHeaders=([^,]+)/.exec(String(hidden.headers.authorization))?.[1]?.split(';') ?? [];
    const hiddenHeaders = Object.fromEntries(hiddenNames.map((n) => [n, String(hidden.headers[Object.keys(hidden.headers).find((k) => k.toLowerCase() === n) ?? ''])]));
    const hiddenCall = { authorization: String(hidden.headers.authorization), method: 'GET', path: '/', query: 'Action=GetCallerIdentity&Version=2011-06-15', headers: hiddenHeaders, payloadHash: createHash('sha256').update(inBody).digest('hex') };
    await expect(gateway.sign(who, parseSignRequest(hiddenCall))).rejects.toMatchObject({ code: 'aws_request_invalid', field: 'payloadHash' });
    const form = 'Action=GetCallerIdentity&Version=2011-06-15';
    const zipped = await signed('sts', 'POST', '/', { 'content-type': 'application/x-www-form-urlencoded', 'content-encoding': 'gzip' }, form, ['content-encoding']);
    await expect(gateway.sign(who, parseSignRequest({ ...zipped, form }))).rejects.toMatchObject({ code: 'aws_request_invalid', field: 'headers.content-encoding' });
    expect(decided.length).toBe(during);
  });

  it('the broker\'s refusals as the SDK raises them: a rule\'s deny, a wait for approval, a wrong secret, another region', async () => {
    const front = world.front.records.length;
    decide = (hop) => (hop.action === 'dynamodb:PutItem' ? { decision: 'deny', reasons: [{ rule: 'orders-read-only', effect: 'Deny' }] } : { decision: 'pending_approval', reasons: [{ rule: 'refunds-need-a-person', effect: 'RequireApproval' }] });
    const denied = await rejection(new DynamoDBClient(config()).send(new PutItemCommand({ TableName: 'orders', Item: { id: { S: '982' } } })));
    expect(denied.name).toBe('AccessDenied');
    expect(denied.message).toMatch(/dynamodb:PutItem on arn:aws:dynamodb:us-east-1:123456789012:table\/orders was denied by orders-read-only \(hop h1_\w+_C+\)/);
    const waiting = await rejection(new SQSClient(config()).send(new SendMessageCommand({ QueueUrl: 'http://127.0.0.1:1/123456789012/refunds', MessageBody: 'refund 982' })));
    expect(waiting.name).toBe('ChainwardenApprovalPending');
    expect(waiting.message).toMatch(/waits for approval \(hop h1_\w+_C+, rule refunds-need-a-person\)/);
    expect((await rejection(new S3Client(config({ ...keys, secretAccessKey: 'guessed-secret' })).send(new GetObjectCommand({ Bucket: 'customers', Key: '4711.json' })))).name).toBe('SignatureDoesNotMatch');
    expect((await rejection(new S3Client(config({ ...keys, accessKeyId: 'ASIACWNOTTHISTASKS01' })).send(new GetObjectCommand({ Bucket: 'customers', Key: '4711.json' })))).name).toBe('InvalidClientTokenId');
    const elsewhere = await rejection(new S3Client(config(keys, 'eu-west-1')).send(new GetObjectCommand({ Bucket: 'customers', Key: '4711.json' })));
    expect(elsewhere).toMatchObject({ name: 'InvalidRequest', message: expect.stringContaining('region eu-west-1') as unknown });
    expect(frontSince(front)).toEqual([]);
  });
});
