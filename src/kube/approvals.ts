import { API_VERSION, GROUP, VERSION, type AgentApproval } from '../api/schema.js';
import { APPROVAL_USED_BY } from '../broker/gateway-hops.js';
import { patchJson, type JsonPatchOperation, type ObjectRef } from '../runtime/apply.js';
import type { KubeAccess } from './access.js';
import { rawRequest } from './raw.js';

/** How many fresh reads a claim or its release tries before it gives up (a lost race reads again). */
const ATTEMPTS = 3;
const MARK = `/metadata/annotations/${APPROVAL_USED_BY.replace('/', '~1')}`;

function refOf(approval: AgentApproval): ObjectRef {
  const { namespace = '', name = '' } = approval.metadata;
  return { path: `/apis/${GROUP}/${VERSION}/namespaces/${namespace}/agentapprovals/${name}`, apiVersion: API_VERSION, kind: 'AgentApproval', namespace, name };
}

/**
 * Read fresh, `change` the approval as found (undefined: nothing to do, false), then a JSON patch
 * conditional on the version read: of writers racing on any replicas exactly one wins, and a lost
 * race reads again.
 */
async function conditionally(kc: KubeAccess, approval: AgentApproval, change: (current: AgentApproval) => JsonPatchOperation | undefined): Promise<boolean> {
  const ref = refOf(approval);
  for (let attempt = 0; attempt < ATTEMPTS; attempt++) {
    const res = await rawRequest(kc, 'GET', ref.path);
    if (res.status !== 200) return false;
    const current = res.body as AgentApproval;
    const op = change(current);
    if (!op) return false;
    const outcome = await patchJson(kc, ref, [{ op: 'test', path: '/metadata/resourceVersion', value: current.metadata.resourceVersion }, op]);
    if (outcome === 'written') return true;
    if (outcome === 'gone') return false;
  }
  return false;
}

/** Marks an approval used by one call (`by`), if no call has used it yet: true for the one caller that wins, on any replica. */
export function claimApproval(kc: KubeAccess, approval: AgentApproval, by: string): Promise<boolean> {
  return conditionally(kc, approval, (current) => {
    if (current.metadata.annotations?.[APPROVAL_USED_BY]) return undefined;
    return current.metadata.annotations ? { op: 'add', path: MARK, value: by } : { op: 'add', path: '/metadata/annotations', value: { [APPROVAL_USED_BY]: by } };
  });
}

/**
 * Unmarks an approval claimed for a call that did not go through, if it is still marked as
 * claimed for that call (`by`, as claimed): the next try of the same call may use it. An approval
 * another call claimed, or one unmarked meanwhile, is left as it is.
 */
export function releaseApproval(kc: KubeAccess, approval: AgentApproval, by: string): Promise<boolean> {
  return conditionally(kc, approval, (current) => (current.metadata.annotations?.[APPROVAL_USED_BY] === by ? { op: 'remove', path: MARK } : undefined));
}
