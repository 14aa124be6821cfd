import { Reason } from './api/conditions.js';

interface ErrorEntry {
  /** The HTTP status a server answers with when this error reaches it. */
  status: number;
  /** The condition reason a task's status shows when this error is about the task. */
  reason?: Reason;
}

/**
 * Every error a user can meet, in one table: its stable code, the HTTP status the broker,
 * webhooks and sidecar answer with, and where it shows on a task, the condition reason. Domain
 * code throws `ChainwardenError(code, …)`; only the HTTP layer and the status writers read this.
 */
export const ERRORS = {
  // The request is wrong; the message names the field.
  invalid_json: { status: 400 },
  json_too_deep: { status: 400 },
  invalid_request: { status: 400 },
  invalid_hop: { status: 400 },
  invalid_object: { status: 400 },
  invalid_duration: { status: 400 },
  invalid_admission_review: { status: 400 },
  not_an_admission_review: { status: 400 },
  audience_required: { status: 400 },
  body_too_large: { status: 413 },
  method_not_allowed: { status: 405 },
  not_found: { status: 404 },
  hop_not_found: { status: 404 },
  credential_not_found: { status: 404 },
  // Who is calling, and whether their task may have anything.
  unauthenticated: { status: 401 },
  forbidden: { status: 403 },
  pod_not_bound: { status: 403 },
  task_not_active: { status: 403 },
  forbidden_host: { status: 403 },
  forbidden_origin: { status: 403 },
  starting: { status: 503 },
  /** A pod holds as many long polls (GET /v1/task) as it may. */
  too_many_watches: { status: 429 },
  /** A pod has as many hop and gateway requests in flight on a replica as it may. */
  too_many_requests: { status: 429 },
  local_token_invalid: { status: 500 },
  // AWS.
  role_not_allowed: { status: 403, reason: Reason.RoleNotAllowed },
  role_not_assumable: { status: 403, reason: Reason.AssumeRoleFailed },
  sts_limits_exceeded: { status: 422, reason: Reason.StsLimitExceeded },
  sts_unavailable: { status: 503, reason: Reason.StsUnavailable },
  // The AWS gateway; the sidecar turns each into the AWS error an SDK raises (src/agent/aws-errors.ts).
  aws_unsigned: { status: 403 },
  aws_request_invalid: { status: 400 },
  aws_unknown_key: { status: 403 },
  aws_signature_mismatch: { status: 403 },
  hop_denied: { status: 403 },
  approval_pending: { status: 403 },
  /** Signed some other way (SigV2, SigV4a, a presigned URL): the sidecar passes on header SigV4 only. */
  aws_auth_unsupported: { status: 403 },
  aws_headers_too_large: { status: 400 },
  /** The sidecar holds as many request bodies as it may at once: retried, as SDKs retry a 503. */
  bodies_held: { status: 503 },
  /** An upload whose body its signature does not bind, cut or refused because the chain touched something new meanwhile: sent again, it is decided anew. */
  chain_widened: { status: 503 },
  /** Such an upload, cut because the sidecar could not hear from the broker whether the chain touched something new: sent again, it is decided anew. */
  chain_unheard: { status: 503 },
  // The MCP gateway; the sidecar turns each into a JSON-RPC error (see src/mcp/forward-api.ts).
  mcp_unknown_system: { status: 404 },
  /** The system's Secret or key is missing: the platform team must create it. */
  mcp_credential_missing: { status: 502 },
  mcp_upstream_unreachable: { status: 502 },
  // The parts around chainwarden.
  broker_unreachable: { status: 502 },
  api_error: { status: 502 },
  /** The API server refuses the write itself (invalid, too large, forbidden): the same write will be refused again. */
  api_refused: { status: 502 },
  /** The role's other inline policies leave no room for the revocation policy: a person must make room. */
  revocation_policy_full: { status: 500 },
  /** IAM failed (throttling, 5xx, timeouts, connections cut, refusals): retried after a wait. */
  iam_unavailable: { status: 503 },
  /** The deny failed on more than one of a task's roles (each named, with why); every other role was written. Retried. */
  deny_failed: { status: 503 },
  journal_behind: { status: 503 },
  conflict: { status: 409 },
  /** A leader-only write on a replica whose lease may have passed to another: retried, by whichever replica leads. */
  not_leader: { status: 503 },
  no_cluster: { status: 500 },
  apply_failed: { status: 500 },
  read_failed: { status: 500 },
  internal: { status: 500 },
  // Command line and local environment.
  usage: { status: 400 },
  invalid_trust_domain: { status: 400 },
  tool_missing: { status: 500 },
  command_failed: { status: 500 },
  provision_failed: { status: 500 },
  start_failed: { status: 500 },
  reset_failed: { status: 500 },
  crd_install_failed: { status: 500 },
  crd_not_established: { status: 500 },
  demo_failed: { status: 500 },
  demo_timeout: { status: 500 },
  /** approve/reject: the hop was decided, timed out or never existed. */
  hop_not_pending: { status: 409 },
  /** approve/reject: admission refused the AgentApproval (not an approver, already decided). */
  approval_refused: { status: 403 },
  /** policy replay: the policy file does not parse or validate. */
  invalid_policy: { status: 400 },
  no_audit_records: { status: 400 },
} as const satisfies Record<string, ErrorEntry>;

export type ErrorCode = keyof typeof ERRORS;

/**
 * Coded errors. Every error a user can meet carries a stable `code` from the catalogue above, a
 * message that says what to do, and, where a request or manifest field is at fault, that
 * field's path.
 */
export class ChainwardenError extends Error {
  readonly code: ErrorCode;
  readonly field: string | undefined;

  constructor(code: ErrorCode, message: string, options: { field?: string; cause?: unknown } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ChainwardenError';
    this.code = code;
    this.field = options.field;
  }

  get status(): number {
    return ERRORS[this.code].status;
  }
}

/** The condition reason for an error about a task, when the catalogue gives one. */
export function reasonOf(code: ErrorCode): Reason | undefined {
  const entry: ErrorEntry = ERRORS[code];
  return entry.reason;
}

/** A tool the local environment needs is not installed; the message names what to install. */
export class MissingToolError extends ChainwardenError {
  constructor(message: string) {
    super('tool_missing', message);
    this.name = 'MissingToolError';
  }
}

export function errorMessage(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
