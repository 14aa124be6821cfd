import { randomBytes } from 'node:crypto';
import type http from 'node:http';
import type { AwsSignRefusal } from '../aws/sign-api.js';
import { describedRefusal, reasonsOf, safeHopId } from './refusal.js';

/**
 * How the SDK that sent a request reads errors: JSON protocols (DynamoDB, SQS, KMS, … which name
 * the operation in `x-amz-target`), the query protocol (STS, IAM, SNS: a form with `Action`), or
 * REST-XML (S3 and the rest). An error in another shape is a parse failure in the SDK, not the
 * exception the user would catch.
 */
export type AwsProtocol = 'json' | 'query' | 'rest-xml';

export function protocolOf(req: Pick<http.IncomingMessage, 'method' | 'headers'>, query: string): AwsProtocol {
  if (req.headers['x-amz-target'] !== undefined) return 'json';
  const contentType = req.headers['content-type']?.toLowerCase() ?? '';
  if (req.method === 'POST' && contentType.startsWith('application/x-www-form-urlencoded')) return 'query';
  if (namesAction(query)) return 'query';
  return 'rest-xml';
}

/**
 * Whether the query names `Action`, read as the broker reads names (decoded, `+` a space): a
 * name spelled `Act%69on` is the same name to the broker and to AWS, so it makes the same
 * protocol here, and the body of such a call is shown to the broker with it.
 */
function namesAction(query: string): boolean {
  for (const part of query.split('&')) {
    const eq = part.indexOf('=');
    const name = (eq < 0 ? part : part.slice(0, eq)).split('+').join(' ');
    if (name === 'Action') return true;
    if (!name.includes('%')) continue;
    try {
      if (decodeURIComponent(name) === 'Action') return true;
    } catch {
      // Not decodable: the broker reads it as it is, which is not Action.
    }
  }
  return false;
}

/** An error as AWS would answer it: the status and the code the SDK turns into the exception's name. */
export interface AwsError {
  status: number;
  code: string;
  message: string;
  /** The hop id when there is one, so `$metadata.requestId` leads to the audit record. */
  requestId?: string;
}

/**
 * The AWS face of every refusal, the sidecar's own and the broker's (`AwsSignRefusal` codes):
 * the one place that says which exception an SDK raises for what.
 */
const AWS_FACES: Record<string, { status: number; code: string }> = {
  // The sidecar's, before anything is asked.
  forbidden_host: { status: 403, code: 'AccessDenied' },
  forbidden_origin: { status: 403, code: 'AccessDenied' },
  aws_unsigned: { status: 403, code: 'MissingAuthenticationToken' },
  aws_auth_unsupported: { status: 403, code: 'AccessDenied' },
  aws_request_invalid: { status: 400, code: 'InvalidRequest' },
  aws_headers_too_large: { status: 400, code: 'RequestHeaderSectionTooLarge' },
  aws_request_timeout: { status: 400, code: 'RequestTimeout' },
  body_too_large: { status: 413, code: 'RequestEntityTooLarge' },
  // The broker's.
  aws_signature_mismatch: { status: 403, code: 'SignatureDoesNotMatch' },
  aws_unknown_key: { status: 403, code: 'InvalidClientTokenId' },
  hop_denied: { status: 403, code: 'AccessDenied' },
  approval_pending: { status: 403, code: 'ChainwardenApprovalPending' },
  task_not_active: { status: 403, code: 'AccessDenied' },
  unauthenticated: { status: 403, code: 'AccessDenied' },
  forbidden: { status: 403, code: 'AccessDenied' },
  pod_not_bound: { status: 403, code: 'AccessDenied' },
  // The way to AWS is down for now: SDKs retry a 503 by themselves.
  broker_unreachable: { status: 503, code: 'ServiceUnavailable' },
  aws_unreachable: { status: 503, code: 'ServiceUnavailable' },
  starting: { status: 503, code: 'ServiceUnavailable' },
  journal_behind: { status: 503, code: 'ServiceUnavailable' },
  sts_unavailable: { status: 503, code: 'ServiceUnavailable' },
  bodies_held: { status: 503, code: 'ServiceUnavailable' },
  chain_widened: { status: 503, code: 'ServiceUnavailable' },
  chain_unheard: { status: 503, code: 'ServiceUnavailable' },
  internal: { status: 500, code: 'InternalFailure' },
};

