import { ChainwardenError } from '../errors.js';

const TRUST_DOMAIN = /^[a-z0-9._-]+$/;

export function assertTrustDomain(trustDomain: string): void {
  if (!TRUST_DOMAIN.test(trustDomain)) {
    throw new ChainwardenError('invalid_trust_domain', `trust domain "${trustDomain}" must be lowercase letters, digits, ".", "_" and "-" (e.g. cluster.local)`, { field: 'trustDomain' });
  }
}

/** The task's SPIFFE ID: spiffe://<trust-domain>/ns/<ns>/sa/<sa>/task/<task>. */
export function spiffeIdFor(trustDomain: string, namespace: string, serviceAccount: string, task: string): string {
  return `spiffe://${trustDomain}/ns/${namespace}/sa/${serviceAccount}/task/${task}`;
}
