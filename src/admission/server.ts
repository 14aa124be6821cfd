import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import { errorMessage } from '../errors.js';
import { parseJson, readBody, sendError, sendJson } from '../server/http.js';
import type { ListenerLimits } from '../server/https.js';
import { ChainwardenError } from '../errors.js';
import type { AdmissionPlugin, AdmissionRequest, JsonPatchOperation, Verdict } from './review.js';

/**
 * An UPDATE's review carries the old and the new object. etcd keeps objects up to 1.5 MiB, and
 * the JSON the API server sends of a protobuf-stored pod can be somewhat larger than what it
 * stores: two of them and the envelope fit in 4 MiB. Larger is a 413 before it is read whole.
 */
export const MAX_REVIEW_BYTES = 4 * 1024 * 1024;

/**
 * The deepest an admission review may nest. The objects we review have fixed schemas: the
 * deepest pod field is about 12 levels down, its managedFields mirror that with a level more
 * per list key, and the review adds 3; 100 leaves room for all of it and is far from where code
 * that walks a value recursively (deep equality of old and new spec, JSON.stringify) overflows.
 */
export const MAX_REVIEW_DEPTH = 100;

/**
 * Bounds on the webhook listener's clients: the API server sends a review at once and gives up
 * on a webhook after its timeoutSeconds (at most 30), so a request still arriving after that is
 * no API server's, and holding its connection helps no one.
 */
export const WEBHOOK_LISTENER_LIMITS: ListenerLimits = { headersTimeoutMs: 10_000, requestTimeoutMs: 30_000 };

const OPERATIONS: readonly string[] = ['CREATE', 'UPDATE', 'DELETE', 'CONNECT'];

export interface AdmissionChains {
  /** Called by the ValidatingWebhookConfiguration at /validate. */
  validate: AdmissionPlugin[];
  /** Called by the MutatingWebhookConfiguration at /mutate. */
  mutate: AdmissionPlugin[];
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const invalidReview = (field: string, message: string) => new ChainwardenError('invalid_admission_review', `AdmissionReview.${field} ${message}`, { field });

/**
 * An AdmissionReview from its body: bounded in depth before it is parsed, then checked for the
 * fields the plugins rely on, so that a malformed review is a 400 saying what is wrong and
 * never reaches a plugin. Throws only coded 4xx errors, whatever the bytes (a fuzz test holds it to that).
 */
export function decodeAdmissionReview(body: Buffer): AdmissionRequest {
  const review = parseJson(body, MAX_REVIEW_DEPTH);
  if (!isObject(review) || review.kind !== 'AdmissionReview' || review.apiVersion !== 'admission.k8s.io/v1') {
    throw new ChainwardenError('not_an_admission_review', 'expected an admission.k8s.io/v1 AdmissionReview; set admissionReviewVersions: [v1] on the webhook');
  }
  const request = review.request;
  if (!isObject(request)) throw invalidReview('request', 'must be an object with uid, resource and operation');
  if (typeof request.uid !== 'string' || request.uid === '' || request.uid.length > 128) throw invalidReview('request.uid', 'must be a non-empty string of at most 128 characters');
  if (!isObject(request.resource) || typeof request.resource.resource !== 'string') throw invalidReview('request.resource', 'must name the resource, e.g. {group: "", version: "v1", resource: "pods"}');
  if (typeof request.operation !== 'string' || !OPERATIONS.includes(request.operation)) throw invalidReview('request.operation', `must be one of ${OPERATIONS.join(', ')}`);
  if (request.subResource !== undefined && typeof request.subResource !== 'string') throw invalidReview('request.subResource', 'must be a string');
  if (request.namespace !== undefined && typeof request.namespace !== 'string') throw invalidReview('request.namespace', 'must be a string');
  if (!isObject(request.userInfo)) throw invalidReview('request.userInfo', 'must say who made the request');
  return request as unknown as AdmissionRequest;
}

/** Runs the plugins that apply in order; the first denial wins, patches add up. Fails closed. */
export async function runChain(plugins: readonly AdmissionPlugin[], request: AdmissionRequest, log: Logger): Promise<Verdict> {
  const patch: JsonPatchOperation[] = [];
  const warnings: string[] = [];
  for (const plugin of plugins) {
    if (!plugin.resources.includes(request.resource.resource) || !plugin.operations.includes(request.operation)) continue;
    if (request.subResource && !plugin.subResources?.includes(request.subResource)) continue;
    let verdict: Verdict;
    try {
      verdict = await plugin.admit(request);
    } catch (err) {
      log.error({ err, plugin: plugin.name, uid: request.uid }, 'admission plugin failed; refusing the request');
      return { allowed: false, code: 500, message: `chainwarden admission (${plugin.name}) could not decide: ${errorMessage(err)}. The request was refused; retry, and check the operator's logs if it persists.` };
    }
    if (!verdict.allowed) return verdict;
    patch.push(...(verdict.patch ?? []));
    warnings.push(...(verdict.warnings ?? []));
  }
  return { allowed: true, patch, warnings };
}

function reviewResponse(uid: string, verdict: Verdict): unknown {
  const response: Record<string, unknown> = { uid, allowed: verdict.allowed };
  if (verdict.allowed) {
    if (verdict.patch && verdict.patch.length > 0) {
      response.patchType = 'JSONPatch';
      response.patch = Buffer.from(JSON.stringify(verdict.patch)).toString('base64');
    }
    if (verdict.warnings && verdict.warnings.length > 0) response.warnings = verdict.warnings;
  } else {
    response.status = {
      code: verdict.code ?? 403,
      reason: verdict.code === 500 ? 'InternalError' : 'Invalid',
      message: verdict.message,
      details: verdict.violations ? { causes: verdict.violations.map((v) => ({ field: v.field, message: v.message, reason: 'FieldValueInvalid' })) } : undefined,
    };
  }
  return { apiVersion: 'admission.k8s.io/v1', kind: 'AdmissionReview', response };
}

/** The HTTP side of the webhooks: POST /validate and POST /mutate take AdmissionReviews. */
export function admissionRoutes(chains: AdmissionChains, log: Logger): Record<string, (req: IncomingMessage, res: ServerResponse) => Promise<void>> {
  const route = (plugins: AdmissionPlugin[]) => async (req: IncomingMessage, res: ServerResponse) => {
    let request: AdmissionRequest;
    try {
      if (req.method !== 'POST') throw new ChainwardenError('method_not_allowed', 'admission webhooks take POST');
      request = decodeAdmissionReview(await readBody(req, MAX_REVIEW_BYTES));
    } catch (err) {
      if (err instanceof ChainwardenError) return sendError(res, err);
      throw err;
    }
    const verdict = await runChain(plugins, request, log);
    log.debug({ uid: request.uid, resource: request.resource.resource, operation: request.operation, allowed: verdict.allowed }, 'admission decided');
    sendJson(res, 200, reviewResponse(request.uid, verdict));
  };
  return { '/validate': route(chains.validate), '/mutate': route(chains.mutate) };
}
