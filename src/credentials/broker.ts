import { ConditionType, mergeConditions, Reason } from '../api/conditions.js';
import { MAX_RECORDED_SESSIONS, type AgentPolicy, type AgentTask, type AgentTaskStatus } from '../api/schema.js';
import type { AgentPrincipal } from '../broker/auth.js';
import { deadlineOf, isTerminal } from '../controllers/agenttask/decide.js';
import type { SvidIssuer } from '../identity/svid.js';
import type { TaskWriter } from '../kube/tasks.js';
import type { TaskJournal } from '../audit/journal.js';

/** The two task writes the broker makes; TaskWriter in the operator, a twin in unit tests. */
export type TaskStatusWriter = Pick<TaskWriter, 'updateStatus' | 'recordEvent'>;
import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';
import { HttpError } from '../server/http.js';
import { planCredentialDuration, roleSessionName, sessionTags, sourceIdentityFor, TRANSITIVE_TAG_KEYS } from './plan.js';
import { StsError, type AwsSession, type StsPort } from './sts.js';
import { globMatches } from '../policy/glob.js';
import { POLICY_DEFAULTS } from '../admission/plugins/agenttask.js';

/** Hand out a cached session only while it has this much life left; the SDKs refresh 5 min before expiry. */
const REFRESH_MARGIN_MS = 5 * 60_000;
/** The audience of the JWT-SVID presented to AssumeRoleWithWebIdentity. */
export const STS_AUDIENCE = 'sts.amazonaws.com';

export interface CredentialBrokerDeps {
  sts: StsPort;
  writer: TaskStatusWriter;
  issuer: SvidIssuer;
  policy: (namespace: string, name: string) => AgentPolicy | undefined;
  clock: Clock;
  log: Logger;
  /** This replica's name, recorded with each session it issues. */
  replica: string;
  /** Where the credential_issued audit records go. */
  journal?: Pick<TaskJournal, 'record'>;
}

interface Cached {
  session: AwsSession;
  taskUid: string;
}

const reasonFor: Record<string, Reason> = {
  role_not_assumable: Reason.AssumeRoleFailed,
  sts_limits_exceeded: Reason.StsLimitExceeded,
  sts_unavailable: Reason.StsUnavailable,
};
const statusFor: Record<string, number> = { role_not_assumable: 403, sts_limits_exceeded: 422, sts_unavailable: 503 };

/**
 * Per-task AWS sessions. Any replica can mint one; nothing secret is stored in the cluster:
 * each replica keeps what it minted in memory, and records the session (access key id, expiry,
 * name, replica; never the secret) in the task's status before handing it out.
 */
export class CredentialBroker {
  private readonly cache = new Map<string, Cached>();
  private readonly inflight = new Map<string, Promise<AwsSession>>();

  constructor(private readonly deps: CredentialBrokerDeps) {}

  /** Forgets every session of a task (it ended); called on every replica from the informer. */
  drop(taskUid: string): void {
    for (const [key, entry] of this.cache) if (entry.taskUid === taskUid) this.cache.delete(key);
  }

  get cachedSessions(): number {
    return this.cache.size;
  }

  async credentials(who: AgentPrincipal, name: string): Promise<AwsSession> {
    const task = who.task;
    const uid = task.metadata.uid ?? '';
    const key = `${uid}/${name}`;
    const hit = this.cache.get(key);
    if (hit && hit.session.expiration.getTime() - this.deps.clock.now() > REFRESH_MARGIN_MS) return hit.session;
    let pending = this.inflight.get(key);
    if (!pending) {
      pending = this.issue(task, name).finally(() => this.inflight.delete(key));
      this.inflight.set(key, pending);
    }
    const session = await pending;
    // The task may have ended while STS answered: its revocation already dropped the cache.
    this.cache.set(key, { session, taskUid: uid });
    return session;
  }

