import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { AwsChunkedDecoder, awsChunkedReencoder, type ChunkedOutput } from '../../../src/aws/aws-chunked.js';
import { ChainwardenError } from '../../../src/errors.js';
import { readUnsignedAwsChunked, signedAwsChunked } from '../../builders/aws-chunked.js';

/** The payload cut into chunks of the given sizes (cycling through them), as an SDK's buffer sizes would. */
function chunked(payload: Buffer, sizes: number[]): Buffer[] {
  const chunks: Buffer[] = [];
  for (let pos = 0, i = 0; pos < payload.length; i++) {
    const size = sizes[i % sizes.length] ?? payload.length;
    chunks.push(payload.subarray(pos, pos + size));
    pos += size;
  }
  return chunks;
}

/** The bytes cut at the given offsets, as TCP and the HTTP parser would hand them over. */
function pieces(bytes: Buffer, cuts: number[]): Buffer[] {
  const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
  const out: Buffer[] = [];
  let from = 0;
  for (const cut of [...at, bytes.length]) {
    out.push(bytes.subarray(from, cut));
    from = cut;
  }
  return out;
}

function decodeAll(output: ChunkedOutput, input: Buffer[], decodedLength?: number): Buffer {
  const decoder = new AwsChunkedDecoder(output, decodedLength);
  const out = input.flatMap((piece) => decoder.write(piece));
  decoder.end();
  expect(decoder.maxHeld).toBeLessThanOrEqual(4096);
  return Buffer.concat(out);
}

const failure = (run: () => unknown) => {
  try {
    run();
    return 'no error';
  } catch (err) {
    return err instanceof ChainwardenError ? err.code : `uncoded: ${String(err)}`;
  }
};

const payloadArb = fc.uint8Array({ maxLength: 3000 }).map((a) => Buffer.from(a));
const sizesArb = fc.array(fc.integer({ min: 1, max: 700 }), { minLength: 1, maxLength: 8 });
const cutsArb = fc.array(fc.nat(), { maxLength: 40 });
const trailersArb = fc.array(fc.tuple(fc.constantFrom('x-amz-checksum-crc32', 'x-amz-checksum-crc32c', 'x-amz-checksum-sha256'), fc.stringMatching(/^[A-Za-z0-9+/]{6,44}=?=?$/)), { minLength: 1, maxLength: 2 });

describe('signed aws-chunked, re-encoded for AWS', () => {
  it('without a trailer: any chunking of any payload, split anywhere, decodes to the payload', () => {
    fc.assert(
      fc.property(payloadArb, sizesArb, cutsArb, (payload, sizes, cuts) => {
        const body = signedAwsChunked(chunked(payload, sizes), undefined);
        expect(decodeAll('decoded', pieces(body, cuts), payload.length).equals(payload)).toBe(true);
      }),
      { numRuns: 500 },
    );
  });

  it('with a trailer: unsigned aws-chunked with the same chunks and trailers, no signature left', () => {
    fc.assert(
      fc.property(payloadArb, sizesArb, cutsArb, trailersArb, (payload, sizes, cuts, trailers) => {
        const chunks = chunked(payload, sizes);
        const out = decodeAll('unsigned-trailer', pieces(signedAwsChunked(chunks, trailers), cuts), payload.length);
        const read = readUnsignedAwsChunked(out);
        expect(read.payload.equals(payload)).toBe(true);
        expect(read.chunkSizes).toEqual([...chunks.map((c) => c.length), 0]);
        expect(read.trailers).toEqual(trailers);
        expect(out.toString('latin1')).not.toMatch(/chunk-signature|x-amz-trailer-signature/);
      }),
      { numRuns: 500 },
    );
  });

  it('a body cut short anywhere is refused, never passed on shorter', () => {
    fc.assert(
      fc.property(payloadArb, sizesArb, fc.boolean(), fc.nat(), (payload, sizes, withTrailer, cut) => {
        const body = signedAwsChunked(chunked(payload, sizes), withTrailer ? [['x-amz-checksum-crc32', 'AAAAAA==']] : undefined);
        const short = body.subarray(0, cut % body.length);
        expect(failure(() => decodeAll(withTrailer ? 'unsigned-trailer' : 'decoded', [short]))).toBe('aws_request_invalid');
      }),
      { numRuns: 300 },
    );
  });

  it('a payload of another length than x-amz-decoded-content-length declares is refused', () => {
    fc.assert(
      fc.property(payloadArb, sizesArb, fc.integer({ min: -5, max: 5 }).filter((d) => d !== 0), (payload, sizes, delta) => {
        fc.pre(payload.length + delta >= 0);
        const body = signedAwsChunked(chunked(payload, sizes), undefined);
        expect(failure(() => decodeAll('decoded', [body], payload.length + delta))).toBe('aws_request_invalid');
      }),
    );
  });

  it.each([
    ['a trailer where none was declared', 'decoded', signedAwsChunked([Buffer.from('abc')], [['x-amz-checksum-crc32', 'AAAAAA==']])],
    ['bytes after the final chunk', 'decoded', Buffer.concat([signedAwsChunked([Buffer.from('abc')], undefined), Buffer.from('x')])],
    ['a chunk without its signature', 'decoded', Buffer.from('3\r\nabc\r\n0\r\n\r\n')],
    ['a chunk longer than its header', 'decoded', Buffer.from(`2;chunk-signature=${'a'.repeat(64)}\r\nabc\r\n`)],
    ['a size that is not hex', 'decoded', Buffer.from(`zz;chunk-signature=${'a'.repeat(64)}\r\n`)],
    ['a bare LF', 'decoded', Buffer.from(`3;chunk-signature=${'a'.repeat(64)}\nabc`)],
    ['an endless header line', 'decoded', Buffer.alloc(10_000, 0x61)],
    ['a size past 2^52', 'decoded', Buffer.from(`fffffffffffffff;chunk-signature=${'a'.repeat(64)}\r\n`)],
    ['a trailer line without a colon', 'unsigned-trailer', Buffer.from(`0;chunk-signature=${'a'.repeat(64)}\r\nnot a trailer\r\n\r\n`)],
  ] as const)('%s is refused', (_name, output, body) => {
    expect(failure(() => decodeAll(output, [body]))).toBe('aws_request_invalid');
  });

  it('as a stream, 64 MiB pass through holding no more than a chunk header, with backpressure', async () => {
    const piece = Buffer.alloc(1024 * 1024, 0x5a);
    const body = function* () {
      for (let i = 0; i < 64; i++) yield signedAwsChunked([piece], undefined).subarray(0, -((`0;chunk-signature=${'a'.repeat(64)}\r\n\r\n`).length));
      yield Buffer.from(`0;chunk-signature=${'a'.repeat(64)}\r\n\r\n`);
    };
    const reencoder = awsChunkedReencoder('decoded', 64 * piece.length);
    let received = 0;
    let pendingPeak = 0;
    const sink = new Writable({
      highWaterMark: 64 * 1024,
      write(chunk: Buffer, _enc, done) {
        received += chunk.length;
        pendingPeak = Math.max(pendingPeak, reencoder.readableLength);
        // A slow upstream: the re-encoder must wait for it rather than queue the body.
        setImmediate(done);
      },
    });
    await pipeline(Readable.from(body()), reencoder, sink);
    expect(received).toBe(64 * piece.length);
    expect(reencoder.decoder.maxHeld).toBeLessThanOrEqual(4096);
    expect(pendingPeak).toBeLessThanOrEqual(2 * piece.length);
  });
});
