import type { KubeAccess } from '../kube/access.js';
import { ChainwardenError } from '../errors.js';
import { mayDo, type Subject } from '../kube/authorizer.js';
import { rawRequest } from '../kube/raw.js';
import type { Clock } from '../runtime/clock.js';

/** A rotated Secret reaches the gateway within this long. */
const FRESH_MS = 30_000;
/** A missing Secret is asked for again this soon: the platform team may be creating it now. */
const MISSING_MS = 3_000;
const MAX_ENTRIES = 1_000;

type Read = { data: Record<string, string>; readAt: number } | { error: ChainwardenError; readAt: number };

/**
 * The credentials of MCP systems, read from the Secrets policies name: one GET per Secret
 * (the operator needs `get` on Secrets, never `list` or `watch`), remembered briefly. Values are
 * held in memory only and never logged.
 */
/** Who names a Secret: an admission request's userInfo. */
export type SecretAuthor = Subject;

export class SecretReader {
  private readonly cache = new Map<string, Read>();

  constructor(
    private readonly kc: KubeAccess,
    private readonly clock: Clock,
  ) {}

  /** The value of `key` in Secret `namespace/name`, decoded; `mcp_credential_missing` naming what is missing otherwise. */
  async value(namespace: string, name: string, key: string, field: string): Promise<string> {
    const id = `${namespace}/${name}`;
    const known = this.cache.get(id);
    const now = this.clock.now();
    const read = known && now - known.readAt < ('error' in known ? MISSING_MS : FRESH_MS) ? known : await this.read(namespace, name, field);
    if ('error' in read) throw read.error;
    // Own keys only: a policy may name any key, `constructor` and `__proto__` included.
    const encoded = Object.hasOwn(read.data, key) ? read.data[key] : undefined;
    if (encoded === undefined) throw new ChainwardenError('mcp_credential_missing', `Secret ${id} has no key ${key} (${field}); add it or name the key that holds the credential`, { field });
    // Sent as a header's value: the line break a file ends with (kubectl create secret --from-file) is not the credential's.
    const value = Buffer.from(encoded, 'base64').toString('utf8').replace(/(?:\r?\n)+$/, '');
    if (/[^\t\x20-\x7e\x80-\xff]/.test(value)) {
      throw new ChainwardenError('mcp_credential_missing', `Secret ${id} key ${key} (${field}) holds a line break, a control character or a character beyond Latin-1 inside it, none of which an HTTP header can carry; store the credential alone, on one line, in ASCII`, { field });
    }
    return value;
  }

  /** Whether `author` may get Secret `namespace/name`, as the API server's authorizer says (a SubjectAccessReview). */
  async mayRead(author: SecretAuthor, namespace: string, name: string): Promise<boolean> {
    const allowed = await mayDo(this.kc, author, { namespace, verb: 'get', resource: 'secrets', name });
    if (allowed === undefined) {
      throw new ChainwardenError('mcp_credential_missing', `the operator may not ask whether ${author.username ?? 'the user'} may read Secret ${namespace}/${name} (it is not granted create on subjectaccessreviews); grant it, as the Helm chart does`);
    }
    return allowed;
  }

  private async read(namespace: string, name: string, field: string): Promise<Read> {
    const id = `${namespace}/${name}`;
    const res = await rawRequest(this.kc, 'GET', `/api/v1/namespaces/${namespace}/secrets/${name}`);
    let read: Read;
    if (res.status === 200) read = { data: (res.body as { data?: Record<string, string> }).data ?? {}, readAt: this.clock.now() };
    else if (res.status === 404) read = { error: new ChainwardenError('mcp_credential_missing', `Secret ${id} (${field}) does not exist; create it in the policy's namespace`, { field }), readAt: this.clock.now() };
    else if (res.status === 403) read = { error: new ChainwardenError('mcp_credential_missing', `the operator may not read Secret ${id} (${field}); grant it get on Secrets in ${namespace} (Helm values mcpGateway.enabled=true and mcpGateway.secretNamespaces)`, { field }), readAt: this.clock.now() };
    else throw new ChainwardenError('api_error', `reading Secret ${id}: the API server answered ${res.status}`);
    if (this.cache.size >= MAX_ENTRIES) this.cache.delete(this.cache.keys().next().value ?? '');
    this.cache.set(id, read);
    return read;
  }
}
