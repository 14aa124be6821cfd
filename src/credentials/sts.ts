import { AssumeRoleCommand, AssumeRoleWithWebIdentityCommand, STSClient, STSServiceException, type Credentials, type STSClientConfig } from '@aws-sdk/client-sts';
import { ChainwardenError } from '../errors.js';

/** Everything one STS call for a task carries. */
export interface SessionRequest {
  roleArn: string;
  roleSessionName: string;
  durationSeconds: number;
  sourceIdentity: string;
  tags: Record<string, string>;
  transitiveTagKeys: string[];
  policy?: string;
  /** Set: AssumeRoleWithWebIdentity with this JWT-SVID. Unset: AssumeRole with the operator's identity. */
  webIdentityToken?: string;
}

export interface AwsSession {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken: string;
  expiration: Date;
  assumedRoleArn?: string;
}

/** The only STS calls chainwarden makes. */
export interface StsPort {
  assume(request: SessionRequest): Promise<AwsSession>;
}

/** STS failures, sorted by what a person can do about them. */
export type StsErrorCode = 'role_not_assumable' | 'sts_limits_exceeded' | 'sts_unavailable';

export class StsError extends ChainwardenError {
  constructor(
    code: StsErrorCode,
    message: string,
    readonly awsCode: string,
    /** STS's own words, for the operator's log only: they name the operator's identity. */
    readonly detail?: string,
  ) {
    super(code, message);
    this.name = 'StsError';
  }
}

/**
 * STS's messages name the caller ("User: arn:aws:sts::111122223333:assumed-role/chainwarden/…
 * is not authorized"): the operator's own role and account. Those reach the agent and the
 * task's status, so every ARN and account id but the role the task asked for is replaced.
 */
