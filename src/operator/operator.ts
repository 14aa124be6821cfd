import { readFile } from 'node:fs/promises';
import type { KubeConfig } from '@kubernetes/client-node';
import { agentPolicyPlugin } from '../admission/plugins/agentpolicy.js';
import { agentTaskPlugin } from '../admission/plugins/agenttask.js';
import { approvalValidationPlugin, approverStampPlugin } from '../admission/plugins/agentapproval.js';
import { registerWebhooks, type WebhookEndpoint } from '../admission/registration.js';
import { admissionRoutes } from '../admission/server.js';
import { parseAgentPolicy, parseAgentTask } from '../api/parse.js';
import type { Logger } from '../log.js';
import { customObjectReader } from '../kube/readers.js';
import { CertificateAuthority } from '../pki/authority.js';
import { sendJson, type Handler } from '../server/http.js';
import { startHttpsServer, type RunningServer, type TlsMaterial } from '../server/https.js';

export interface OperatorOptions {
  kc: KubeConfig;
  log: Logger;
  listen?: { host: string; port: number };
  /** Serving certificate files (in cluster: mounted from a Secret). A development CA is made when absent. */
  tls?: { certFile: string; keyFile: string; caFile?: string };
  /** Register the webhooks with the API server, reaching them at this URL or Service. */
  register?: Omit<WebhookEndpoint, 'caBundlePem'>;
}

export interface RunningOperator {
  url: string;
  /** The CA that signed the serving certificate: the webhooks' caBundle and the broker's CA. */
  caPem: string;
  stop(): Promise<void>;
}

async function servingMaterial(options: OperatorOptions): Promise<TlsMaterial & { caPem: string }> {
  if (options.tls) {
    const [certPem, keyPem] = await Promise.all([readFile(options.tls.certFile, 'utf8'), readFile(options.tls.keyFile, 'utf8')]);
    const caPem = options.tls.caFile ? await readFile(options.tls.caFile, 'utf8') : certPem;
    return { certPem, keyPem, caPem };
  }
  const ca = await CertificateAuthority.create('chainwarden-development-ca');
  const host = options.listen?.host ?? '127.0.0.1';
  const pair = await ca.issueServing('chainwarden', { dnsNames: ['localhost'], ips: [host === '0.0.0.0' ? '127.0.0.1' : host] });
  return { ...pair, caPem: ca.certPem };
}

const ok: Handler = (_req, res) => Promise.resolve(sendJson(res, 200, { status: 'ok' }));

/**
 * The operator process: admission webhooks served over HTTPS on every replica. Later parts
 * (controllers, broker) attach to the same server.
 */
export async function startOperator(options: OperatorOptions): Promise<RunningOperator> {
  const { kc, log } = options;
  const policies = customObjectReader(kc, 'agentpolicies', parseAgentPolicy);
  const tasks = customObjectReader(kc, 'agenttasks', parseAgentTask);
  const routes = {
    ...admissionRoutes(
      {
        validate: [agentTaskPlugin(policies), agentPolicyPlugin(), approvalValidationPlugin(tasks)],
        mutate: [approverStampPlugin()],
      },
      log,
    ),
    '/healthz': ok,
    '/readyz': ok,
  };
  const tls = await servingMaterial(options);
  const server: RunningServer = await startHttpsServer(routes, tls, options.listen ?? { host: '127.0.0.1', port: 0 }, log);
  try {
    if (options.register) {
      await registerWebhooks(kc, { ...options.register, url: options.register.url ?? (options.register.service ? undefined : server.url), caBundlePem: tls.caPem });
    }
  } catch (err) {
    await server.close();
    throw err;
  }
  log.info({ url: server.url }, 'operator serving');
  return { url: server.url, caPem: tls.caPem, stop: () => server.close() };
}
