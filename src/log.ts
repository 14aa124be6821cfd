import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Every field name a credential goes by: STS answers (SecretAccessKey, SessionToken), container
 * credentials (Token), SDK configuration (secretAccessKey, sessionToken), HTTP headers
 * (authorization, x-amz-security-token, cookie), tokens of every kind (pod, web identity, JWT-SVID,
 * Txn-Token, MCP upstream credentials) and key material.
 */
export const SECRET_FIELDS = [
  'SecretAccessKey',
  'secretAccessKey',
  'secret_access_key',
  'aws_secret_access_key',
  'SessionToken',
  'sessionToken',
  'session_token',
  'aws_session_token',
  'Token',
  'token',
  'accessToken',
  'idToken',
  'refreshToken',
  'webIdentityToken',
  'WebIdentityToken',
  'txnToken',
  'txn-token',
  'Txn-Token',
  'authorization',
  'Authorization',
  'proxy-authorization',
  'x-amz-security-token',
  'X-Amz-Security-Token',
  'cookie',
  'set-cookie',
  'password',
  'Password',
  'passphrase',
  'secret',
  'clientSecret',
  'privateKey',
  'private_key',
  'privateKeyPem',
  'keyPem',
  'signingKey',
] as const;

/**
 * pino's `redact` takes the top-level names (the cheap, exact paths); intermediate wildcards
 * cost ~10 µs per path per line, too much for a log line per hop, so nested fields are
 * redacted by `redactSecrets` below, at any depth up to MAX_DEPTH.
 */
export const REDACT_PATHS: string[] = SECRET_FIELDS.map((name) => (/^[A-Za-z_$][\w$]*$/.test(name) ? name : `["${name}"]`));

/** What stands for a secret value in logs, and in a hop's attributes. */
export const REDACTED = '[redacted]';
const CENSOR = REDACTED;
const MAX_DEPTH = 8;
/** Field names compared without case or separators: `X-Amz-Security-Token` is `xamzsecuritytoken`, `api.key` is `apikey`. */
const normalize = (key: string) => key.toLowerCase().replace(/[-_.:/]/g, '');
const SECRET_KEYS = new Set(SECRET_FIELDS.map(normalize));
/** Names that end like a credential's: `apiToken`, `clientSecret`, `dbPassword`, `x-api-key`, `sshPrivateKey`, `session.cookie`. */
const SECRET_ENDINGS = /(token|secret|password|passwd|passphrase|apikey|privatekey|signingkey|keypem|authorization|cookie)$/;
export const isSecretField = (key: string): boolean => {
  const name = normalize(key);
  return SECRET_KEYS.has(name) || SECRET_ENDINGS.test(name);
};

/**
 * The value with every secret field censored, at any depth. Copies only what it changes: the
 * object is the caller's. Errors are left to the `err` serializer, binary data is not walked.
 */
export function redactSecrets(value: unknown, depth = MAX_DEPTH): unknown {
  if (depth === 0 || value === null || typeof value !== 'object' || value instanceof Error || ArrayBuffer.isView(value)) return value;
  if (Array.isArray(value)) {
    const items: readonly unknown[] = value;
    let copy: unknown[] | undefined;
    items.forEach((item, i) => {
      const clean = redactSecrets(item, depth - 1);
      if (clean !== item) (copy ??= [...items])[i] = clean;
    });
    return copy ?? value;
  }
  let copy: Record<string, unknown> | undefined;
  for (const [key, item] of Object.entries(value)) {
    const clean = isSecretField(key) && item !== undefined && item !== null ? CENSOR : redactSecrets(item, depth - 1);
    if (clean !== item) (copy ??= { ...value })[key] = clean;
  }
  return copy ?? value;
}

const SECRET_NAMES = 'SecretAccessKey|secret_access_key|SessionToken|session_token|WebIdentityToken|Token|Password|Authorization|X-Amz-Security-Token|Txn-Token|ClientSecret|PrivateKey';

/**
 * Secrets inside text: error messages and stacks from SDKs, HTTP clients and the API server may
 * quote a request or an answer. Field paths cannot reach inside a string, so these patterns do.
 */
