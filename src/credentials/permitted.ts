import { ChainwardenError } from '../errors.js';
import { scrubSecrets } from '../log.js';
import { globMatches } from '../policy/glob.js';

const NAMESPACE = '{namespace}';

/**
 * The roles the cluster permits each namespace's tasks, whatever their AgentPolicy allows. An
 * AgentPolicy is its namespace's own, written by the tenant, while the operator's identity can
 * assume every role that trusts it, other tenants' among them; these globs, the operator's
 * flags, are what a cluster admin sets over all of them. `{namespace}` in a glob stands for the
 * task's namespace (`arn:aws:iam::111122223333:role/{namespace}-*`). None given: every role, and
 * each policy alone decides.
 */
export class PermittedRoles {
  constructor(readonly globs: readonly string[] = []) {}

  permits(namespace: string, roleArn: string): boolean {
    return this.globs.length === 0 || this.globs.some((glob) => globMatches(glob.replaceAll(NAMESPACE, namespace), roleArn));
  }

  /** Why `roleArn` is refused to a task of `namespace`, naming what is permitted and who sets it. */
  refusal(namespace: string, roleArn: string): string {
    const permitted = this.globs.map((glob) => glob.replaceAll(NAMESPACE, namespace)).join(', ');
    return `${roleArn} is not among the roles this cluster permits tasks of namespace ${namespace} (${permitted}); use one of those, or ask the cluster's admins, who set them with the operator's --permitted-role-arn (the chart's aws.permittedRoleArns)`;
  }
}

/** One `--permitted-role-arn`: a glob over IAM role ARNs, `{namespace}` its only placeholder. */
export function parsePermittedRoleArn(text: string): string {
  const placeholders = text.replaceAll(NAMESPACE, '');
  if (!/^arn:[^:]*:iam::[^:]*:role\//.test(text) || /[{}]/.test(placeholders)) {
    throw new ChainwardenError(
      'usage',
      `--permitted-role-arn takes a glob over IAM role ARNs, with {namespace} for the task's namespace, e.g. arn:aws:iam::111122223333:role/{namespace}-* (got "${scrubSecrets(text)}")`,
    );
  }
  return text;
}
