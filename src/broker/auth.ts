import { createHash } from 'node:crypto';
import type { KubeConfig } from '@kubernetes/client-node';
import { createLocalJWKSet, jwtVerify, type JSONWebKeySet, type JWTPayload } from 'jose';
import type { AgentTask } from '../api/schema.js';
import { BROKER_AUDIENCE, endOf, TASK_LABEL } from '../api/task.js';
import { spiffeIdFor } from '../identity/spiffe.js';
import { errorMessage } from '../errors.js';
import { rawRequest } from '../kube/raw.js';
import type { Logger } from '../log.js';
import type { Clock } from '../runtime/clock.js';
import { ChainwardenError } from '../errors.js';

export { BROKER_AUDIENCE } from '../api/task.js';

export interface PodRecord {
  metadata?: { name?: string; namespace?: string; uid?: string; labels?: Record<string, string>; creationTimestamp?: string; deletionTimestamp?: string };
  spec?: { serviceAccountName?: string };
  status?: { phase?: string };
}

/** Lookups served from the operator's informer caches: no API round trip per request. */
export interface AgentAuthLookups {
  pod(namespace: string, name: string): PodRecord | undefined;
  task(namespace: string, name: string): AgentTask | undefined;
  /** A pod the cache does not hold yet (created a moment ago), read from the API server. */
  fetchPod?(namespace: string, name: string): Promise<PodRecord | undefined>;
  /** Why this replica refuses the task although its status does not say it ended yet (a violation recorded here, a journal that cannot write). */
  refusal?(task: AgentTask): ChainwardenError | undefined;
}

/** Who is calling: an agent pod, and the live task it is bound to. */
export interface AgentPrincipal {
  namespace: string;
  podName: string;
  podUid: string;
  serviceAccount: string;
  task: AgentTask;
  spiffeId: string;
}

interface ServiceAccountClaims extends JWTPayload {
  'kubernetes.io'?: { namespace?: string; pod?: { name?: string; uid?: string }; serviceaccount?: { name?: string } };
}

interface Verified {
  namespace: string;
  podName: string;
  podUid: string;
  serviceAccount: string;
  expiresAt: number;
}

const unauthenticated = (message: string) => new ChainwardenError('unauthenticated', message);

/**
 * Authenticates agent pods by their projected service-account token: signature against the API
 * server's published keys, issuer, audience `chainwarden`, expiry, and the pod binding. A
 * verified token is cached until it expires, so a hop pays no round trip; whether its pod still
 * exists and is bound to a live task is checked on every request against the informer caches,
 * so a deleted pod or an ended task loses access within one watch event.
 */
export class AgentAuthenticator {
  private issuer: string | undefined;
  private keys: ReturnType<typeof createLocalJWKSet> | undefined;
  private keysFetchedAt = 0;
  private readonly verified = new Map<string, Verified>();
  /** Pod UIDs known to be gone; a UID never comes back, so no second look is needed. */
  private readonly gone = new Set<string>();

  constructor(
    private readonly kc: KubeConfig,
    private readonly lookups: AgentAuthLookups,
    private readonly clock: Clock,
    private readonly log: Logger,
    /** The SPIFFE trust domain: a caller's ID is derived from the task's spec, never read back from status. */
    private readonly trustDomain: string,
    private readonly maxCached = 20_000,
  ) {}

  private async loadKeys(): Promise<void> {
    const discovery = await rawRequest(this.kc, 'GET', '/.well-known/openid-configuration');
    if (discovery.status !== 200) throw new Error(`service-account issuer discovery answered ${discovery.status}`);
    this.issuer = (discovery.body as { issuer: string }).issuer;
    const jwks = await rawRequest(this.kc, 'GET', '/openid/v1/jwks');
    if (jwks.status !== 200) throw new Error(`service-account JWKS answered ${jwks.status}`);
    this.keys = createLocalJWKSet(jwks.body as JSONWebKeySet);
    this.keysFetchedAt = this.clock.now();
  }

  private async verifySignature(token: string): Promise<ServiceAccountClaims> {
    if (!this.keys) await this.loadKeys();
    const options = {
      issuer: this.issuer,
      audience: BROKER_AUDIENCE,
      algorithms: ['RS256', 'ES256'],
      requiredClaims: ['exp'],
      currentDate: new Date(this.clock.now()),
    };
    try {
      return (await jwtVerify<ServiceAccountClaims>(token, this.keys as ReturnType<typeof createLocalJWKSet>, options)).payload;
    } catch (err) {
      // An unknown key may mean the API server rotated its keys: refetch, at most every 10 s.
      if ((err as { code?: string }).code !== 'ERR_JWKS_NO_MATCHING_KEY' || this.clock.now() - this.keysFetchedAt < 10_000) throw err;
      await this.loadKeys();
      return (await jwtVerify<ServiceAccountClaims>(token, this.keys as ReturnType<typeof createLocalJWKSet>, options)).payload;
    }
  }