const SECRET_PATTERNS: [RegExp, string][] = [
  // JWTs: pod tokens, JWT-SVIDs, web identity tokens, Txn-Tokens.
  [/eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*/g, '[redacted]'],
  [/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{8,}/gi, '$1 [redacted]'],
  // <SecretAccessKey>…</SecretAccessKey> in STS XML.
  [new RegExp(`<(${SECRET_NAMES})>[^<]*</\\1>`, 'gi'), '<$1>[redacted]</$1>'],
  // "secretAccessKey": "…", SessionToken=…, x-amz-security-token: …
  [new RegExp(`(["']?\\b(?:aws_)?(?:${SECRET_NAMES})["']?\\s*[:=]\\s*)(["']?)[^"'\\s,&;}<)]+\\2`, 'gi'), '$1$2[redacted]$2'],
  // A bare AWS secret access key (40 characters of base64 with mixed case and digits) or session token (long base64).
  [/(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]{0,39}\d)(?=[A-Za-z0-9/+]{0,39}[a-z])(?=[A-Za-z0-9/+]{0,39}[A-Z])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])/g, '[redacted]'],
  [/[A-Za-z0-9/+]{100,}={0,2}/g, '[redacted]'],
  // A URL's user and password (http://otel:password@collector:4318/v1/traces): the URL stays, its credentials do not.
  // The scheme is bounded and the user part stops at quotes and brackets (which a URL escapes), so
  // the scan stays linear on hostile text and stops at the end of a URL quoted in JSON.
  [/\b([a-z][a-z0-9+.-]{0,31}:\/\/)[^\s/?#@"'<>]*@/gi, '$1[redacted]@'],
];

/** The text with everything that looks like a credential replaced. */
export function scrubSecrets(text: string): string {
  let out = text;
  for (const [pattern, replacement] of SECRET_PATTERNS) out = out.replace(pattern, replacement);
  return out;
}

/** Scrubs the strings of a serialized error: message, stack, and the SDK's extra fields. */
function scrubStrings(value: unknown, depth: number): unknown {
  if (typeof value === 'string') return scrubSecrets(value);
  if (depth <= 0 || value === null || typeof value !== 'object') return value;
  if (Array.isArray(value)) return value.map((v) => scrubStrings(v, depth - 1));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) out[k] = isSecretField(k) && v !== undefined && v !== null ? CENSOR : scrubStrings(v, depth - 1);
  return out;
}

/** Errors are rare and may carry anything (an SDK's `$metadata`, a quoted request): every string is scrubbed. */
const serializeError = (err: unknown): unknown => (err instanceof Error ? scrubStrings(pino.stdSerializers.err(err), MAX_DEPTH) : err);

/** A log line's fields with every secret field censored and every string scrubbed. */
function scrubbed(object: Record<string, unknown>): Record<string, unknown> {
  let out = redactSecrets(object) as Record<string, unknown>;
  for (const [key, value] of Object.entries(out)) {
    if (typeof value !== 'string') continue;
    const clean = scrubSecrets(value);
    if (clean !== value) out = { ...out, [key]: clean };
  }
  return out;
}

export function createLogger(options: { level?: string; name?: string } = {}, destination?: DestinationStream): Logger {
  return pino(
    {
      name: options.name ?? 'chainwarden',
      level: options.level ?? process.env.CHAINWARDEN_LOG_LEVEL ?? 'info',
      redact: { paths: REDACT_PATHS, censor: CENSOR },
      serializers: { err: serializeError, error: serializeError },
      formatters: {
        // Nested secret fields, and errors logged as their message (`err: errorMessage(err)`). An
        // audit record is logged as recorded: its hash covers every field, so a censored copy would
        // fail `audit verify` and `trace`; what it records was kept free of secrets when it was made.
        log: (object) => {
          if (!('audit' in object)) return scrubbed(object);
          const { audit, ...rest } = object;
          return { ...scrubbed(rest), audit };
        },
      },
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}

/** A logger that discards everything, for tests and library callers that pass none. */
export const silentLogger = (): Logger => pino({ level: 'silent' });
