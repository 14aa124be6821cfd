import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ChainwardenError } from '../../../src/errors.js';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { assertJsonDepth, parseJson, readBody } from '../../../src/server/http.js';

const nested = (depth: number, open = '[', close = ']') => `${open.repeat(depth)}${close.repeat(depth)}`;

describe('parseJson', () => {
  it('parses JSON nested exactly to the limit, and refuses one level more with json_too_deep', () => {
    expect(parseJson(Buffer.from(nested(5)), 5)).toEqual([[[[[]]]]]);
    expect(() => parseJson(Buffer.from(nested(6)), 5)).toThrow(expect.objectContaining({ code: 'json_too_deep', status: 400, field: 'body' }));
    const objects = `${'{"a":'.repeat(6)}1${'}'.repeat(6)}`;
    expect(() => parseJson(Buffer.from(objects), 5)).toThrow(/nests arrays and objects more than 5 deep \(at byte 25\)/);
  });

  it('does not count brackets inside strings, escaped quotes included', () => {
    const text = JSON.stringify({ a: '[[[[{{{{', b: 'say \\"[[[[\\" and \\\\', c: ['\u00e9[', '😀{'] });
    expect(parseJson(Buffer.from(text), 2)).toEqual(JSON.parse(text));
  });

  it('refuses a million unclosed brackets at the first one past the limit, in well under a second', () => {
    const started = performance.now();
    expect(() => parseJson(Buffer.from('['.repeat(1_000_000)), 64)).toThrow(/at byte 64\)/);
    expect(performance.now() - started).toBeLessThan(100);
  });

  it('answers invalid JSON as invalid_json, never as a SyntaxError', () => {
    for (const text of ['{not json', '', '"', '[1,]', '\u0000']) {
      let thrown: unknown;
      try {
        parseJson(Buffer.from(text));
      } catch (err) {
        thrown = err;
      }
      expect(thrown, text).toBeInstanceOf(ChainwardenError);
      expect((thrown as ChainwardenError).code).toBe('invalid_json');
      // The contract's 400s name the field: here the body as a whole.
      expect((thrown as ChainwardenError).field).toBe('body');
    }
  });

  it('measures the depth of any JSON text exactly as its value nests (property)', () => {
    const depthOf = (v: unknown): number => (typeof v === 'object' && v !== null ? 1 + Math.max(0, ...Object.values(v).map(depthOf)) : 0);
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 8 }), fc.boolean(), (value, pretty) => {
        const bytes = Buffer.from(JSON.stringify(value, null, pretty ? 2 : undefined));
        const depth = depthOf(value);
        expect(() => assertJsonDepth(bytes, depth)).not.toThrow();
        if (depth > 0) expect(() => assertJsonDepth(bytes, depth - 1)).toThrow(expect.objectContaining({ code: 'json_too_deep' }));
      }),
      { numRuns: 500 },
    );
  });
});

describe('readBody', () => {
  /** A real server whose handler reads the body; resolves with what readBody gave or threw, and whether it had destroyed the request. */
  const serve = async (limit: number) => {
    const outcomes: Promise<{ body?: string; error?: unknown; destroyed: boolean }>[] = [];
    const server = http.createServer((req, res) => {
      outcomes.push(
        readBody(req, limit).then(
          (b) => {
            res.end('ok');
            return { body: b.toString(), destroyed: false };
          },
          (error: unknown) => {
            const destroyed = req.destroyed;
            res.destroy();
            return { error, destroyed };
          },
        ),
      );
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as AddressInfo).port;
    return { port, outcomes, close: () => new Promise((r) => server.close(r)) };
  };
  const send = (port: number, write: (req: http.ClientRequest) => void, headers: Record<string, string> = {}) => {
    const req = http.request({ port, host: '127.0.0.1', method: 'POST', headers });
    req.on('error', () => undefined);
    req.on('response', (res) => res.resume());
    write(req);
    return req;
  };

  it('joins a body sent in several chunks', async () => {
    const s = await serve(100);
    send(s.port, (req) => {
      req.write('{"tool":');
      setTimeout(() => req.end('"tickets"}'), 20);
    });
    await expect.poll(() => s.outcomes.length).toBe(1);
    expect(await s.outcomes[0]).toEqual({ body: '{"tool":"tickets"}', destroyed: false });
    await s.close();
  });

  it('refuses a chunked body that grows past the limit with body_too_large and stops reading it', async () => {
    const s = await serve(16);
    const req = send(s.port, (r) => r.write('x'.repeat(10)));
    setTimeout(() => req.write('y'.repeat(10)), 20);
    await expect.poll(() => s.outcomes.length).toBe(1);
    const outcome = await s.outcomes[0];
    expect(outcome?.error).toEqual(expect.objectContaining({ code: 'body_too_large', status: 413 }));
    expect(outcome?.destroyed).toBe(true);
    req.destroy();
    await s.close();
  });

  it('refuses a declared length over the limit before reading a byte', async () => {
    const s = await serve(16);
    const req = send(s.port, (r) => r.flushHeaders(), { 'content-length': '17' });
    await expect.poll(() => s.outcomes.length).toBe(1);
    expect((await s.outcomes[0])?.error).toEqual(expect.objectContaining({ code: 'body_too_large' }));
    req.destroy();
    await s.close();
  });

  it('rejects, never hangs, when the client goes away before the body ends', async () => {
    const s = await serve(1000);
    const req = send(s.port, (r) => r.write('{"tool":'), { 'content-length': '100' });
    await expect.poll(() => s.outcomes.length).toBe(1);
    req.destroy();
    const outcome = await s.outcomes[0];
    expect(outcome?.error).toBeInstanceOf(Error);
    expect(outcome?.body).toBeUndefined();
    await s.close();
  });
});
