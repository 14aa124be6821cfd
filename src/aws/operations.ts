/**
 * Which AWS operation a request is, as a hop: tool `aws:<signing service>`, action the IAM
 * action name, resource the ARN the request names, else `*`. Derived from what the broker signs
 * (method, path, query, signed headers, and for the JSON and query protocols the small body
 * whose hash the signature covers), so the hop decided is the request sent.
 */

export interface AwsOperationInput {
  /** The signing service from the credential scope: s3, dynamodb, sqs, sts… */
  service: string;
  region: string;
  /** The account and partition of the role the session is for: where a name without an ARN lives. */
  account: string;
  partition: string;
  method: string;
  /** Percent-encoded, as sent. */
  path: string;
  query: string;
  headers: Record<string, string>;
  /** The JSON or form body, when the protocol carries the operation in it. */
  body?: string;
}

export interface AwsOperation {
  tool: string;
  action: string;
  resource: string;
  protocol: 'json' | 'query' | 'rest';
}

/** Signing services whose IAM prefix differs. */
const IAM_PREFIX: Record<string, string> = { monitoring: 'cloudwatch', email: 'ses', 'execute-api': 'execute-api' };

const prefixOf = (service: string) => IAM_PREFIX[service] ?? service;

function parseQuery(query: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of query.split('&')) {
    if (!part) continue;
    const eq = part.indexOf('=');
    const key = eq < 0 ? part : part.slice(0, eq);
    const value = eq < 0 ? '' : part.slice(eq + 1);
    out.set(safeDecode(key.replace(/\+/g, ' ')), safeDecode(value.replace(/\+/g, ' ')));
  }
  return out;
}