  private async issue(task: AgentTask, name: string): Promise<AwsSession> {
    const { namespace = '', name: taskName = '' } = task.metadata;
    const credential = task.spec.credentials?.find((c) => c.name === name);
    if (!credential) {
      const known = (task.spec.credentials ?? []).map((c) => c.name);
      throw new HttpError(404, 'credential_not_found', `AgentTask ${namespace}/${taskName} requests no credential named "${name}"${known.length ? ` (it has: ${known.join(', ')})` : ''}`);
    }
    const policy = this.deps.policy(namespace, task.spec.policyRef.name);
    const allowed = policy?.spec.aws?.allowedRoleArns ?? [];
    if (!policy || !allowed.some((g) => globMatches(g, credential.aws.roleArn))) {
      const message = policy ? `${credential.aws.roleArn} is no longer allowed by AgentPolicy ${policy.metadata.name ?? ''}` : `AgentPolicy ${task.spec.policyRef.name} does not exist`;
      await this.recordFailure(task, Reason.RoleNotAllowed, message);
      throw new HttpError(403, 'role_not_allowed', message);
    }
    const now = this.deps.clock.now();
    const request = {
      roleArn: credential.aws.roleArn,
      roleSessionName: roleSessionName(task, name),
      durationSeconds: planCredentialDuration({ deadline: deadlineOf(task), now, requested: credential.aws.duration, policyMax: policy.spec.aws?.maxDuration ?? POLICY_DEFAULTS.maxDuration }),
      sourceIdentity: sourceIdentityFor(task),
      tags: sessionTags(task, credential.aws),
      transitiveTagKeys: TRANSITIVE_TAG_KEYS,
      policy: credential.aws.sessionPolicy,
      webIdentityToken: credential.aws.webIdentity ? (await this.deps.issuer.mint(task.status?.spiffeID ?? '', STS_AUDIENCE)).token : undefined,
    };
    let session: AwsSession;
    try {
      session = await this.deps.sts.assume(request);
    } catch (err) {
      if (!(err instanceof StsError)) throw err;
      await this.recordFailure(task, reasonFor[err.code] ?? Reason.AssumeRoleFailed, err.message);
      throw new HttpError(statusFor[err.code] ?? 502, err.code, err.message);
    }
    await this.record(task, name, request.roleSessionName, request.sourceIdentity, session);
    this.deps.journal?.record(namespace, taskName, {
      events: [
        {
          type: 'credential_issued',
          at: new Date(this.deps.clock.now()).toISOString(),
          data: { credential: name, roleArn: request.roleArn, accessKeyId: session.accessKeyId, expiration: session.expiration.toISOString(), sessionName: request.roleSessionName, sourceIdentity: request.sourceIdentity, durationSeconds: request.durationSeconds, replica: this.deps.replica },
        },
      ],
    });
    this.deps.log.info(
      { event: 'credential_issued', task: `${namespace}/${taskName}`, credential: name, accessKeyId: session.accessKeyId, expiration: session.expiration.toISOString(), durationSeconds: request.durationSeconds },
      'AWS session issued',
    );
    return session;
  }

  /** Writes the session into status; refuses to hand it out if the task ended meanwhile. */
  private async record(task: AgentTask, credential: string, sessionName: string, sourceIdentity: string, session: AwsSession): Promise<void> {
    const { namespace = '', name = '' } = task.metadata;
    const issuedAt = new Date(this.deps.clock.now()).toISOString();
    const expiration = session.expiration.toISOString();
    const written = await this.deps.writer.updateStatus(namespace, name, (current) => {
      if (isTerminal(current.status?.state) || current.metadata.uid !== task.metadata.uid) return undefined;
      const before = current.status?.credentials;
      const latest = before?.expiration && before.expiration > expiration ? before.expiration : expiration;
      const status: AgentTaskStatus = {
        ...current.status,
        credentials: {
          ...before,
          sourceIdentity,
          expiration: latest,
          sessions: [...(before?.sessions ?? []), { credential, accessKeyId: session.accessKeyId, expiration, sessionName, issuedBy: this.deps.replica, issuedAt }].slice(-MAX_RECORDED_SESSIONS),
        },
        conditions: mergeConditions(
          current.status?.conditions,
          [{ type: ConditionType.CredentialsIssued, status: 'True', reason: Reason.Issued, message: `session ${session.accessKeyId} (${credential}) valid until ${expiration}` }],
          issuedAt,
          current.metadata.generation,
        ),
      };
      return status;
    });
    const recorded = written?.status?.credentials?.sessions?.some((s) => s.accessKeyId === session.accessKeyId);
    if (!recorded) {
      // Not recorded, not handed out. The task's revocation denies its marker on the role, so this session is dead too.
      throw new HttpError(403, 'task_not_active', `AgentTask ${namespace}/${name} ended before its credentials could be recorded`);
    }
  }

  private async recordFailure(task: AgentTask, reason: Reason, message: string): Promise<void> {
    const { namespace = '', name = '' } = task.metadata;
    const now = new Date(this.deps.clock.now()).toISOString();
    try {
      const written = await this.deps.writer.updateStatus(namespace, name, (current) => {
        const was = current.status?.conditions?.find((c) => c.type === ConditionType.CredentialsIssued);
        if (was?.status === 'False' && was.reason === reason && was.message === message) return undefined;
        return { ...current.status, conditions: mergeConditions(current.status?.conditions, [{ type: ConditionType.CredentialsIssued, status: 'False', reason, message }], now, current.metadata.generation) };
      });
      if (written) await this.deps.writer.recordEvent(written, 'Warning', reason, message);
    } catch (err) {
      this.deps.log.warn({ err, task: `${namespace}/${name}` }, 'could not record the credential failure on the task');
    }
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

