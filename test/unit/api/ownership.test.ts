import { describe, expect, it } from 'vitest';
import { CONDITION_OWNERS, CREDENTIALS_OWNERS, ownedStatus, STATUS_OWNERS } from '../../../src/api/ownership.js';
import { AgentTaskStatus, type AgentTaskStatus as Status } from '../../../src/api/schema.js';

describe('status ownership', () => {
  it('gives every field of the status schema an owner', () => {
    const top = Object.keys(AgentTaskStatus.properties).filter((k) => k !== 'credentials' && k !== 'conditions');
    expect(Object.keys(STATUS_OWNERS).sort()).toEqual(top.sort());
    const credentials = AgentTaskStatus.properties.credentials as unknown as { properties: Record<string, unknown> };
    expect(Object.keys(CREDENTIALS_OWNERS).sort()).toEqual(Object.keys(credentials.properties).sort());
    expect(Object.keys(CONDITION_OWNERS).sort()).toEqual(['Completed', 'CredentialsIssued', 'Expired', 'IdentityBound', 'Ready', 'Revoked', 'Violated']);
  });

  it('splits a full status into parts that put it back together, sharing only the session record', () => {
    const c = (type: string) => ({ type, status: 'True' as const, reason: 'R', message: 'm', lastTransitionTime: 't' });
    const full: Status = {
      state: 'Bound',
      boundPods: [{ name: 'p', uid: 'u' }],
      hops: { allowed: 1, denied: 0, pending: 0 },
      violation: { hopId: 'h', rule: 'r', message: 'm' },
      completion: { pod: 'p', at: 't' },
      credentials: { sessions: [], sourceIdentity: 's', revokedAt: 't', awsDenyInPlace: true },
      conditions: [c('Ready'), c('CredentialsIssued'), c('Revoked')],
    };
    const parts = (['controller', 'journal', 'broker'] as const).map((o) => ownedStatus(o, full));
    expect(parts[0]).toEqual({ state: 'Bound', boundPods: full.boundPods, credentials: { revokedAt: 't', awsDenyInPlace: true }, conditions: [c('Ready'), c('Revoked')] });
    expect(parts[1]).toEqual({ hops: full.hops, violation: full.violation, credentials: { sessions: [], sourceIdentity: 's' }, conditions: [c('CredentialsIssued')] });
    expect(parts[2]).toEqual({ completion: full.completion, credentials: { sessions: [], sourceIdentity: 's' }, conditions: [c('CredentialsIssued')] });
  });
});