function safeDecode(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

function jsonBody(body: string | undefined): Record<string, unknown> {
  if (!body) return {};
  try {
    const value = JSON.parse(body) as unknown;
    return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

const str = (v: unknown) => (typeof v === 'string' && v.length > 0 && v.length <= 2048 ? v : undefined);

/** The ARN a JSON or query request names, for the services whose resource parameter is known. */
function namedResource(input: AwsOperationInput, params: (name: string) => string | undefined): string {
  const { service, region, account, partition } = input;
  const arn = (rest: string) => `arn:${partition}:${prefixOf(service)}:${region}:${account}:${rest}`;
  switch (service) {
    case 'dynamodb': {
      const table = params('TableName') ?? params('TableArn');
      if (table?.startsWith('arn:')) return table;
      return table ? arn(`table/${table}`) : '*';
    }
    case 'sqs': {
      const url = params('QueueUrl');
      const match = url ? /\/(\d{12})\/([^/?]+)\/?$/.exec(url) : undefined;
      if (match) return `arn:${partition}:sqs:${region}:${match[1] ?? account}:${match[2] ?? ''}`;
      const name = params('QueueName');
      return name ? arn(name) : '*';
    }
    case 'sns':
      return params('TopicArn') ?? params('TargetArn') ?? '*';
    case 'secretsmanager': {
      const id = params('SecretId');
      return id ? (id.startsWith('arn:') ? id : arn(`secret:${id}`)) : '*';
    }
    case 'kms': {
      const key = params('KeyId');
      return key ? (key.startsWith('arn:') ? key : arn(key.startsWith('alias/') ? key : `key/${key}`)) : '*';
    }
    case 'iam': {
      const role = params('RoleName');
      const user = params('UserName');
      return role ? `arn:${partition}:iam::${account}:role/${role}` : user ? `arn:${partition}:iam::${account}:user/${user}` : '*';
    }
    default:
      return '*';
  }
}

/** S3 subresources (query keys) and the IAM actions they map to, by method. */
const S3_SUBRESOURCES: Record<string, Partial<Record<string, string>>> = {
  acl: { GET: 'GetObjectAcl', PUT: 'PutObjectAcl' },
  tagging: { GET: 'GetObjectTagging', PUT: 'PutObjectTagging', DELETE: 'DeleteObjectTagging' },
  retention: { GET: 'GetObjectRetention', PUT: 'PutObjectRetention' },
  'legal-hold': { GET: 'GetObjectLegalHold', PUT: 'PutObjectLegalHold' },
  attributes: { GET: 'GetObjectAttributes' },
  restore: { POST: 'RestoreObject' },
};

const S3_BUCKET_SUBRESOURCES: Record<string, Partial<Record<string, string>>> = {
  policy: { GET: 'GetBucketPolicy', PUT: 'PutBucketPolicy', DELETE: 'DeleteBucketPolicy' },
  acl: { GET: 'GetBucketAcl', PUT: 'PutBucketAcl' },
  tagging: { GET: 'GetBucketTagging', PUT: 'PutBucketTagging', DELETE: 'PutBucketTagging' },
  versioning: { GET: 'GetBucketVersioning', PUT: 'PutBucketVersioning' },
  location: { GET: 'GetBucketLocation' },
  cors: { GET: 'GetBucketCORS', PUT: 'PutBucketCORS', DELETE: 'PutBucketCORS' },
  lifecycle: { GET: 'GetLifecycleConfiguration', PUT: 'PutLifecycleConfiguration', DELETE: 'PutLifecycleConfiguration' },
  encryption: { GET: 'GetEncryptionConfiguration', PUT: 'PutEncryptionConfiguration', DELETE: 'PutEncryptionConfiguration' },
  notification: { GET: 'GetBucketNotification', PUT: 'PutBucketNotification' },
  versions: { GET: 'ListBucketVersions' },
  uploads: { GET: 'ListBucketMultipartUploads' },
  delete: { POST: 'DeleteObject' },
};

/** A path-style S3 request: the bucket and key it names, and its IAM action. */
function s3Operation(input: AwsOperationInput): { action: string; resource: string } {
  const { method, partition } = input;
  const query = parseQuery(input.query);
  const [, rawBucket = '', ...rawKey] = input.path.split('/');
  const bucket = safeDecode(rawBucket);
  const key = safeDecode(rawKey.join('/'));
  const s3 = (action: string) => `s3:${action}`;
  if (!bucket) return { action: s3(method === 'GET' ? 'ListAllMyBuckets' : `${method}Service`), resource: '*' };
  const bucketArn = `arn:${partition}:s3:::${bucket}`;
  const sub = (table: Record<string, Partial<Record<string, string>>>) => {
    for (const [name, byMethod] of Object.entries(table)) if (query.has(name)) return byMethod[method] ?? `${method}${name}`;
    return undefined;
  };
  if (!key) {
    const named = sub(S3_BUCKET_SUBRESOURCES);
    if (named) return { action: s3(named), resource: bucketArn };
    const plain: Partial<Record<string, string>> = { GET: 'ListBucket', HEAD: 'ListBucket', PUT: 'CreateBucket', DELETE: 'DeleteBucket' };
    return { action: s3(plain[method] ?? `${method}Bucket`), resource: bucketArn };
  }
  const objectArn = `${bucketArn}/${key}`;
  if (query.has('uploadId') || query.has('uploads')) {
    if (method === 'DELETE') return { action: s3('AbortMultipartUpload'), resource: objectArn };
    if (method === 'GET') return { action: s3('ListMultipartUploadParts'), resource: objectArn };
    return { action: s3('PutObject'), resource: objectArn };
  }
  const named = sub(S3_SUBRESOURCES);
  if (named) return { action: s3(named), resource: objectArn };
  const plain: Partial<Record<string, string>> = { GET: 'GetObject', HEAD: 'GetObject', PUT: 'PutObject', DELETE: 'DeleteObject', POST: 'PutObject' };
  return { action: s3(plain[method] ?? `${method}Object`), resource: objectArn };
}

/** The hop an AWS request is. */
export function awsOperation(input: AwsOperationInput): AwsOperation {
  const tool = `aws:${input.service}`;
  const target = input.headers['x-amz-target'];
  if (target) {
    const operation = target.slice(target.lastIndexOf('.') + 1);
    const body = jsonBody(input.body);
    return { tool, action: `${prefixOf(input.service)}:${operation}`, resource: namedResource(input, (n) => str(body[n])), protocol: 'json' };
  }
  const contentType = (input.headers['content-type'] ?? '').toLowerCase();
  const form = contentType.startsWith('application/x-www-form-urlencoded') ? parseQuery(input.body ?? '') : new Map<string, string>();
  const query = parseQuery(input.query);
  const action = form.get('Action') ?? (input.service !== 's3' ? query.get('Action') : undefined);
  if (action) {
    const params = (n: string) => str(form.get(n) ?? query.get(n));
    // An SQS query request may name its queue by URL path instead of QueueUrl.
    const queuePath = input.service === 'sqs' && !params('QueueUrl') ? /^\/(\d{12})\/([^/]+)$/.exec(input.path) : null;
    const resource = queuePath ? `arn:${input.partition}:sqs:${input.region}:${queuePath[1] ?? ''}:${queuePath[2] ?? ''}` : namedResource(input, params);
    return { tool, action: `${prefixOf(input.service)}:${action}`, resource, protocol: 'query' };
  }
  if (input.service === 's3') return { tool, ...s3Operation(input), protocol: 'rest' };
  // Other REST services: the method and the path say what it is; the policy can still match them.
  const path = safeDecode(input.path).replace(/[^A-Za-z0-9_.:/-]/g, '-');
  return { tool, action: `${prefixOf(input.service)}:${input.method}${path}`.slice(0, 63), resource: '*', protocol: 'rest' };
}