export function scrubOperatorIdentity(message: string, roleArn: string): string {
  const account = /^arn:aws[a-z-]*:iam::(\d{12}):/.exec(roleArn)?.[1];
  return message
    .replace(/arn:aws[a-z-]*:[a-z0-9-]*:[a-z0-9-]*:\d{12}:[^\s,;'"()]+/g, (arn) => (arn === roleArn ? arn : '<operator identity>'))
    .replace(/\b\d{12}\b/g, (id) => (id === account ? id : '<account>'));
}

/** Maps an STS error to what it means for the task; never to a retry with broader credentials. */
export function classifyStsError(err: unknown, roleArn: string): StsError {
  const name = err instanceof STSServiceException ? err.name : (err as { name?: string })?.name ?? 'Error';
  const raw = err instanceof Error ? err.message : String(err);
  const message = scrubOperatorIdentity(raw, roleArn);
  // The SDK names modelled errors with an Exception suffix (InvalidIdentityTokenException); the wire codes have none.
  const code = name.replace(/Exception$/, '');
  if (['AccessDenied', 'InvalidIdentityToken', 'IDPRejectedClaim', 'ExpiredToken', 'NoSuchEntity'].includes(code)) {
    return new StsError('role_not_assumable', `STS refused to let chainwarden assume ${roleArn} (${name}: ${message}); check the role's trust policy allows chainwarden's identity and sts:SetSourceIdentity and sts:TagSession`, name, raw);
  }
  if (['PackedPolicyTooLarge', 'ValidationError', 'MalformedPolicyDocument', 'RegionDisabled'].includes(code)) {
    return new StsError('sts_limits_exceeded', `STS rejected the request for ${roleArn} (${name}: ${message}); shorten the session policy or tags, or lower the duration to the role's maximum session duration`, name, raw);
  }
  return new StsError('sts_unavailable', `STS did not issue credentials for ${roleArn} (${name}: ${message}); retrying with backoff`, name, raw);
}

const toSession = (c: Credentials | undefined, assumedRoleArn?: string): AwsSession => {
  if (!c?.AccessKeyId || !c.SecretAccessKey || !c.SessionToken || !c.Expiration) throw new Error('STS answered without credentials');
  return { accessKeyId: c.AccessKeyId, secretAccessKey: c.SecretAccessKey, sessionToken: c.SessionToken, expiration: c.Expiration, assumedRoleArn };
};

export interface AwsStsOptions {
  region: string;
  endpoint?: string;
  /** The operator's base identity; the default AWS credential chain when absent. */
  credentials?: STSClientConfig['credentials'];
  /** Attempts per call; the SDK's standard retry backs off on throttling and 5xx. */
  maxAttempts?: number;
  /** How long one attempt may take before it is abandoned and retried. */
  attemptTimeoutMs?: number;
}

/**
 * STS answers in well under a second. Without a limit the SDK waits up to its 5-minute socket
 * timeout, and every fetch of the task's credentials waits with it, even after STS has healed.
 */
export const STS_ATTEMPT_TIMEOUT_MS = 5_000;

/** STS through the AWS SDK. Throttling and 5xx are retried with backoff by the SDK; then the call fails. */
export class AwsStsPort implements StsPort {
  private readonly client: STSClient;

  constructor(options: AwsStsOptions) {
    this.client = new STSClient({
      region: options.region,
      endpoint: options.endpoint,
      credentials: options.credentials,
      // An agent's fetch waits for these: three keep it within a few seconds even under throttling
      // (five waited up to 15 s, past every SDK's credential timeout). Between fetches the broker backs off itself.
      maxAttempts: options.maxAttempts ?? 3,
      retryMode: 'standard',
      // An abandoned attempt is a TimeoutError, which the standard retry retries; only an error can end it.
      requestHandler: { requestTimeout: options.attemptTimeoutMs ?? STS_ATTEMPT_TIMEOUT_MS, throwOnRequestTimeout: true },
    });
  }

  async assume(request: SessionRequest): Promise<AwsSession> {
    const common = {
      RoleArn: request.roleArn,
      RoleSessionName: request.roleSessionName,
      DurationSeconds: request.durationSeconds,
      Policy: request.policy,
    };
    try {
      if (request.webIdentityToken) {
        // Web identity: the role's OIDC trust brings the tags and source identity from the token's claims.
        const answer = await this.client.send(new AssumeRoleWithWebIdentityCommand({ ...common, WebIdentityToken: request.webIdentityToken }));
        return toSession(answer.Credentials, answer.AssumedRoleUser?.Arn);
      }
      const answer = await this.client.send(
        new AssumeRoleCommand({
          ...common,
          SourceIdentity: request.sourceIdentity,
          Tags: Object.entries(request.tags).map(([Key, Value]) => ({ Key, Value })),
          TransitiveTagKeys: request.transitiveTagKeys,
        }),
      );
      return toSession(answer.Credentials, answer.AssumedRoleUser?.Arn);
    } catch (err) {
      throw classifyStsError(err, request.roleArn);
    }
  }

  destroy(): void {
    this.client.destroy();
  }
}

/** An STS twin for unit tests: records every request, answers from a counter, fails on demand. */
export class InMemorySts implements StsPort {
  readonly requests: SessionRequest[] = [];
  private failures: unknown[] = [];
  private n = 0;

  constructor(private readonly now: () => number = Date.now) {}

  failNext(err: unknown): void {
    this.failures.push(err);
  }

  assume(request: SessionRequest): Promise<AwsSession> {
    this.requests.push(structuredClone(request));
    const failure = this.failures.shift();
    if (failure) return Promise.reject(classifyStsError(failure, request.roleArn));
    this.n++;
    return Promise.resolve({
      accessKeyId: `ASIATWIN${String(this.n).padStart(12, '0')}`,
      secretAccessKey: `twin-secret-${this.n}-${Math.random().toString(36).slice(2)}`,
      sessionToken: `twin-token-${this.n}`,
      expiration: new Date(this.now() + request.durationSeconds * 1000),
      assumedRoleArn: `${request.roleArn.replace(':iam::', ':sts::').replace(':role/', ':assumed-role/')}/${request.roleSessionName}`,
    });
  }
}
