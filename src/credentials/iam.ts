import { DeleteRolePolicyCommand, GetRolePolicyCommand, IAMClient, PutRolePolicyCommand, type IAMClientConfig } from '@aws-sdk/client-iam';

/** The only IAM calls chainwarden makes: one inline policy on each role tasks assume. */
export interface IamPort {
  getRolePolicy(roleName: string, policyName: string): Promise<string | undefined>;
  putRolePolicy(roleName: string, policyName: string, document: string): Promise<void>;
  deleteRolePolicy(roleName: string, policyName: string): Promise<void>;
}

export interface AwsIamOptions {
  region: string;
  endpoint?: string;
  credentials?: IAMClientConfig['credentials'];
}

const isNoSuchEntity = (err: unknown) => (err as { name?: string })?.name === 'NoSuchEntityException' || (err as { name?: string })?.name === 'NoSuchEntity';

export class AwsIamPort implements IamPort {
  private readonly client: IAMClient;

  constructor(options: AwsIamOptions) {
    this.client = new IAMClient({ region: options.region, endpoint: options.endpoint, credentials: options.credentials, maxAttempts: 5, retryMode: 'standard' });
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

  destroy(): void {
    this.client.destroy();
  }
}

/** IAM inline policies in memory, for unit tests. */
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
    if (document.length > 10_240) return Promise.reject(Object.assign(new Error('policy too large'), { name: 'LimitExceededException' }));
    return this.fail() ?? Promise.resolve(void this.policies.set(`${role}/${name}`, document));
  }

  deleteRolePolicy(role: string, name: string) {
    return this.fail() ?? Promise.resolve(void this.policies.delete(`${role}/${name}`));
  }
}
