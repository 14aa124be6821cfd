import { Transform, type TransformCallback } from 'node:stream';
import { ChainwardenError } from '../errors.js';

/**
 * What a signed aws-chunked body (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]`) becomes on its
 * way to AWS. Its chunk signatures chain from the SDK's seed signature, made with the placeholder
 * secret, so AWS would refuse them: with a trailer it is re-framed as unsigned aws-chunked
 * (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`, the trailer's checksum kept); without one, it is decoded
 * to the payload itself (`UNSIGNED-PAYLOAD`).
 */
export type ChunkedOutput = 'unsigned-trailer' | 'decoded';

/** A chunk header is `<hex size>;chunk-signature=<64 hex>`; anything longer is not one. */
const MAX_LINE_BYTES = 4096;
/** Trailers are a checksum or two. */
const MAX_TRAILER_BYTES = 16 * 1024;
const CRLF = Buffer.from('\r\n');
const CHUNK_HEADER = /^([0-9a-fA-F]{1,13});chunk-signature=[0-9a-f]{64}$/;
const TRAILER_LINE = /^([A-Za-z0-9!#$%&'*+.^_`|~-]+):(.*)$/;
const TRAILER_SIGNATURE = 'x-amz-trailer-signature';

type State = 'chunk-header' | 'data' | 'data-end' | 'trailer' | 'done';

const invalid = (what: string) => new ChainwardenError('aws_request_invalid', `the request body is not valid signed aws-chunked encoding: ${what}`);

/**
 * The re-encoder as a state machine over bytes, for any split of the input: payload bytes go out
 * as slices of the input, never copied or held; only a chunk header or trailer line being read
 * is buffered, and that is bounded. Chunk signatures are dropped unchecked: the broker checked
 * the seed signature, and the body comes from the same process over loopback.
 */
export class AwsChunkedDecoder {
  private state: State = 'chunk-header';
  private line: Buffer[] = [];
  private lineBytes = 0;
  private remaining = 0;
  private crlfSeen = 0;
  private trailerBytes = 0;
  private decoded = 0;
  /** The most bytes ever held at once, for tests that prove nothing is buffered. */
  maxHeld = 0;

  constructor(
    private readonly output: ChunkedOutput,
    /** `x-amz-decoded-content-length`: the payload must be exactly this long. */
    private readonly decodedLength: number | undefined,
  ) {}

  /** The bytes to send on for this piece of input. */
  write(input: Buffer): Buffer[] {
    const out: Buffer[] = [];
    let pos = 0;
    while (pos < input.length) {
      switch (this.state) {
        case 'chunk-header':
        case 'trailer': {
          const line = this.takeLine(input, pos);
          if (line === undefined) return out;
          pos = line.next;
          if (this.state === 'chunk-header') this.chunkHeader(line.text, out);
          else this.trailerLine(line.text, out);
          break;
        }
        case 'data': {
          const n = Math.min(this.remaining, input.length - pos);
          out.push(input.subarray(pos, pos + n));
          pos += n;
          this.remaining -= n;
          if (this.remaining === 0) this.state = 'data-end';
          break;
        }
        case 'data-end': {
          if (input[pos] !== CRLF[this.crlfSeen]) throw invalid('a chunk is longer than its header says');
          pos++;
          if (++this.crlfSeen === 2) {
            this.crlfSeen = 0;
            this.state = 'chunk-header';
            if (this.output === 'unsigned-trailer') out.push(CRLF);
          }
          break;
        }
        case 'done':
          throw invalid('there are bytes after the final chunk');
      }
    }
    return out;
  }

  /** The input has ended: it must have ended where the encoding does. */
  end(): void {
    if (this.state !== 'done') throw invalid('it ends before the final chunk and its trailer');
    if (this.decodedLength !== undefined && this.decoded !== this.decodedLength) {
      throw invalid(`it holds ${this.decoded} bytes of payload, not the ${this.decodedLength} x-amz-decoded-content-length says`);
    }
  }

  /** A CRLF-terminated line starting at `pos`, possibly begun in earlier input; undefined until it is complete. */
  private takeLine(input: Buffer, pos: number): { text: string; next: number } | undefined {
    const lf = input.indexOf(0x0a, pos);
    const end = lf < 0 ? input.length : lf + 1;
    this.lineBytes += end - pos;
    if (this.lineBytes > MAX_LINE_BYTES) throw invalid(`a chunk header or trailer line is longer than ${MAX_LINE_BYTES} bytes`);
    this.line.push(input.subarray(pos, end));
    this.maxHeld = Math.max(this.maxHeld, this.lineBytes);
    if (lf < 0) {
      // Held past this call: copy, so the caller's buffer is not pinned.
      this.line = [Buffer.concat(this.line)];
      return undefined;
    }
    const bytes = Buffer.concat(this.line);
    this.line = [];
    this.lineBytes = 0;
    if (bytes.length < 2 || bytes[bytes.length - 2] !== 0x0d) throw invalid('a line does not end in CRLF');
    return { text: bytes.subarray(0, bytes.length - 2).toString('latin1'), next: end };
  }

  private chunkHeader(text: string, out: Buffer[]): void {
    const m = CHUNK_HEADER.exec(text);
    if (!m) throw invalid('a chunk header is not <hex size>;chunk-signature=<signature>');
    const size = parseInt(m[1] ?? '', 16);
    this.decoded += size;
    if (this.decodedLength !== undefined && this.decoded > this.decodedLength) {
      throw invalid(`its chunks hold more than the ${this.decodedLength} bytes x-amz-decoded-content-length says`);
    }
    if (this.output === 'unsigned-trailer') out.push(Buffer.from(`${size.toString(16)}\r\n`, 'latin1'));
    if (size === 0) {
      this.state = 'trailer';
    } else {
      this.remaining = size;
      this.state = 'data';
    }
  }

  private trailerLine(text: string, out: Buffer[]): void {
    if (text === '') {
      this.state = 'done';
      if (this.output === 'unsigned-trailer') out.push(CRLF);
      return;
    }
    this.trailerBytes += text.length + 2;
    if (this.trailerBytes > MAX_TRAILER_BYTES) throw invalid(`its trailer is longer than ${MAX_TRAILER_BYTES} bytes`);
    const m = TRAILER_LINE.exec(text);
    if (!m) throw invalid('a trailer line is not <name>:<value>');
    if ((m[1] ?? '').toLowerCase() === TRAILER_SIGNATURE) return;
    if (this.output === 'decoded') throw invalid('it has a trailer, but x-amz-content-sha256 says STREAMING-AWS4-HMAC-SHA256-PAYLOAD, which has none');
    out.push(Buffer.from(`${text}\r\n`, 'latin1'));
  }
}

/** The re-encoder as a stream, for a request body on its way from the SDK to AWS. */
export function awsChunkedReencoder(output: ChunkedOutput, decodedLength: number | undefined): Transform & { decoder: AwsChunkedDecoder } {
  const decoder = new AwsChunkedDecoder(output, decodedLength);
  const stream = new Transform({
    transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback) {
      try {
        for (const piece of decoder.write(chunk)) this.push(piece);
        done();
      } catch (err) {
        done(err as Error);
      }
    },
    flush(done: TransformCallback) {
      try {
        decoder.end();
        done();
      } catch (err) {
        done(err as Error);
      }
    },
  });
  return Object.assign(stream, { decoder });
}
