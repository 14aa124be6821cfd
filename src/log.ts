import { pino, type DestinationStream, type Logger } from 'pino';

export type { Logger };

/**
 * Every path that can hold a secret is redacted, wherever it sits in a log line: STS answers,
 * container-credential responses, bearer tokens and request headers.
 */
export const REDACT_PATHS = [
  'SecretAccessKey',
  'SessionToken',
  'Token',
  'token',
  'authorization',
  'Authorization',
  '*.SecretAccessKey',
  '*.SessionToken',
  '*.Token',
  '*.token',
  '*.secretAccessKey',
  '*.sessionToken',
  '*.authorization',
  '*.Authorization',
  '*.*.SecretAccessKey',
  '*.*.SessionToken',
  '*.*.secretAccessKey',
  '*.*.sessionToken',
  'req.headers.authorization',
  'headers.authorization',
];

export function createLogger(options: { level?: string; name?: string } = {}, destination?: DestinationStream): Logger {
  return pino(
    {
      name: options.name ?? 'chainwarden',
      level: options.level ?? process.env.CHAINWARDEN_LOG_LEVEL ?? 'info',
      redact: { paths: REDACT_PATHS, censor: '[redacted]' },
      base: undefined,
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    destination,
  );
}

/** A logger that discards everything, for tests and library callers that pass none. */
export const silentLogger = (): Logger => pino({ level: 'silent' });
