import { describe, expect, it } from 'vitest';
import { fieldPath, InvalidObjectError, parseAgentPolicy, parseAgentTask } from '../../../src/api/parse.js';
import { formatDuration, parseDuration } from '../../../src/api/duration.js';

const meta = { name: 'p', namespace: 'ns' };

describe('parse', () => {
  it('fills in the schema defaults', () => {
    const policy = parseAgentPolicy({ apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentPolicy', metadata: meta, spec: {} });
    expect(policy.spec).toMatchObject({ maxTaskTTL: '1h', onViolation: 'Revoke', limits: { maxHops: 100, maxDepth: 6 }, approval: { timeout: '15m' } });
  });

  it('leaves its input alone: a defaulted copy when defaults were missing, the object itself when the API server had filled them in', () => {
    const bare = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', metadata: meta, spec: { serviceAccountName: 'agent', policyRef: { name: 'p' }, ttl: '1h', credentials: [{ name: 'default', aws: { roleArn: 'arn:aws:iam::123456789012:role/r' } }] } };
    const before = structuredClone(bare);
    const defaulted = parseAgentTask(bare);
    expect(defaulted.spec.credentials?.[0]?.aws).toMatchObject({ delivery: 'Gateway', webIdentity: false });
    expect(bare).toEqual(before);
    // As the watch delivers it: every default present. A cache of parsed tasks then holds one copy of each, not two.
    const asStored = JSON.parse(JSON.stringify(defaulted)) as unknown;
    expect(parseAgentTask(asStored)).toBe(asStored);
  });

  it('lists every violation with its field path', () => {
    const bad = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentTask', metadata: meta, spec: { ttl: 5, policyRef: {}, credentials: [{ name: 'x', aws: {} }] } };
    try {
      parseAgentTask(bad);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(InvalidObjectError);
      const fields = (err as InvalidObjectError).violations.map((v) => v.field);
      expect(fields).toEqual(expect.arrayContaining(['spec.serviceAccountName', 'spec.ttl', 'spec.policyRef.name', 'spec.credentials[0].aws.roleArn']));
    }
  });

  it('refuses the wrong kind or API version', () => {
    expect(() => parseAgentTask({ apiVersion: 'v1', kind: 'Pod', metadata: meta, spec: {} })).toThrow(/apiVersion: must be chainwarden.io\/v1alpha1; kind: must be AgentTask/);
  });

  it('writes JSON pointers as kubectl field paths', () => {
    expect(fieldPath('/credentials/0/aws/sessionTags/a~1b', 'spec')).toBe('spec.credentials[0].aws.sessionTags.a/b');
  });
});

describe('durations', () => {
  it.each([
    ['15m', 900_000],
    ['1h30m', 5_400_000],
    ['90s', 90_000],
    ['1.5h', 5_400_000],
    ['250ms', 250],
  ])('%s is %d ms', (text, ms) => expect(parseDuration(text)).toBe(ms));

  it.each(['', '15', '15 m', '1d', '-5m', 'm'])('"%s" is refused with the field and an example', (text) => {
    expect(() => parseDuration(text, 'spec.ttl')).toThrow(/spec.ttl: .* is not a duration; write it like 30m/);
  });

  it('answers a duration it has parsed before the same, a bad one is refused every time, and the memo holds any number of values', () => {
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(() => parseDuration('1d', 'spec.ttl')).toThrow(/spec.ttl/);
    expect(() => parseDuration('1d', 'spec.ttl')).toThrow(/spec.ttl/);
    for (let s = 1; s <= 3000; s++) expect(parseDuration(`${s}s`)).toBe(s * 1000);
    expect(parseDuration('90m')).toBe(5_400_000);
  });

  it('formats whole seconds the shortest way', () => {
    expect(formatDuration(5_400_000)).toBe('1h30m');
    expect(formatDuration(900_000)).toBe('15m');
    expect(formatDuration(0)).toBe('0s');
  });
});