/** A code not in the table, by the status it came with. */
function faceOfStatus(status: number): { status: number; code: string } {
  if (status === 401 || status === 403) return { status: 403, code: 'AccessDenied' };
  if (status === 413) return AWS_FACES.body_too_large as { status: number; code: string };
  if (status === 429) return { status: 429, code: 'ThrottlingException' };
  if (status >= 500) return { status: 503, code: 'ServiceUnavailable' };
  return { status: 400, code: 'InvalidRequest' };
}

export function awsErrorOf(code: string, message: string, status = 500, requestId?: string): AwsError {
  const face = Object.hasOwn(AWS_FACES, code) ? (AWS_FACES[code] as { status: number; code: string }) : faceOfStatus(status);
  return { ...face, message, ...(requestId ? { requestId } : {}) };
}

/**
 * A broker refusal as the SDK should see it. The message is the broker's; the hop id and the
 * deciding rules are added when it does not already name them, so a user reading the exception
 * can find the hop and the rule.
 */
export function awsErrorOfRefusal(status: number, refusal: AwsSignRefusal | undefined): AwsError {
  if (!refusal?.error || typeof refusal.error.code !== 'string') {
    return awsErrorOf('', `the chainwarden broker refused the request with HTTP ${status} and no reason`, status);
  }
  // It goes into a header too: only what a hop id can look like.
  const hopId = safeHopId(refusal.hopId);
  const message = describedRefusal(typeof refusal.error.message === 'string' ? refusal.error.message : refusal.error.code, reasonsOf(refusal.reasons), hopId);
  return awsErrorOf(refusal.error.code, message, status, hopId);
}

const XML_ESCAPES: Record<string, string> = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&apos;' };

/** Text for an XML element: markup escaped, and the characters XML 1.0 cannot carry at all replaced. */
export function xmlText(text: string): string {
  // eslint-disable-next-line no-control-regex -- these are exactly the characters to replace
  return text.replace(/[&<>"']/g, (c) => XML_ESCAPES[c] ?? c).replace(/[\u0000-\u0008\u000b\u000c\u000e-\u001f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}

/** The response an AWS service would send for this error, in the caller's protocol. */
export function renderAwsError(protocol: AwsProtocol, error: AwsError, requestContentType?: string): { status: number; headers: Record<string, string>; body: string } {
  const requestId = error.requestId ?? randomBytes(8).toString('hex').toUpperCase();
  const code = xmlText(error.code);
  const message = xmlText(error.message);
  switch (protocol) {
    case 'json':
      return {
        status: error.status,
        headers: {
          'content-type': /^application\/x-amz-json-1\.[01]$/.test(requestContentType ?? '') ? (requestContentType as string) : 'application/x-amz-json-1.1',
          'x-amzn-errortype': error.code,
          'x-amzn-requestid': requestId,
        },
        body: JSON.stringify({ __type: error.code, message: error.message }),
      };
    case 'query':
      return {
        status: error.status,
        headers: { 'content-type': 'text/xml', 'x-amzn-requestid': requestId },
        body: `<ErrorResponse><Error><Type>${error.status >= 500 ? 'Receiver' : 'Sender'}</Type><Code>${code}</Code><Message>${message}</Message></Error><RequestId>${xmlText(requestId)}</RequestId></ErrorResponse>`,
      };
    case 'rest-xml':
      return {
        status: error.status,
        headers: { 'content-type': 'application/xml', 'x-amz-request-id': requestId },
        body: `<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${code}</Code><Message>${message}</Message><RequestId>${xmlText(requestId)}</RequestId></Error>`,
      };
  }
}
