import { pino } from 'pino';
import { ChainwardenError, errorMessage } from '../errors.js';
import { createLogger, scrubSecrets } from '../log.js';
import { startOperator } from '../operator/operator.js';
import { parsePermittedRoleArn } from '../credentials/permitted.js';
import { parseDuration } from '../api/duration.js';
import { systemClock } from '../runtime/clock.js';
import { skewedClock } from '../runtime/faults.js';
import { loadKubeAccess } from '../kube/access.js';
import { parseCommandArgs, parseHostPort, untilSignal } from './common.js';

function parseService(text: string): { namespace: string; name: string; port: number } {
  const m = /^([a-z0-9-]+)\/([a-z0-9-]+):(\d+)$/.exec(text);
  if (!m) throw new ChainwardenError('usage', `--webhook-service takes NAMESPACE/NAME:PORT, e.g. chainwarden-system/chainwarden:443 (got "${scrubSecrets(text)}")`);
  return { namespace: m[1] ?? '', name: m[2] ?? '', port: Number(m[3]) };
}

/** A positive number of writes a second, e.g. 20 or 2.5. */
export function parseRate(text: string, flag: string): number {
  const rate = /^\d+(\.\d+)?$/.test(text) ? Number(text) : NaN;
  if (!(rate > 0) || rate > 10_000) throw new ChainwardenError('usage', `${flag} takes status writes a second, a number above 0 and at most 10000, e.g. 20 (got "${scrubSecrets(text)}")`);
  return rate;
}

/**
 * The traces URL the standard variables name: OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, or
 * OTEL_EXPORTER_OTLP_ENDPOINT, a base URL whose /v1/traces OTLP/HTTP sends traces to.
 */
const otlpTracesFromEnvironment = (env: NodeJS.ProcessEnv) =>
  env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? (env.OTEL_EXPORTER_OTLP_ENDPOINT ? `${env.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces` : undefined);

/** The operator's tracing option: from `endpoint`, else the standard variables (as `devenv` and `demo` pass them on); none when neither is set. */
export function tracingOption(endpoint = otlpTracesFromEnvironment(process.env)): { endpoint: string } | undefined {
  return endpoint ? { endpoint: parseOtlpEndpoint(endpoint) } : undefined;
}

export function parseOtlpEndpoint(text: string): string {
  let url: URL | undefined;
  try {
    url = new URL(text);
  } catch {
    url = undefined;
  }
  if (!url || !['http:', 'https:'].includes(url.protocol)) {
    throw new ChainwardenError('usage', `--otlp-traces-endpoint (or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) takes the OTLP/HTTP traces URL, e.g. http://otel-collector.observability:4318/v1/traces (got "${scrubSecrets(text)}")`);
  }
  return url.href;
}

const LOOPBACK = new Set(['localhost', '127.0.0.1', '::1']);

export interface WebhookEndpoint {
  /** Where the webhook listener listens. */
  listen: { host: string; port: number };
  /** The URL to register; undefined: the webhook listener's own. */
  url?: string;
  /** Why the flags given may not be what the user meant, to log at start. */
  warning?: string;
}

/**
 * Where the webhooks listen, and the URL the API server is told to call. `--webhook-url` is that
 * URL. Without `--webhook-listen`, the webhooks listen on the port a `--webhook-url` of this
 * machine names (loopback, or the `--listen` host), else on a free port. Before the webhooks had
 * a listener of their own they shared the broker's, so a `--webhook-url` naming the broker's own
 * address meant "this process": it still does, now meaning the webhook listener.
 */
export function webhookEndpoint(listen: { host: string; port: number }, webhookListen: string | undefined, webhookUrl: string | undefined): WebhookEndpoint {
  let url: URL | undefined;
  try {
    url = webhookUrl === undefined ? undefined : new URL(webhookUrl);
  } catch {
    throw new ChainwardenError('usage', `--webhook-url takes the https URL the API server calls the webhooks at, e.g. https://127.0.0.1:9443 (got "${webhookUrl ?? ''}")`);
  }
  const own = webhookListen === undefined ? undefined : parseHostPort(webhookListen, '--webhook-listen');
  if (!url) return { listen: own ?? { host: listen.host, port: 0 } };
  const host = url.hostname.replace(/^\[|\]$/g, '');
  const port = Number(url.port || 443);
  const local = LOOPBACK.has(host) || host === listen.host;
  if (local && port === listen.port) {
    if (own) throw new ChainwardenError('usage', `--webhook-url ${url.href} names the broker's --listen address; point it at the webhook listener (--webhook-listen ${webhookListen ?? ''})`);
    return { listen: { host, port: 0 }, url: undefined, warning: `--webhook-url ${url.href} names the broker's --listen address; the webhooks have a listener of their own (--webhook-listen), and the API server is told to call that one` };
  }
  if (own) return { listen: own, url: webhookUrl };
  if (local) return { listen: { host: listen.host, port }, url: webhookUrl };
  return { listen: { host: listen.host, port: 0 }, url: webhookUrl, warning: `--webhook-url ${url.href} names another host: make it reach the webhook listener, and give --webhook-listen HOST:PORT for where that listens (a free port without it)` };
}

