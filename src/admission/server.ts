import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Logger } from '../log.js';
import { errorMessage } from '../errors.js';
import { readJson, sendError, sendJson } from '../server/http.js';
import { ChainwardenError } from '../errors.js';
import type { AdmissionPlugin, AdmissionRequest, JsonPatchOperation, Verdict } from './review.js';

/** Admission reviews carry the old and new object; Kubernetes objects are at most 1.5 MiB each. */
const MAX_REVIEW_BYTES = 4 * 1024 * 1024;

export interface AdmissionChains {
  /** Called by the ValidatingWebhookConfiguration at /validate. */
  validate: AdmissionPlugin[];
  /** Called by the MutatingWebhookConfiguration at /mutate. */
  mutate: AdmissionPlugin[];
}

function decodeReview(body: unknown): AdmissionRequest {
  const review = body as { apiVersion?: unknown; kind?: unknown; request?: Partial<AdmissionRequest> } | null;
  if (review?.kind !== 'AdmissionReview' || review.apiVersion !== 'admission.k8s.io/v1') {
    throw new ChainwardenError('not_an_admission_review', 'expected an admission.k8s.io/v1 AdmissionReview; set admissionReviewVersions: [v1] on the webhook');
  }
  const request = review.request;
  if (!request?.uid || !request.resource?.resource || !request.operation) {
    throw new ChainwardenError('invalid_admission_review', 'AdmissionReview.request needs uid, resource and operation');
  }
  return request as AdmissionRequest;
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
      request = decodeReview(await readJson(req, MAX_REVIEW_BYTES));
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
