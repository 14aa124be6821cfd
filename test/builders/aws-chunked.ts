import { createHash, createHmac } from 'node:crypto';

const sha256Hex = (data: Buffer | string) => createHash('sha256').update(data).digest('hex');
const hmac = (key: Buffer | string, data: string) => createHmac('sha256', key).update(data).digest();
const EMPTY_HASH = sha256Hex('');

/** What chains the chunk signatures: the request's signing key, time and scope, and its seed signature. */
export interface ChunkSigning {
  secretAccessKey: string;
  /** x-amz-date, e.g. 20261121T081159Z. */
  amzDate: string;
  region: string;
  service: string;
  /** The signature of the request's headers (its Authorization header's Signature). */
  seedSignature: string;
}

function signingKey(s: ChunkSigning): Buffer {
  const date = hmac(`AWS4${s.secretAccessKey}`, s.amzDate.slice(0, 8));
  return hmac(hmac(hmac(date, s.region), s.service), 'aws4_request');
}

/**
 * A body in signed aws-chunked encoding, as the Java SDK sends S3 uploads over http
 * (`STREAMING-AWS4-HMAC-SHA256-PAYLOAD`, or `…-TRAILER` when there are trailers): every chunk
 * signed, each signature chained from the one before, the trailer signed last. Without `signing`
 * the signatures are well-formed but made up. Produced piece by piece, so a large body is never whole.
 */
export function* signedAwsChunkedStream(chunks: Iterable<Buffer>, trailers: [string, string][] | undefined, signing?: ChunkSigning): Generator<Buffer> {
  const scope = signing ? `${signing.amzDate.slice(0, 8)}/${signing.region}/${signing.service}/aws4_request` : '';
  const key = signing ? signingKey(signing) : undefined;
  let previous = signing?.seedSignature ?? '';
  let counter = 0;
  const sign = (kind: 'PAYLOAD' | 'TRAILER', hash: string) => {
    if (!signing || !key) return sha256Hex(`made-up-${counter++}`);
    const stringToSign = kind === 'PAYLOAD' ? ['AWS4-HMAC-SHA256-PAYLOAD', signing.amzDate, scope, previous, EMPTY_HASH, hash].join('\n') : ['AWS4-HMAC-SHA256-TRAILER', signing.amzDate, scope, previous, hash].join('\n');
    previous = createHmac('sha256', key).update(stringToSign).digest('hex');
    return previous;
  };
  for (const chunk of chunks) {
    if (chunk.length === 0) continue;
    yield Buffer.concat([Buffer.from(`${chunk.length.toString(16)};chunk-signature=${sign('PAYLOAD', sha256Hex(chunk))}\r\n`), chunk, Buffer.from('\r\n')]);
  }
  const end = [`0;chunk-signature=${sign('PAYLOAD', EMPTY_HASH)}\r\n`];
  if (trailers && trailers.length > 0) {
    const text = trailers.map(([name, value]) => `${name}:${value}\n`).join('');
    for (const [name, value] of trailers) end.push(`${name}:${value}\r\n`);
    end.push(`x-amz-trailer-signature:${sign('TRAILER', sha256Hex(text))}\r\n`);
  }
  end.push('\r\n');
  yield Buffer.from(end.join(''));
}

/** The whole of `signedAwsChunkedStream`. */
export function signedAwsChunked(chunks: Buffer[], trailers: [string, string][] | undefined, signing?: ChunkSigning): Buffer {
  return Buffer.concat([...signedAwsChunkedStream(chunks, trailers, signing)]);
}

/** Unsigned aws-chunked (`STREAMING-UNSIGNED-PAYLOAD-TRAILER`) read whole: what S3 would store and the trailers it would check. */
export function readUnsignedAwsChunked(body: Buffer): { payload: Buffer; chunkSizes: number[]; trailers: [string, string][] } {
  const payload: Buffer[] = [];
  const chunkSizes: number[] = [];
  let pos = 0;
  const line = () => {
    const end = body.indexOf('\r\n', pos);
    if (end < 0) throw new Error(`no CRLF after byte ${pos}`);
    const text = body.subarray(pos, end).toString('latin1');
    pos = end + 2;
    return text;
  };
  for (;;) {
    const header = line();
    if (!/^[0-9a-f]+$/.test(header)) throw new Error(`not an unsigned chunk header: ${header}`);
    const size = parseInt(header, 16);
    chunkSizes.push(size);
    if (size === 0) break;
    payload.push(body.subarray(pos, pos + size));
    pos += size;
    if (line() !== '') throw new Error('chunk longer than its header');
  }
  const trailers: [string, string][] = [];
  for (let text = line(); text !== ''; text = line()) {
    const colon = text.indexOf(':');
    trailers.push([text.slice(0, colon), text.slice(colon + 1)]);
  }
  if (pos !== body.length) throw new Error(`${body.length - pos} bytes after the trailer`);
  return { payload: Buffer.concat(payload), chunkSizes, trailers };
}
