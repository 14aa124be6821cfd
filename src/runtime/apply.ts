import { isDeepStrictEqual } from 'node:util';
import type { KubeAccess } from '../kube/access.js';
import { ChainwardenError } from '../errors.js';
import { rawRequest } from '../kube/raw.js';

/** Where a namespaced object lives in the API. */
export interface ObjectRef {
  /** The object's path, e.g. /apis/example.io/v1/namespaces/ns/things/name. */
  path: string;
  apiVersion: string;
  kind: string;
  namespace: string;
  name: string;
}

/** written; conflict: the object changed since the version the write was conditional on; gone: it no longer exists. */
export type WriteOutcome = 'written' | 'conflict' | 'gone';

export interface JsonPatchOperation {
  op: 'add' | 'remove' | 'replace' | 'test';
  path: string;
  value?: unknown;
}

/**
 * What the API server said, with its causes: a JSON patch it cannot apply comes back as a generic
 * "rejected our request" whose reason (a failed test, a missing path) is only in the causes.
 */
function apiMessage(body: unknown): string {
  const status = body as { message?: string; details?: { causes?: { message?: string; field?: string }[] } } | undefined;
  const causes = (status?.details?.causes ?? []).map((c) => [c.field, c.message].filter(Boolean).join(': ')).filter((c) => c && c !== status?.message);
  const message = status?.message ?? JSON.stringify(body ?? '').slice(0, 300);
  return causes.length > 0 ? `${message} (${causes.join('; ')})` : message;
}

/**
 * The API server's answer to an apply naming a field its CRD does not declare: a 500, but the
 * same every time. It means the installed CRDs are older than this version (Helm never upgrades
 * them), and only applying this version's CRDs fixes it.
 */
const UNDECLARED_FIELD = /field not declared in schema/;
/** etcd refusing an object over its size limit, which the API server answers with a 500: the same every time. */
const TOO_LARGE = /request is too large/;

function refused(status: number, what: string, body: unknown): ChainwardenError {
  const message = apiMessage(body);
  if (UNDECLARED_FIELD.test(message)) {
    return new ChainwardenError('api_refused', `${what}: ${status} ${message}; the installed CRD is older than this chainwarden: apply the CRDs of this version (kubectl apply --server-side -f crds/)`);
  }
  // Invalid, too large or forbidden: the API server will refuse the same write every time; retrying it cannot help.
  return new ChainwardenError([400, 403, 413, 422].includes(status) || TOO_LARGE.test(message) ? 'api_refused' : 'api_error', `${what}: ${status} ${message}`);
}

/**
 * Server-side apply of `status` on the status subresource under `fieldManager`. The applied
 * status must state every field the manager owns: one it owned and leaves out is removed.
 * With `resourceVersion`, the write is conditional on it (a read-modify-write that must not
 * overwrite a newer state answers 'conflict').
 */
export async function applyStatus<T>(kc: KubeAccess, ref: ObjectRef, fieldManager: string, status: unknown, resourceVersion?: string): Promise<{ outcome: WriteOutcome; object?: T }> {
  const body = {
    apiVersion: ref.apiVersion,
    kind: ref.kind,
    metadata: { name: ref.name, namespace: ref.namespace, ...(resourceVersion ? { resourceVersion } : {}) },
    status,
  };
  // fieldValidation=Ignore: the API server otherwise parses every apply a second time, strictly,
  // only to warn of duplicate or unknown fields. This body is built here and has neither; on the
  // journal's writes that parse was a fifteenth of the API server's work. (A field the installed
  // CRD lacks is refused whatever this says: an apply is typed against the CRD's schema.)
  const res = await rawRequest(kc, 'PATCH', `${ref.path}/status?fieldManager=${encodeURIComponent(fieldManager)}&force=true&fieldValidation=Ignore`, body, 'application/apply-patch+yaml');
  if (res.status < 300) return { outcome: 'written', object: res.body as T };
  if (res.status === 409) return { outcome: 'conflict' };
  if (res.status === 404) return { outcome: 'gone' };
  throw refused(res.status, `applying the status of ${ref.kind} ${ref.namespace}/${ref.name} as ${fieldManager}`, res.body);
}

/**
 * A JSON patch whose `test` operations make it conditional: a failed test is a 'conflict', to be
 * retried on a fresh read. The API server answers a failed test with the same bare 422 as any
 * patch it cannot apply, so a 422 is told apart by reading the object: a tested value that
 * changed is a lost race; with every test still true, the patch itself is wrong.
 */
export async function patchJson(kc: KubeAccess, ref: ObjectRef, ops: JsonPatchOperation[]): Promise<WriteOutcome> {
  const res = await rawRequest(kc, 'PATCH', ref.path, ops, 'application/json-patch+json');
  if (res.status < 300) return 'written';
  if (res.status === 404) return 'gone';
  if (res.status === 409) return 'conflict';
  const tests = ops.filter((op) => op.op === 'test');
  if (res.status === 422 && tests.length > 0) {
    const fresh = await rawRequest(kc, 'GET', ref.path);
    if (fresh.status === 404) return 'gone';
    if (fresh.status !== 200) throw new ChainwardenError('api_error', `reading ${ref.kind} ${ref.namespace}/${ref.name} after a refused patch: ${fresh.status} ${apiMessage(fresh.body)}`);
    if (tests.some((op) => !isDeepStrictEqual(pointer(fresh.body, op.path), op.value))) return 'conflict';
  }
  throw refused(res.status, `patching ${ref.kind} ${ref.namespace}/${ref.name} (${ops.map((op) => `${op.op} ${op.path}`).join(', ')})`, res.body);
}

/** The value at a JSON pointer (RFC 6901), or undefined. */
function pointer(doc: unknown, path: string): unknown {
  let at = doc;
  for (const raw of path.split('/').slice(1)) {
    const key = raw.replaceAll('~1', '/').replaceAll('~0', '~');
    if (at === null || typeof at !== 'object') return undefined;
    at = (at as Record<string, unknown>)[key];
  }
  return at;
}
