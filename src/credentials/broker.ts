import { ConditionType, mergeConditions, Reason } from '../api/conditions.js';
import type { AgentPolicy, AgentTask } from '../api/schema.js';
import { deadlineOf, POLICY_DEFAULTS, STS_AUDIENCE } from '../api/task.js';
import type { TaskJournal } from '../audit/journal.js';
import type { AgentPrincipal } from '../broker/auth.js';
import { ChainwardenError, reasonOf } from '../errors.js';
import { spiffeIdFor } from '../identity/spiffe.js';
import type { SvidIssuer } from '../identity/svid.js';
import type { TaskClient, TaskStatusWriter } from '../kube/tasks.js';
import type { Logger } from '../log.js';
import { globMatches } from '../policy/glob.js';
import type { PermittedRoles } from './permitted.js';
import type { Clock } from '../runtime/clock.js';
import { AWS_RETRY_BASE_MS, planCredentialDuration, planAwsRetry, roleSessionName, sessionTags, sourceIdentityFor, TRANSITIVE_TAG_KEYS } from './plan.js';
import { StsError, type AwsSession, type StsPort } from './sts.js';
import type { Placeholders } from '../aws/placeholders.js';
import { faultPoint } from '../runtime/faults.js';

/** Hand out a cached session only while it has this much life left; the SDKs refresh 5 min before expiry. */
const REFRESH_MARGIN_MS = 5 * 60_000;

export interface CredentialBrokerDeps {
  sts: StsPort;
  /** The broker's status writer (field manager chainwarden-broker), for issuance failures, and Events. */
  status: Pick<TaskStatusWriter, 'update'>;
  events: Pick<TaskClient, 'recordEvent'>;
  issuer: SvidIssuer;
  policy: (namespace: string, name: string) => AgentPolicy | undefined;
  clock: Clock;
  log: Logger;
  /** The SPIFFE trust domain: a web-identity token's subject is derived from the task's spec. */
  trustDomain: string;
  /** This replica's name, recorded with each session it issues. */
  replica: string;
  /** Where sessions are recorded, with their credential_issued audit records, before they are handed out. */
  journal: Pick<TaskJournal, 'commit'>;
  /** The keys Gateway credentials are answered with; without them every credential is delivered Direct. */
  placeholders?: Placeholders;
  /** Jitter for the wait between issuances after STS failed; Math.random by default. */
  random?: () => number;
  /** The roles the cluster permits each namespace, over what its policy allows; every role by default. */
  permittedRoles?: PermittedRoles;
}

/** How long placeholder keys are good for at most: the SDK fetches them again, and a task that ended gets none. */
const PLACEHOLDER_TTL_MS = 60 * 60_000;

interface Cached {
  session: AwsSession;
  taskUid: string;
}

/** A credential STS failed to issue: until `retryAt` its fetches get the same answer without a call to STS. */
interface BackingOff {
  failures: number;
  retryAt: number;
  error: ChainwardenError;
  taskUid: string;
}

/** The longest a refused credential is answered from memory before it is asked for again. */
const REFUSED_RETRY_MAX_MS = 5_000;

/**
 * Per-task AWS sessions. Any replica can mint one; nothing secret is stored in the cluster:
 * each replica keeps what it minted in memory, and records the session (access key id, expiry,
 * name, replica; never the secret) in the task's status, through the task's journal, before
 * handing it out.
 */
export class CredentialBroker {
  private readonly cache = new Map<string, Cached>();
  private readonly inflight = new Map<string, Promise<AwsSession>>();
  private readonly backingOff = new Map<string, BackingOff>();

  constructor(private readonly deps: CredentialBrokerDeps) {}

  /** Forgets every session of a task (it ended); called on every replica from the informer. */
  drop(taskUid: string): void {
    for (const [key, entry] of this.cache) if (entry.taskUid === taskUid) this.cache.delete(key);
    for (const [key, entry] of this.backingOff) if (entry.taskUid === taskUid) this.backingOff.delete(key);
  }

  get cachedSessions(): number {
    return this.cache.size;
  }

  /**
   * What the agent gets for its credential `name`, in the container-credentials format: under
   * Gateway delivery placeholder keys its SDK signs with (the session stays here, for the
   * broker to sign with); under Direct the STS session itself.
   */
  async forAgent(who: AgentPrincipal, name: string): Promise<Record<string, string>> {
    const credential = this.credentialNamed(who.task, name);
    if (credential.aws.delivery === 'Direct' || !this.deps.placeholders) return containerCredentials(await this.credentials(who, name));
    const keys = this.deps.placeholders.of(who.task, name);
    const expiration = Math.min(deadlineOf(who.task), this.deps.clock.now() + PLACEHOLDER_TTL_MS);
    return { AccessKeyId: keys.accessKeyId, SecretAccessKey: keys.secretAccessKey, Token: keys.sessionToken, Expiration: new Date(expiration).toISOString() };
  }