/** `chainwarden operator`: controllers (when leader), admission webhooks and the broker, until SIGTERM. */
export async function runOperator(args: string[]): Promise<number> {
  const { values } = parseCommandArgs('operator', args, {
    kubeconfig: { type: 'string' },
    namespace: { type: 'string', default: process.env.POD_NAMESPACE ?? 'chainwarden-system' },
    listen: { type: 'string', default: '0.0.0.0:8443' },
    'webhook-listen': { type: 'string' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'tls-ca': { type: 'string' },
    'tls-reload-interval': { type: 'string', default: '30s' },
    'trust-domain': { type: 'string', default: 'cluster.local' },
    'issuer-url': { type: 'string' },
    'broker-url': { type: 'string' },
    'sidecar-image': { type: 'string' },
    'webhook-url': { type: 'string' },
    'webhook-service': { type: 'string' },
    'log-level': { type: 'string', default: process.env.CHAINWARDEN_LOG_LEVEL ?? 'info' },
    'aws-region': { type: 'string', default: process.env.AWS_REGION ?? process.env.AWS_DEFAULT_REGION ?? 'us-east-1' },
    'sts-endpoint': { type: 'string', default: process.env.AWS_ENDPOINT_URL_STS },
    'iam-endpoint': { type: 'string', default: process.env.AWS_ENDPOINT_URL_IAM },
    'aws-gateway-endpoint': { type: 'string' },
    'permitted-role-arn': { type: 'string', multiple: true },
    'audit-file': { type: 'string' },
    'otlp-traces-endpoint': { type: 'string' },
    'no-controllers': { type: 'boolean', default: false },
    'watch-namespace': { type: 'string' },
    identity: { type: 'string', default: process.env.POD_NAME },
    'leader-elect-lease-duration': { type: 'string', default: '15s' },
    'leader-elect-renew-deadline': { type: 'string', default: '10s' },
    'leader-elect-retry-period': { type: 'string', default: '2s' },
    'revocation-prune-interval': { type: 'string', default: '5m' },
    'journal-writes-per-second': { type: 'string', default: '20' },
  });
  const leaderElection = {
    leaseDurationMs: parseDuration(values['leader-elect-lease-duration'] ?? '', '--leader-elect-lease-duration'),
    renewDeadlineMs: parseDuration(values['leader-elect-renew-deadline'] ?? '', '--leader-elect-renew-deadline'),
    retryPeriodMs: parseDuration(values['leader-elect-retry-period'] ?? '', '--leader-elect-retry-period'),
  };
  // A leader that steps down at its renew deadline is sure to stop before a standby may take the lease.
  if (leaderElection.renewDeadlineMs >= leaderElection.leaseDurationMs) throw new ChainwardenError('usage', '--leader-elect-renew-deadline must be shorter than --leader-elect-lease-duration');
  if (Boolean(values['tls-cert']) !== Boolean(values['tls-key'])) throw new ChainwardenError('usage', '--tls-cert and --tls-key go together');
  const tlsReloadIntervalMs = parseDuration(values['tls-reload-interval'] ?? '', '--tls-reload-interval');
  if (tlsReloadIntervalMs < 1_000) throw new ChainwardenError('usage', '--tls-reload-interval must be at least 1s');
  const log = createLogger({ level: values['log-level'], name: 'operator' }, pino.destination(1));
  const listen = parseHostPort(values.listen ?? '', '--listen');
  const webhooks = webhookEndpoint(listen, values['webhook-listen'], values['webhook-url']);
  if (webhooks.warning) log.warn(webhooks.warning);
  const register = values['webhook-service'] ? { service: parseService(values['webhook-service']) } : values['webhook-url'] ? { url: webhooks.url } : undefined;
  const operator = await startOperator({
    kc: await loadKubeAccess({ file: values.kubeconfig }),
    log,
    namespace: values.namespace,
    listen,
    webhookListen: webhooks.listen,
    tls: values['tls-cert'] && values['tls-key'] ? { certFile: values['tls-cert'], keyFile: values['tls-key'], caFile: values['tls-ca'] } : undefined,
    tlsReloadIntervalMs,
    register,
    trustDomain: values['trust-domain'],
    issuerUrl: values['issuer-url'],
    podBrokerUrl: values['broker-url'],
    sidecarImage: values['sidecar-image'],
    aws: {
      region: values['aws-region'] ?? 'us-east-1',
      stsEndpoint: values['sts-endpoint'],
      iamEndpoint: values['iam-endpoint'],
      gatewayEndpoint: values['aws-gateway-endpoint'],
      permittedRoleArns: (values['permitted-role-arn'] ?? []).map(parsePermittedRoleArn),
    },
    auditFile: values['audit-file'],
    tracing: tracingOption(values['otlp-traces-endpoint']),
    controllers: !values['no-controllers'],
    watchNamespace: values['watch-namespace'],
    identity: values.identity,
    leaderElection,
    pruneIntervalMs: parseDuration(values['revocation-prune-interval'] ?? '', '--revocation-prune-interval'),
    journalWritesPerSecond: parseRate(values['journal-writes-per-second'] ?? '', '--journal-writes-per-second'),
    clock: skewedClock(systemClock),
  });
  const signal = await untilSignal();
  log.info({ signal }, 'stopping');
  await operator.stop().catch((err: unknown) => log.error({ err: errorMessage(err) }, 'unclean stop'));
  return 0;
}
