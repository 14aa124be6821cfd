import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import readline from 'node:readline';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { CreateBucketCommand, GetObjectCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { SignatureV4 } from '@smithy/signature-v4';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { signedAwsChunkedStream } from '../../builders/aws-chunked.js';
import { PLACEHOLDER, Sha256, startGatewayWorld } from '../../builders/aws-gateway-twins.js';

const bin = path.resolve(import.meta.dirname, '../../../bin/chainwarden.js');
const MiB = 1024 * 1024;
const SIZE = 100 * MiB;

let world: Awaited<ReturnType<typeof startGatewayWorld>>;
let sidecar: { child: ChildProcess; awsUrl: string; stderr: () => string };

/** `chainwarden agent --aws-listen` as its own process, so its memory is its own. */
async function startSidecarProcess(): Promise<typeof sidecar> {
  const child = spawn(process.execPath, [bin, 'agent', '--broker', world.twin.url, '--ca', world.caFile, '--token-file', world.tokenFile, '--listen', '127.0.0.1:0', '--aws-listen', '127.0.0.1:0'], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const lines = readline.createInterface({ input: child.stdout ?? Readable.from([]) })[Symbol.asyncIterator]();
  await lines.next();
  const aws = await lines.next();
  if (aws.done) throw new Error(`chainwarden agent printed no AWS listener: ${stderr}`);
  return { child, awsUrl: String(aws.value).trim(), stderr: () => stderr };
}

/** Resident memory of a process, now and at its peak (VmHWM), from /proc. */
function memoryOf(pid: number): { rss: number; peak: number } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (name: string) => Number(new RegExp(`^${name}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024;
  return { rss: kib('VmRSS'), peak: kib('VmHWM') };
}

/** 100 MiB that is not one repeated byte, made 1 MiB at a time as it is sent. */
function* payload(): Generator<Buffer> {
  for (let i = 0; i < SIZE / MiB; i++) {
    const chunk = Buffer.alloc(MiB);
    for (let j = 0; j < MiB; j += 4) chunk.writeUInt32LE((i * 2654435761 + j) >>> 0, j);
    yield chunk;
  }
}
const payloadHash = (() => {
  const hash = createHash('sha256');
  for (const chunk of payload()) hash.update(chunk);
  return hash.digest('hex');
})();

/**
 * A sidecar that held the body would grow by at least its 100 MiB (holding it, it grew by 188).
 * Streaming, it grows by what its garbage collector lets pile up before a collection: 0–32 MiB
 * measured, and no more at 300 MiB than at 100.
 */
const MAX_GROWTH_MIB = 60;

/** Runs `step` while sampling the sidecar's memory; what it took in time and in resident memory above where it started. */
async function measured(step: () => Promise<void>): Promise<{ ms: number; rssGrowthMiB: number; startMiB: number }> {
  const pid = sidecar.child.pid ?? 0;
  const start = memoryOf(pid).rss;
  let top = start;
  const sampler = setInterval(() => (top = Math.max(top, memoryOf(pid).rss)), 10);
  const began = Date.now();
  try {
    await step();
  } finally {
    clearInterval(sampler);
  }
  top = Math.max(top, memoryOf(pid).rss);
  return { ms: Date.now() - began, rssGrowthMiB: Math.round(((top - start) / MiB) * 10) / 10, startMiB: Math.round(start / MiB) };
}

beforeAll(async () => {
  world = await startGatewayWorld();
  sidecar = await startSidecarProcess();
  const s3 = new S3Client({ endpoint: sidecar.awsUrl, region: 'us-east-1', credentials: PLACEHOLDER, maxAttempts: 1 });
  await s3.send(new CreateBucketCommand({ Bucket: 'big' }));
  // Warm: the sidecar's code paths loaded and its pools open before anything is measured.
  await s3.send(new PutObjectCommand({ Bucket: 'big', Key: 'warm', Body: Readable.from([Buffer.alloc(MiB)]), ContentLength: MiB }));
  await (await s3.send(new GetObjectCommand({ Bucket: 'big', Key: 'warm' }))).Body?.transformToByteArray();
  s3.destroy();
}, 90_000);

afterAll(async () => {
  sidecar?.child.kill('SIGTERM');
  await world?.close();
});

describe('100 MiB through a sidecar process, never held in its memory', () => {
  const s3 = () => new S3Client({ endpoint: sidecar.awsUrl, region: 'us-east-1', credentials: PLACEHOLDER, maxAttempts: 1 });

  it('S3 PutObject of a 100 MiB stream (the SDK\'s STREAMING-UNSIGNED-PAYLOAD-TRAILER), then GetObject', async () => {
    const client = s3();
    const put = await measured(async () => {
      await client.send(new PutObjectCommand({ Bucket: 'big', Key: 'sdk-stream', Body: Readable.from(payload()), ContentLength: SIZE }));
    });
    const get = await measured(async () => {
      const answer = await client.send(new GetObjectCommand({ Bucket: 'big', Key: 'sdk-stream' }));
      const hash = createHash('sha256');
      for await (const chunk of answer.Body as Readable) hash.update(chunk as Buffer);
      expect(hash.digest('hex')).toBe(payloadHash);
    });
    client.destroy();
    const front = world.front.records.find((r) => r.method === 'PUT' && r.path.startsWith('/big/sdk-stream'));
    expect(front?.headers['x-amz-content-sha256']).toBe('STREAMING-UNSIGNED-PAYLOAD-TRAILER');
    expect(front?.refused).toBeUndefined();
    console.log(`100 MiB PutObject: ${put.ms} ms, sidecar RSS ${put.startMiB} MiB +${put.rssGrowthMiB} MiB; GetObject: ${get.ms} ms, +${get.rssGrowthMiB} MiB; peak RSS ${Math.round(memoryOf(sidecar.child.pid ?? 0).peak / MiB)} MiB`);
    expect(put.rssGrowthMiB).toBeLessThan(MAX_GROWTH_MIB);
    expect(get.rssGrowthMiB).toBeLessThan(MAX_GROWTH_MIB);
  }, 180_000);

  it('100 MiB of signed aws-chunked, decoded on the fly to UNSIGNED-PAYLOAD', async () => {
    const port = Number(new URL(sidecar.awsUrl).port);
    const headers = { host: `127.0.0.1:${port}`, 'content-encoding': 'aws-chunked', 'x-amz-content-sha256': 'STREAMING-AWS4-HMAC-SHA256-PAYLOAD', 'x-amz-decoded-content-length': String(SIZE) };
    const signed = await new SignatureV4({ credentials: PLACEHOLDER, region: 'us-east-1', service: 's3', sha256: Sha256, uriEscapePath: false }).sign({ method: 'PUT', protocol: 'http:', hostname: '127.0.0.1', port, path: '/big/java-style', query: {}, headers });
    const seedSignature = /Signature=([0-9a-f]{64})/.exec(String(signed.headers.authorization))?.[1] ?? '';
    const body = signedAwsChunkedStream(payload(), undefined, { secretAccessKey: PLACEHOLDER.secretAccessKey, amzDate: String(signed.headers['x-amz-date']), region: 'us-east-1', service: 's3', seedSignature });
    let status = 0;
    const put = await measured(async () => {
      await new Promise<void>((resolve, reject) => {
        const req = http.request({ host: '127.0.0.1', port, method: 'PUT', path: '/big/java-style', headers: { ...signed.headers, 'transfer-encoding': 'chunked' }, setHost: false }, (res) => {
          status = res.statusCode ?? 0;
          res.resume().on('end', resolve);
        });
        req.on('error', reject);
        pipeline(Readable.from(body), req).catch(reject);
      });
    });
    expect(status).toBe(200);
    const client = s3();
    const answer = await client.send(new GetObjectCommand({ Bucket: 'big', Key: 'java-style' }));
    const hash = createHash('sha256');
    for await (const chunk of answer.Body as Readable) hash.update(chunk as Buffer);
    expect(hash.digest('hex')).toBe(payloadHash);
    client.destroy();
    const front = world.front.records.find((r) => r.path.startsWith('/big/java-style') && r.method === 'PUT');
    expect(front?.headers).toMatchObject({ 'x-amz-content-sha256': 'UNSIGNED-PAYLOAD', 'content-length': String(SIZE) });
    expect(front?.bodyBytes).toBe(SIZE);
    console.log(`100 MiB signed aws-chunked PUT, decoded: ${put.ms} ms, sidecar RSS +${put.rssGrowthMiB} MiB`);
    expect(put.rssGrowthMiB).toBeLessThan(MAX_GROWTH_MIB);
  }, 180_000);
});