  private credentialNamed(task: AgentTask, name: string) {
    const credential = task.spec.credentials?.find((c) => c.name === name);
    if (!credential) {
      const names = (task.spec.credentials ?? []).map((c) => c.name);
      throw new ChainwardenError('credential_not_found', `AgentTask ${task.metadata.namespace ?? ''}/${task.metadata.name ?? ''} requests no credential named "${name}"${names.length > 0 ? ` (it has: ${names.join(', ')})` : ''}`);
    }
    return credential;
  }

  /** The task's STS session for credential `name`, issued on first use and cached until near its expiry. */
  async credentials(who: AgentPrincipal, name: string): Promise<AwsSession> {
    const task = who.task;
    const uid = task.metadata.uid ?? '';
    const key = `${uid}/${name}`;
    const hit = this.cache.get(key);
    if (hit && hit.session.expiration.getTime() - this.deps.clock.now() > REFRESH_MARGIN_MS) return hit.session;
    let pending = this.inflight.get(key);
    if (!pending) {
      const waiting = this.backingOff.get(key);
      // Answered at once: the credential failed moments ago (STS unavailable, a refusal) and is left alone a while.
      if (waiting && waiting.retryAt > this.deps.clock.now()) throw waiting.error;
      pending = this.issue(task, name)
        .then(
          (session) => (this.backingOff.delete(key), session),
          (err: unknown) => {
            this.backOff(key, uid, err);
            throw err;
          },
        )
        .finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    const session = await pending;
    // The task may have ended while STS answered: its revocation already dropped the cache.
    this.cache.set(key, { session, taskUid: uid });
    return session;
  }

  /**
   * After an issuance failed, the next of the credential waits, longer with each failure in a row,
   * and until then the same error is the answer. While STS cannot answer, from the first failure,
   * up to 30 s. After a refusal (a role no longer allowed, STS's AccessDenied), which a fixed
   * policy or trust policy ends, the next try goes at once, and from the second refusal in a row
   * it waits, up to 5 s: an agent or SDK asking in a loop costs no STS call, task read or Event
   * each time.
   */
  private backOff(key: string, taskUid: string, err: unknown): void {
    if (!(err instanceof ChainwardenError)) return void this.backingOff.delete(key);
    const now = this.deps.clock.now();
    const before = this.backingOff.get(key);
    // Failures in a row: a refusal long after the last starts the count again.
    const failures = before && now - before.retryAt < REFUSED_RETRY_MAX_MS * 6 ? before.failures + 1 : 1;
    const unavailable = err.code === 'sts_unavailable';
    const retryAt = now + (unavailable ? planAwsRetry(failures, this.deps.random) : failures > 1 ? planAwsRetry(failures - 1, this.deps.random, AWS_RETRY_BASE_MS, REFUSED_RETRY_MAX_MS) : 0);
    this.backingOff.set(key, { failures, retryAt, error: err, taskUid });
    if (unavailable) this.deps.log.info({ credential: key, failures, retryInMs: retryAt - this.deps.clock.now() }, 'STS unavailable: the credential is not asked for again until the wait is over');
  }

  private async issue(task: AgentTask, name: string): Promise<AwsSession> {
    const { namespace = '', name: taskName = '' } = task.metadata;
    const credential = this.credentialNamed(task, name);
    const policy = this.deps.policy(namespace, task.spec.policyRef.name);
    const allowed = policy?.spec.aws?.allowedRoleArns ?? [];
    if (!policy || !allowed.some((g) => globMatches(g, credential.aws.roleArn))) {
      const message = policy ? `${credential.aws.roleArn} is no longer allowed by AgentPolicy ${policy.metadata.name ?? ''}` : `AgentPolicy ${task.spec.policyRef.name} does not exist`;
      throw await this.failed(task, new ChainwardenError('role_not_allowed', message));
    }
    // Admission refuses such a task; this holds for one admitted before the admins narrowed the roles.
    const permitted = this.deps.permittedRoles;
    if (permitted && !permitted.permits(namespace, credential.aws.roleArn)) throw await this.failed(task, new ChainwardenError('role_not_allowed', permitted.refusal(namespace, credential.aws.roleArn)));
    const now = this.deps.clock.now();
    const request = {
      roleArn: credential.aws.roleArn,
      roleSessionName: roleSessionName(task, name),
      durationSeconds: planCredentialDuration({ deadline: deadlineOf(task), now, requested: credential.aws.duration, policyMax: policy.spec.aws?.maxDuration ?? POLICY_DEFAULTS.maxDuration }),
      sourceIdentity: sourceIdentityFor(task),
      tags: sessionTags(task, credential.aws),
      transitiveTagKeys: TRANSITIVE_TAG_KEYS,
      policy: credential.aws.sessionPolicy,
      webIdentityToken: credential.aws.webIdentity ? this.webIdentityToken(task, credential.aws) : undefined,
    };
    let session: AwsSession;
    try {
      session = await this.deps.sts.assume(request);
    } catch (err) {
      if (!(err instanceof StsError)) throw err;
      this.deps.log.warn({ task: `${namespace}/${taskName}`, code: err.code, awsCode: err.awsCode, detail: err.detail }, 'STS refused a session');
      throw await this.failed(task, new ChainwardenError(err.code, err.message));
    }
    faultPoint('issue.after-sts');
    await this.record(task, name, request, session);
    faultPoint('issue.after-record');
    this.deps.log.info(
      { event: 'credential_issued', task: `${namespace}/${taskName}`, credential: name, accessKeyId: session.accessKeyId, expiration: session.expiration.toISOString(), durationSeconds: request.durationSeconds },
      'AWS session issued',
    );
    return session;
  }

  /**
   * The JWT-SVID for AssumeRoleWithWebIdentity. It carries the task's source identity and
   * session tags as the claims AWS reads from an OIDC token, so the revocation deny on the role
   * (keyed on aws:SourceIdentity) matches these sessions as it matches AssumeRole's.
   */
  private webIdentityToken(task: AgentTask, aws: NonNullable<AgentTask['spec']['credentials']>[number]['aws']): string {
    const { namespace = '', name = '' } = task.metadata;
    const tags = sessionTags(task, aws);
    const claims = {
      'https://aws.amazon.com/source_identity': sourceIdentityFor(task),
      'https://aws.amazon.com/tags': { principal_tags: Object.fromEntries(Object.entries(tags).map(([k, v]) => [k, [v]])), transitive_tag_keys: TRANSITIVE_TAG_KEYS },
    };
    const spiffeId = spiffeIdFor(this.deps.trustDomain, namespace, task.spec.serviceAccountName, name);
    return this.deps.issuer.mint(spiffeId, STS_AUDIENCE, undefined, claims).token;
  }

  /**
   * Records the session in status, with its audit record and whatever the task's journal has
   * queued, in one write; refuses to hand it out if the task ended meanwhile.
   */
  private async record(task: AgentTask, credential: string, request: { roleArn: string; roleSessionName: string; sourceIdentity: string; durationSeconds: number }, session: AwsSession): Promise<void> {
    const { namespace = '', name = '' } = task.metadata;
    const issuedAt = new Date(this.deps.clock.now()).toISOString();
    const expiration = session.expiration.toISOString();
    const { roleArn, roleSessionName: sessionName, sourceIdentity, durationSeconds } = request;
    const written = await this.deps.journal.commit(task, {
      sessions: [
        {
          taskUid: task.metadata.uid ?? '',
          session: { credential, accessKeyId: session.accessKeyId, expiration, sessionName, issuedBy: this.deps.replica, issuedAt },
          sourceIdentity,
          event: { type: 'credential_issued', at: issuedAt, data: { credential, roleArn, accessKeyId: session.accessKeyId, expiration, sessionName, sourceIdentity, durationSeconds, replica: this.deps.replica } },
        },
      ],
    });
    const recorded = written?.status?.credentials?.sessions?.some((s) => s.accessKeyId === session.accessKeyId);
    if (!recorded) {
      // Not recorded, not handed out. The task's revocation denies its marker on the role, so this session is dead too.
      throw new ChainwardenError('task_not_active', `AgentTask ${namespace}/${name} ended before its credentials could be recorded`);
    }
  }

  /** Shows an issuance failure on the task (condition and Event), then returns the error for the caller to throw. */
  private async failed(task: AgentTask, error: ChainwardenError): Promise<ChainwardenError> {
    const { namespace = '', name = '' } = task.metadata;
    const reason: Reason = reasonOf(error.code) ?? Reason.AssumeRoleFailed;
    const now = new Date(this.deps.clock.now()).toISOString();
    try {
      let changed = false;
      const written = await this.deps.status.update(namespace, name, (current) => {
        const was = current.status?.conditions?.find((c) => c.type === ConditionType.CredentialsIssued);
        changed = !(was?.status === 'False' && was.reason === reason && was.message === error.message);
        if (!changed) return undefined;
        return { ...current.status, conditions: mergeConditions(current.status?.conditions, [{ type: ConditionType.CredentialsIssued, status: 'False', reason, message: error.message }], now, current.metadata.generation) };
      });
      // The broker saw the failure, so it reports it, once while the condition says so; lifecycle Events are the controller's.
      if (written && changed) await this.deps.events.recordEvent(written, 'Warning', reason, error.message);
    } catch (err) {
      this.deps.log.warn({ err, task: `${namespace}/${name}` }, 'could not record the credential failure on the task');
    }
    return error;
  }
}

/** The AWS container-credentials answer every SDK understands. */
export function containerCredentials(session: AwsSession): Record<string, string> {
  return {
    AccessKeyId: session.accessKeyId,
    SecretAccessKey: session.secretAccessKey,
    Token: session.sessionToken,
    Expiration: session.expiration.toISOString(),
  };
}

