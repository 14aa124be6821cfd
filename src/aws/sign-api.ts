/**
 * The AWS gateway's one call from the sidecar to the broker: `POST /v1/aws/sign`, authenticated
 * with the pod token like every broker call. The sidecar passes on what the SDK signed, never
 * the payload (a query-protocol form or a JSON-protocol document excepted, which are small and
 * name the action and its resource); the broker checks the SDK's signature against the
 * credential's placeholder secret, derives the hop from the request, decides it with the whole
 * chain in view and, on allow, signs the request for the real endpoint with the task's STS
 * session. The session's secret never leaves the broker.
 */

import { HOP_BY_HOP } from '../server/http.js';

/**
 * Headers about one connection, which the gateway sets for itself on the way to AWS: a signature
 * may not cover them, and the sidecar never passes them on. `Expect` is not among them: it frames
 * nothing, and an SDK may sign it (Go's first SDK does, for S3 uploads).
 */
export const CONNECTION_HEADERS: ReadonlySet<string> = new Set([...HOP_BY_HOP].filter((name) => name !== 'expect'));

/**
 * The most of a query- or JSON-protocol body the sidecar passes on and the broker reads. AWS's own
 * limits on one call fit, with their encoding: an SQS message or a Kinesis record of 1 MiB (a
 * record is base64), an SNS message of 256 KiB form-encoded, a DynamoDB item of 400 KB. Larger
 * batches (`BatchWriteItem` up to 16 MB, `TransactWriteItems` up to 4 MB) do not.
 */
export const MAX_SIGN_FORM_BYTES = 2 * 1024 * 1024;

/**
 * The most a sign request may take on the wire: a form of `MAX_SIGN_FORM_BYTES` with its quotes
 * and backslashes escaped, and the headers beside it. The sidecar measures the request before
 * sending it and refuses a body whose escaping would take it past this.
 */
export const MAX_SIGN_REQUEST_BYTES = 2 * MAX_SIGN_FORM_BYTES + 160 * 1024;

/** The request as the SDK sent it to the sidecar. */
export interface AwsSignRequest {
  /** The SDK's `Authorization` header (AWS4-HMAC-SHA256 Credential=…, SignedHeaders=…, Signature=…). */
  authorization: string;
  method: string;
  /** The path as received, percent-encoded as the SDK sent it. */
  path: string;
  /** The query string as received, without `?`; '' when none. */
  query: string;
  /** Every header the SDK signed (its SignedHeaders), names lowercased, values as received; `host` and `x-amz-date` included. */
  headers: Record<string, string>;
  /**
   * The payload hash the SDK signed: its `x-amz-content-sha256` when it sent one (S3: a hex
   * SHA-256, `UNSIGNED-PAYLOAD` or a `STREAMING-…` marker), else the hex SHA-256 of the body.
   */
  payloadHash: string;
  /**
   * Query protocol (a form-encoded POST body) and JSON protocol (`x-amz-target`): the body
   * itself, at most `MAX_SIGN_FORM_BYTES`, so the broker reads `Action`, `TableName`, `QueueUrl`… from what it
   * signs (its hash is `payloadHash`). The sidecar refuses such calls with larger bodies rather
   * than let the broker decide them on `*`.
   */
  form?: string;
  /**
   * When the sidecar re-encodes the body for the real endpoint (signed aws-chunked → unsigned
   * aws-chunked with trailer, or decoded), what it will send instead: the payload hash and header
   * changes (a null value removes the header). The broker signs that, not the SDK's form.
   */
  forward?: { payloadHash: string; headers: Record<string, string | null> };
}

/** On allow: where to send the request and the headers to send it with (they replace the SDK's of the same name). */
export interface AwsSignAnswer {
  hopId: string;
  decision: 'allow';
  reasons: { rule: string; effect: string }[];
  /** The real endpoint's origin, e.g. https://s3.us-east-1.amazonaws.com. */
  url: string;
  /** `authorization`, `x-amz-date`, `x-amz-security-token`, `host`, and `x-amz-content-sha256` when it is signed. */
  headers: Record<string, string>;
}

/**
 * Refusals come as the broker's usual JSON error (`{error: {code, message, field?}}`) with, for a
 * decided hop, `hopId`, `decision` and `reasons` beside it. Codes the sidecar maps to AWS errors:
 * `aws_signature_mismatch` (SignatureDoesNotMatch), `aws_unsigned` (MissingAuthenticationToken),
 * `aws_unknown_key` (InvalidClientTokenId), `aws_request_invalid` (the message names what),
 * `hop_denied` (AccessDenied, message naming rule and hop id), `approval_pending`
 * (ChainwardenApprovalPending with the hop id), `task_not_active` and the 401s (AccessDenied).
 */
export interface AwsSignRefusal {
  error: { code: string; message: string; field?: string };
  hopId?: string;
  decision?: 'deny' | 'pending_approval';
  reasons?: { rule: string; effect: string }[];
}

/** The sidecar's AWS listener port in injected pods. */
export const AWS_GATEWAY_PORT = 15081;
