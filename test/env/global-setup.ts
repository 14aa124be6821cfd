import type { TestProject } from 'vitest/node';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { localAws, startLocalEnvironment, type EnvironmentDescription } from '../../src/controlplane/environment.js';
import { pino } from 'pino';
import { createLogger } from '../../src/log.js';
import { startOperator } from '../../src/operator/operator.js';
import { registerWebhooks } from '../../src/admission/registration.js';
import { applyChartRbac, chartServiceAccountKubeConfig } from './chart.js';
import { startCollector, type Collector } from './otelcol.js';
import { startAwsFaultProxy } from './aws-faults.js';
import { serveControlPlaneFaults } from './controlplane-faults.js';

declare module 'vitest' {
  export interface ProvidedContext {
    env: EnvironmentDescription;
    /** The fault proxy the operator's STS and IAM calls pass through (test/env/aws-faults.ts). */
    awsFaults: string;
    /** Stops and starts the real API server, freezes and thaws etcd (test/env/controlplane-faults.ts). */
    controlPlaneFaults: string;
  }
}

/**
 * Starts the one control plane and STS emulator every integration test file shares. A missing
 * toolchain fails the run with what to install: integration tests never skip.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const started = Date.now();
  const env = await startLocalEnvironment({
    progress: (m) => process.stderr.write(`[control plane] ${m}\n`),
    keepState: process.env.CHAINWARDEN_KEEP_STATE === '1',
  });
  // Everything the operator logs goes to a file the tests can scan (for secrets, for audit records).
  const operatorLog = path.join(env.stateDir, 'operator.log');
  const log = createLogger({ level: process.env.CHAINWARDEN_LOG_LEVEL ?? 'info', name: 'operator' }, pino.destination({ dest: operatorLog, sync: true }));
  const auditFile = path.join(env.stateDir, 'audit.jsonl');
  // The operator runs as the chart's service account, with the chart's RBAC applied as rendered:
  // every integration test is also a test that the chart grants enough, and no more is granted.
  const admin = env.adminKubeConfig();
  let operator: Awaited<ReturnType<typeof startOperator>>;
  // Every audit record also goes out as spans to a real collector, as a chart with tracing on does.
  let collector: Collector | undefined;
  // The operator reaches STS and IAM through a proxy that tests can make misbehave for their own roles.
  const faults = await startAwsFaultProxy(env.stsEndpoint);
  try {
    collector = await startCollector(env.stateDir, (m) => process.stderr.write(`[control plane] ${m}\n`));
    await applyChartRbac(admin);
    const asChart = await chartServiceAccountKubeConfig(admin);
    operator = await startOperator({
      kc: asChart,
      log,
      aws: { ...localAws(env), stsEndpoint: faults.url, iamEndpoint: faults.url },
      auditFile,
      tracing: { endpoint: collector.tracesUrl, flushMs: 200 },
    });
    await registerWebhooks(admin, { url: operator.webhookUrl, caBundlePem: operator.caPem });
  } catch (err) {
    await collector?.stop();
    await faults.close();
    await env.stop();
    throw err;
  }
  const brokerCA = path.join(env.stateDir, 'broker-ca.crt');
  await writeFile(brokerCA, operator.caPem);
  process.stderr.write(`[control plane] ready in ${((Date.now() - started) / 1000).toFixed(1)}s at ${env.apiServer}\n`);
  project.provide('env', {
    ...env.describe(),
    brokerUrl: operator.url,
    webhookUrl: operator.webhookUrl,
    brokerCA,
    operatorLog,
    auditFile,
    otlpSpans: collector.file,
  });
  project.provide('awsFaults', faults.url);
  const processes = await serveControlPlaneFaults(env);
  project.provide('controlPlaneFaults', processes.url);
  return async () => {
    await processes.close();
    await operator.stop();
    await collector?.stop();
    await faults.close();
    await env.stop();
  };
}
