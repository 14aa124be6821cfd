import { ChainwardenError } from '../errors.js';

/**
 * A SigV4 `Authorization` header, parsed once: the sidecar reads the signing service from it to
 * know how the body is hashed, and the broker finds the placeholder key by its access key id.
 */
export interface SigV4Authorization {
  accessKeyId: string;
  /** The credential scope's date, YYYYMMDD. */
  date: string;
  region: string;
  /** The signing service (`s3`, `dynamodb`, `sqs`, `sts`, …), which is what the hop's tool is named after. */
  service: string;
  /** Lowercased header names, in the order the SDK signed them. */
  signedHeaders: string[];
  /** 64 lowercase hex digits. */
  signature: string;
}

export const SIGV4_ALGORITHM = 'AWS4-HMAC-SHA256';
/** Real headers are a few hundred bytes; the bound is for garbage. */
export const MAX_AUTHORIZATION_LENGTH = 8 * 1024;
const MAX_SIGNED_HEADERS = 128;

const ACCESS_KEY_ID = /^[A-Za-z0-9_-]{1,128}$/;
const DATE = /^(\d{4})(\d{2})(\d{2})$/;
const SCOPE_NAME = /^[a-z0-9-]{1,64}$/;
/** RFC 9110 token characters, lowercase as SigV4 requires. */
const HEADER_NAME = /^[a-z0-9!#$%&'*+.^_`|~-]{1,128}$/;
const SIGNATURE = /^[0-9a-f]{64}$/;

/** Schemes an SDK may sign with that the gateway cannot pass on, named so the refusal says what to change. */
const OTHER_SCHEMES: Record<string, string> = {
  AWS: 'Signature Version 2',
  'AWS4-ECDSA-P256-SHA256': 'SigV4a (multi-region access points)',
};

const malformed = (what: string) => new ChainwardenError('aws_authorization_malformed', `the Authorization header is not a well-formed ${SIGV4_ALGORITHM} header: ${what}`, { field: 'authorization' });

/**
 * Parses `AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/s3/aws4_request,
 * SignedHeaders=host;x-amz-date, Signature=<hex>`. No header is `aws_unsigned`, another scheme
 * is `aws_auth_unsupported`, and a SigV4 header that is not well formed is
 * `aws_authorization_malformed` naming the part; the header's value never appears in a message.
 */
export function parseSigV4Authorization(header: string | undefined): SigV4Authorization {
  if (header === undefined || header.trim() === '') {
    throw new ChainwardenError('aws_unsigned', 'the request carries no Authorization header: sign it with SigV4 (the credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI); the chainwarden gateway passes on nothing unsigned', { field: 'authorization' });
  }
  if (header.length > MAX_AUTHORIZATION_LENGTH) throw malformed(`it is ${header.length} characters long, more than ${MAX_AUTHORIZATION_LENGTH}`);
  const text = header.trim();
  const space = text.search(/\s/);
  const scheme = space < 0 ? text : text.slice(0, space);
  if (scheme !== SIGV4_ALGORITHM) {
    const known = OTHER_SCHEMES[scheme];
    throw new ChainwardenError('aws_auth_unsupported', `the chainwarden gateway passes on requests signed with ${SIGV4_ALGORITHM} in the Authorization header only, not ${known ?? 'another scheme'}: use an AWS SDK with the credentials from AWS_CONTAINER_CREDENTIALS_FULL_URI`, { field: 'authorization' });
  }
  const parts = componentsOf(space < 0 ? '' : text.slice(space));
  const credential = parts.get('Credential');
  const signedHeaders = parts.get('SignedHeaders');
  const signature = parts.get('Signature');
  if (credential === undefined) throw malformed('it has no Credential=');
  if (signedHeaders === undefined) throw malformed('it has no SignedHeaders=');
  if (signature === undefined) throw malformed('it has no Signature=');
  if (!SIGNATURE.test(signature)) throw malformed('Signature is not 64 lowercase hex digits');
  return { ...parseCredential(credential), signedHeaders: parseSignedHeaders(signedHeaders), signature };
}

/** `Credential=…, SignedHeaders=…, Signature=…` in any order, each once, commas with optional spaces between. */
function componentsOf(rest: string): Map<string, string> {
  const parts = new Map<string, string>();
  for (const raw of rest.split(',')) {
    const part = raw.trim();
    const eq = part.indexOf('=');
    const name = eq < 0 ? part : part.slice(0, eq);
    if (name !== 'Credential' && name !== 'SignedHeaders' && name !== 'Signature') {
      throw malformed(part === '' ? 'it has an empty component' : `it has a component other than Credential, SignedHeaders and Signature (${name.length <= 32 && /^[A-Za-z-]+$/.test(name) ? name : 'unreadable'})`);
    }
    if (eq < 0) throw malformed(`${name} has no value`);
    if (parts.has(name)) throw malformed(`${name} appears twice`);
    parts.set(name, part.slice(eq + 1));
  }
  return parts;
}

function parseCredential(credential: string): Pick<SigV4Authorization, 'accessKeyId' | 'date' | 'region' | 'service'> {
  const scope = credential.split('/');
  if (scope.length !== 5) throw malformed('Credential is not <access key id>/<date>/<region>/<service>/aws4_request');
  const [accessKeyId = '', date = '', region = '', service = '', terminator = ''] = scope;
  if (!ACCESS_KEY_ID.test(accessKeyId)) throw malformed('the access key id in Credential is empty, too long or has characters other than letters, digits, _ and -');
  const day = DATE.exec(date);
  const [month, dayOfMonth] = [Number(day?.[2]), Number(day?.[3])];
  if (!day || month < 1 || month > 12 || dayOfMonth < 1 || dayOfMonth > 31) throw malformed('the date in Credential is not YYYYMMDD');
  if (!SCOPE_NAME.test(region)) throw malformed('the region in Credential is not a region name');
  if (!SCOPE_NAME.test(service)) throw malformed('the service in Credential is not a service name');
  if (terminator !== 'aws4_request') throw malformed('Credential does not end in /aws4_request');
  return { accessKeyId, date, region, service };
}

function parseSignedHeaders(text: string): string[] {
  const names = text.split(';');
  if (names.length > MAX_SIGNED_HEADERS) throw malformed(`SignedHeaders names more than ${MAX_SIGNED_HEADERS} headers`);
  const seen = new Set<string>();
  for (const name of names) {
    if (!HEADER_NAME.test(name)) throw malformed('SignedHeaders is not a list of lowercase header names separated by ;');
    if (seen.has(name)) throw malformed(`SignedHeaders names ${name} twice`);
    seen.add(name);
  }
  return names;
}

/**
 * Query parameters that sign a URL (SigV4 presigning; SigV2's always has AWSAccessKeyId beside its
 * Signature); names are compared decoded and without case, as AWS reads them.
 */
const PRESIGNING_PARAMETERS = new Set(['x-amz-algorithm', 'x-amz-credential', 'x-amz-signature', 'awsaccesskeyid']);

/** Whether a raw query string (without `?`) carries presigned-URL authentication. */
export function isPresignedQuery(query: string): boolean {
  if (query === '') return false;
  return query.split('&').some((pair) => {
    const name = pair.split('=', 1)[0] ?? '';
    let decoded: string;
    try {
      decoded = decodeURIComponent(name);
    } catch {
      decoded = name;
    }
    return PRESIGNING_PARAMETERS.has(decoded.toLowerCase());
  });
}
