import { describe, expect, it } from 'vitest';
import { HopIds } from '../../../src/broker/hopids.js';
import { hopDigest, parseHopRequest } from '../../../src/broker/hops.js';

describe('parseHopRequest', () => {
  it('reads a hop and turns attribute values into strings', () => {
    expect(parseHopRequest({ tool: 'tickets', action: 'read', resource: 'ticket/1', attributes: { amount: 42, urgent: true } })).toEqual({
      tool: 'tickets', action: 'read', resource: 'ticket/1', parentHop: undefined, intent: '', attributes: { amount: '42', urgent: 'true' }, credential: undefined,
    });
  });
  it.each([
    [[], 'body'],
    [{ action: 'read' }, 'tool'],
    [{ tool: 'a b', action: 'read' }, 'tool'],
    [{ tool: 't', action: 7 }, 'action'],
    [{ tool: 't', action: 'a', extra: 1 }, 'extra'],
    [{ tool: 't', action: 'a', attributes: [] }, 'attributes'],
    [{ tool: 't', action: 'a', resource: 'x'.repeat(1025) }, 'resource'],
  ])('refuses %j naming %s', (body, field) => {
    expect(() => parseHopRequest(body)).toThrow(expect.objectContaining({ status: 400, field }));
  });
  it('digests what an approval is bound to, and nothing else', () => {
    const a = { tool: 'payments', action: 'refund', resource: 'order/1', attributes: { amount: '42' } };
    expect(hopDigest(a)).toBe(hopDigest({ ...a, attributes: { amount: '42' } }));
    expect(hopDigest(a)).not.toBe(hopDigest({ ...a, attributes: { amount: '43' } }));
  });
});

describe('HopIds', () => {
  const ids = new HopIds(Buffer.alloc(32, 7));
  it('carries the depth, readable only for the task it was minted for', () => {
    const id = ids.mint('task-1', 3);
    expect(ids.depthOf('task-1', id)).toBe(3);
    expect(ids.depthOf('task-2', id)).toBeUndefined();
  });
  it('refuses a forged shallower depth', () => {
    const id = ids.mint('task-1', 5);
    expect(ids.depthOf('task-1', id.replace(/^h5_/, 'h1_'))).toBeUndefined();
    expect(ids.depthOf('task-1', 'garbage')).toBeUndefined();
  });
});
