import type { KubeConfig } from '@kubernetes/client-node';
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

function refused(status: number, what: string, body: unknown): ChainwardenError {
  const message = (body as { message?: string } | undefined)?.message ?? JSON.stringify(body).slice(0, 300);
  // Invalid, too large or forbidden: the API server will refuse the same write every time; retrying it cannot help.
  return new ChainwardenError([400, 403, 413, 422].includes(status) ? 'api_refused' : 'api_error', `${what}: ${status} ${message}`);
}

/**
 * Server-side apply of `status` on the status subresource under `fieldManager`. The applied
 * status must state every field the manager owns: one it owned and leaves out is removed.
 * With `resourceVersion`, the write is conditional on it (a read-modify-write that must not
 * overwrite a newer state answers 'conflict').
 */
export async function applyStatus<T>(kc: KubeConfig, ref: ObjectRef, fieldManager: string, status: unknown, resourceVersion?: string): Promise<{ outcome: WriteOutcome; object?: T }> {
  const body = {
    apiVersion: ref.apiVersion,
    kind: ref.kind,
    metadata: { name: ref.name, namespace: ref.namespace, ...(resourceVersion ? { resourceVersion } : {}) },
    status,
  };
  const res = await rawRequest(kc, 'PATCH', `${ref.path}/status?fieldManager=${encodeURIComponent(fieldManager)}&force=true`, body, 'application/apply-patch+yaml');
  if (res.status < 300) return { outcome: 'written', object: res.body as T };
  if (res.status === 409) return { outcome: 'conflict' };
  if (res.status === 404) return { outcome: 'gone' };
  throw refused(res.status, `applying the status of ${ref.kind} ${ref.namespace}/${ref.name} as ${fieldManager}`, res.body);
}

/**
 * A JSON patch whose `test` operations make it conditional: a failed test (422 with a test
 * failure, or a 409) is a 'conflict', to be retried on a fresh read.
 */
export async function patchJson(kc: KubeConfig, ref: ObjectRef, ops: JsonPatchOperation[]): Promise<WriteOutcome> {
  const res = await rawRequest(kc, 'PATCH', ref.path, ops, 'application/json-patch+json');
  if (res.status < 300) return 'written';
  if (res.status === 404) return 'gone';
  const message = (res.body as { message?: string } | undefined)?.message ?? '';
  if (res.status === 409 || (res.status === 422 && /test/i.test(message))) return 'conflict';
  throw refused(res.status, `patching ${ref.kind} ${ref.namespace}/${ref.name}`, res.body);
}
