import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { decodeAdmissionReview, MAX_REVIEW_DEPTH } from '../../../src/admission/server.js';
import { ChainwardenError } from '../../../src/errors.js';

const valid = {
  apiVersion: 'admission.k8s.io/v1',
  kind: 'AdmissionReview',
  request: {
    uid: '705ab4f5-6393-11e8-b7cc-42010a800002',
    kind: { group: '', version: 'v1', kind: 'Pod' },
    resource: { group: '', version: 'v1', resource: 'pods' },
    operation: 'CREATE',
    namespace: 'support',
    userInfo: { username: 'alice', groups: ['system:authenticated'] },
    object: { metadata: { name: 'agent-0', labels: { 'chainwarden.io/task': 'ticket-4711' } }, spec: { containers: [{ name: 'agent', image: 'x' }] } },
  },
};
const validText = JSON.stringify(valid);

/** What the decoder may do with any body: answer a request, or throw a coded 4xx. Nothing else, and never slowly. */
function decodesOrRefuses(body: Buffer): void {
  const started = performance.now();
  try {
    const request = decodeAdmissionReview(body);
    expect(typeof request.uid).toBe('string');
    expect(typeof request.resource.resource).toBe('string');
    expect(['CREATE', 'UPDATE', 'DELETE', 'CONNECT']).toContain(request.operation);
    expect(typeof request.userInfo).toBe('object');
  } catch (err) {
    if (!(err instanceof ChainwardenError)) throw new Error(`threw ${String(err)} for ${body.subarray(0, 80).toString()}`, { cause: err });
    expect(err.status).toBeGreaterThanOrEqual(400);
    expect(err.status).toBeLessThan(500);
  }
  expect(performance.now() - started).toBeLessThan(250);
}

/** Text nested `depth` deep in arrays or objects, closed or left open, optionally inside a valid review. */
const deepBody = fc.record({ depth: fc.integer({ min: 1, max: 200_000 }), object: fc.boolean(), closed: fc.boolean(), inReview: fc.boolean() }).map(({ depth, object, closed, inReview }) => {
  const [open, close] = object ? ['{"a":', '}'] : ['[', ']'];
  const deep = `${open.repeat(depth)}${object ? '1' : ''}${closed ? close.repeat(depth) : ''}`;
  return Buffer.from(inReview ? validText.replace('"object":{', `"object":{"deep":${deep},`) : deep);
});

/** A valid review with one field replaced by any JSON value. */
const fieldPaths = [['apiVersion'], ['kind'], ['request'], ['request', 'uid'], ['request', 'resource'], ['request', 'resource', 'resource'], ['request', 'operation'], ['request', 'subResource'], ['request', 'namespace'], ['request', 'userInfo'], ['request', 'object']];
const reviewWithOddField = fc.record({ path: fc.constantFrom(...fieldPaths), value: fc.jsonValue({ maxDepth: 4 }) }).map(({ path, value }) => {
  const review = structuredClone(valid) as Record<string, unknown>;
  let at = review;
  for (const key of path.slice(0, -1)) at = at[key] as Record<string, unknown>;
  at[path.at(-1) ?? ''] = value;
  return Buffer.from(JSON.stringify(review));
});

/** A valid review's bytes with some of them overwritten, cut short or repeated. */
const mangledReview = fc.array(fc.record({ at: fc.nat(validText.length - 1), byte: fc.integer({ min: 0, max: 255 }) }), { minLength: 1, maxLength: 8 }).chain((edits) =>
  fc.constantFrom('overwrite', 'truncate', 'repeat').map((how) => {
    const bytes = Buffer.from(validText);
    if (how === 'truncate') return bytes.subarray(0, edits[0]?.at ?? 0);
    if (how === 'repeat') return Buffer.concat([bytes.subarray(0, edits[0]?.at ?? 0), bytes]);
    for (const { at, byte } of edits) bytes[at] = byte;
    return bytes;
  }),
);

describe('decodeAdmissionReview', () => {
  it('decodes a review as the API server sends it', () => {
    expect(decodeAdmissionReview(Buffer.from(validText))).toMatchObject({ uid: valid.request.uid, operation: 'CREATE', resource: { resource: 'pods' } });
  });

  it('refuses a review nested past the limit with json_too_deep, and accepts one at the limit', () => {
    const nest = (depth: number) => `${'['.repeat(depth)}${']'.repeat(depth)}`;
    // The review, request and object add 3 levels around the nested value.
    const at = (depth: number) => Buffer.from(validText.replace('"object":{', `"object":{"deep":${nest(depth)},`));
    expect(() => decodeAdmissionReview(at(MAX_REVIEW_DEPTH - 3))).not.toThrow();
    expect(() => decodeAdmissionReview(at(MAX_REVIEW_DEPTH - 2))).toThrow(expect.objectContaining({ code: 'json_too_deep', status: 400 }));
  });

  it.each([
    ['a request that is a string', { ...valid, request: 'x' }, 'request'],
    ['a uid that is a number', { ...valid, request: { ...valid.request, uid: 7 } }, 'request.uid'],
    ['an unknown operation', { ...valid, request: { ...valid.request, operation: 'PATCH' } }, 'request.operation'],
    ['no userInfo', { ...valid, request: { ...valid.request, userInfo: undefined } }, 'request.userInfo'],
    ['a resource without its name', { ...valid, request: { ...valid.request, resource: { group: '' } } }, 'request.resource'],
  ])('refuses %s with a 400 naming the field', (_name, review, field) => {
    expect(() => decodeAdmissionReview(Buffer.from(JSON.stringify(review)))).toThrow(expect.objectContaining({ code: 'invalid_admission_review', status: 400, field }));
  });

  it('throws nothing but a coded 4xx, promptly, whatever the body (fuzz)', () => {
    const anyBody = fc.oneof(
      fc.uint8Array({ maxLength: 2048 }).map((a) => Buffer.from(a)),
      fc.string({ unit: 'binary', maxLength: 512 }).map((s) => Buffer.from(s)),
      fc.jsonValue({ maxDepth: 6 }).map((v) => Buffer.from(JSON.stringify(v))),
      deepBody,
      reviewWithOddField,
      mangledReview,
    );
    fc.assert(fc.property(anyBody, decodesOrRefuses), { numRuns: 2_000 });
  });
});
