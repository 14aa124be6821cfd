import { DeleteRolePolicyCommand, GetRolePolicyCommand, IAMClient, paginateListRolePolicies, PutRolePolicyCommand, type IAMClientConfig } from '@aws-sdk/client-iam';

/** IAM's limit for all inline policies of one role, together. */
export const ROLE_INLINE_POLICIES_MAX_CHARS = 10_240;

/** A policy's size as IAM counts it against the role's limit: white space does not count. */
export const policySize = (document: string): number => document.replace(/\s/g, '').length;

/** The only IAM calls chainwarden makes: one inline policy on each role tasks assume, and the size of the others. */
export interface IamPort {
  getRolePolicy(roleName: string, policyName: string): Promise<string | undefined>;
  putRolePolicy(roleName: string, policyName: string, document: string): Promise<void>;
  deleteRolePolicy(roleName: string, policyName: string): Promise<void>;
  /** The names of every inline policy of the role (all pages). */
  listRolePolicies(roleName: string): Promise<string[]>;
}

export interface AwsIamOptions {
  region: string;
  endpoint?: string;
  credentials?: IAMClientConfig['credentials'];
  /** How long one attempt may take before it is abandoned and retried. */
  attemptTimeoutMs?: number;
}

/**
 * Without a limit the SDK waits up to its 5-minute socket timeout for an answer IAM holds back,
 * and the controller worker writing the deny waits with it: the deny, and every other task that
 * worker would reconcile, stall. An abandoned attempt is retried by the SDK, then by the work queue.
 */
export const IAM_ATTEMPT_TIMEOUT_MS = 10_000;

export const isNoSuchEntity = (err: unknown) => (err as { name?: string })?.name === 'NoSuchEntityException' || (err as { name?: string })?.name === 'NoSuchEntity';

export class AwsIamPort implements IamPort {
  private readonly client: IAMClient;

  constructor(options: AwsIamOptions) {
    this.client = new IAMClient({
      region: options.region,
      endpoint: options.endpoint,
      credentials: options.credentials,
      maxAttempts: 5,
      retryMode: 'standard',
      requestHandler: { requestTimeout: options.attemptTimeoutMs ?? IAM_ATTEMPT_TIMEOUT_MS, throwOnRequestTimeout: true },
    });
  }

  async getRolePolicy(RoleName: string, PolicyName: string): Promise<string | undefined> {
    try {
      const answer = await this.client.send(new GetRolePolicyCommand({ RoleName, PolicyName }));
      // IAM returns the document URL-encoded.
      return answer.PolicyDocument ? decodeURIComponent(answer.PolicyDocument) : undefined;
    } catch (err) {
      if (isNoSuchEntity(err)) return undefined;
      throw err;
    }
  }

  async putRolePolicy(RoleName: string, PolicyName: string, PolicyDocument: string): Promise<void> {
    await this.client.send(new PutRolePolicyCommand({ RoleName, PolicyName, PolicyDocument }));
  }

  async deleteRolePolicy(RoleName: string, PolicyName: string): Promise<void> {
    try {
      await this.client.send(new DeleteRolePolicyCommand({ RoleName, PolicyName }));
    } catch (err) {
      if (!isNoSuchEntity(err)) throw err;
    }
  }

  async listRolePolicies(RoleName: string): Promise<string[]> {
    const names: string[] = [];
    for await (const page of paginateListRolePolicies({ client: this.client }, { RoleName })) names.push(...(page.PolicyNames ?? []));
    return names;
  }

  destroy(): void {
    this.client.destroy();
  }
}

/** IAM inline policies in memory, for unit tests. Like IAM, it refuses a put that takes the role's inline policies past their shared limit. */
export class InMemoryIam implements IamPort {
  readonly policies = new Map<string, string>();
  private failures: unknown[] = [];

  failNext(err: unknown): void {
    this.failures.push(err);
  }

  private fail(): Promise<never> | undefined {
    const f = this.failures.shift();
    return f ? Promise.reject(f instanceof Error ? f : new Error('injected failure')) : undefined;
  }

  getRolePolicy(role: string, name: string) {
    return this.fail() ?? Promise.resolve(this.policies.get(`${role}/${name}`));
  }

  putRolePolicy(role: string, name: string, document: string) {
    const others = [...this.policies].filter(([key]) => key.startsWith(`${role}/`) && key !== `${role}/${name}`).reduce((sum, [, doc]) => sum + policySize(doc), 0);
    if (others + policySize(document) > ROLE_INLINE_POLICIES_MAX_CHARS) return Promise.reject(Object.assign(new Error(`Maximum policy size of ${ROLE_INLINE_POLICIES_MAX_CHARS} bytes exceeded for role ${role}`), { name: 'LimitExceededException' }));
    return this.fail() ?? Promise.resolve(void this.policies.set(`${role}/${name}`, document));
  }

  deleteRolePolicy(role: string, name: string) {
    return this.fail() ?? Promise.resolve(void this.policies.delete(`${role}/${name}`));
  }

  listRolePolicies(role: string) {
    return this.fail() ?? Promise.resolve([...this.policies.keys()].filter((key) => key.startsWith(`${role}/`)).map((key) => key.slice(role.length + 1)).sort());
  }
}