  private async verifyToken(token: string): Promise<Verified> {
    let payload: ServiceAccountClaims;
    try {
      payload = await this.verifySignature(token);
    } catch (err) {
      throw unauthenticated(`the token was refused: ${errorMessage(err)}; use the pod's projected token with audience ${BROKER_AUDIENCE}`);
    }
    const k8s = payload['kubernetes.io'];
    if (!k8s?.pod?.name || !k8s.pod.uid || !k8s.namespace || !k8s.serviceaccount?.name) {
      throw unauthenticated('the token is not bound to a pod; use the projected service-account token of the agent pod');
    }
    return { namespace: k8s.namespace, podName: k8s.pod.name, podUid: k8s.pod.uid, serviceAccount: k8s.serviceaccount.name, expiresAt: (payload.exp ?? 0) * 1000 };
  }

  private async cachedVerify(token: string): Promise<Verified> {
    const key = createHash('sha256').update(token).digest('base64url');
    const hit = this.verified.get(key);
    const now = this.clock.now();
    if (hit && hit.expiresAt > now) return hit;
    if (hit) this.verified.delete(key);
    const fresh = await this.verifyToken(token);
    if (this.verified.size >= this.maxCached) {
      const oldest = this.verified.keys().next().value;
      if (oldest !== undefined) this.verified.delete(oldest);
    }
    this.verified.set(key, fresh);
    return fresh;
  }

  private async podOf(who: Verified): Promise<PodRecord | undefined> {
    const cached = this.lookups.pod(who.namespace, who.podName);
    if (cached?.metadata?.uid === who.podUid || this.gone.has(who.podUid) || !this.lookups.fetchPod) return cached;
    const fresh = await this.lookups.fetchPod(who.namespace, who.podName);
    if (fresh?.metadata?.uid !== who.podUid) {
      if (this.gone.size > 100_000) this.gone.clear();
      this.gone.add(who.podUid);
    }
    return fresh;
  }

  /** The calling agent, from an `Authorization: Bearer …` header; a coded 401 or 403 otherwise. */
  async authenticate(authorization: string | undefined): Promise<AgentPrincipal> {
    const token = /^Bearer\s+(\S+)$/i.exec(authorization ?? '')?.[1];
    if (!token) throw unauthenticated('send the pod\'s projected service-account token as "Authorization: Bearer <token>"');
    const who = await this.cachedVerify(token);
    const pod = await this.podOf(who);
    if (!pod || pod.metadata?.uid !== who.podUid || pod.metadata.deletionTimestamp) {
      throw unauthenticated(`pod ${who.namespace}/${who.podName} (${who.podUid}) no longer exists; its token is no longer accepted`);
    }
    const taskName = pod.metadata.labels?.[TASK_LABEL];
    const task = taskName ? this.lookups.task(who.namespace, taskName) : undefined;
    if (!taskName || !task) {
      throw new ChainwardenError('task_not_active', `pod ${who.podName} is not labelled with an existing AgentTask (${TASK_LABEL}=${taskName ?? ''})`);
    }
    const end = endOf(task, this.clock.now());
    if (end) throw new ChainwardenError('task_not_active', `AgentTask ${who.namespace}/${taskName} ${end.message}; it gets nothing more`);
    const refusal = this.lookups.refusal?.(task);
    if (refusal) throw refusal;
    const state = task.status?.state;
    if (!(task.status?.boundPods ?? []).some((p) => p.uid === who.podUid)) {
      throw new ChainwardenError('pod_not_bound', `pod ${who.podName} (${who.podUid}) is not bound to AgentTask ${taskName} (state ${state ?? 'Pending'}); retry once the task is Bound`);
    }
    this.log.trace({ pod: who.podName, task: taskName }, 'agent authenticated');
    return { namespace: who.namespace, podName: who.podName, podUid: who.podUid, serviceAccount: who.serviceAccount, task, spiffeId: spiffeIdFor(this.trustDomain, who.namespace, task.spec.serviceAccountName, taskName) };
  }
}
