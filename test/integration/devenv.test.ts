import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { AdmissionregistrationV1Api, CoreV1Api, KubeConfig } from '@kubernetes/client-node';
import { GetCallerIdentityCommand, STSClient } from '@aws-sdk/client-sts';
import { describe, expect, it } from 'vitest';
import type { EnvironmentDescription } from '../../src/controlplane/environment.js';
import type { KubeAccess } from '../../src/kube/access.js';
import { rawRequest } from '../../src/kube/raw.js';
import { childPids, commandLine, isRunning } from '../env/processes.js';

const bin = path.resolve(import.meta.dirname, '../../bin/chainwarden.js');

async function startDevenv(): Promise<{ child: ChildProcess; env: EnvironmentDescription; stderr: () => string }> {
  const out = await mkdtemp(path.join(os.tmpdir(), 'devenv-'));
  const child = spawn(process.execPath, [bin, 'devenv', '--out', out], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (c: Buffer) => (stderr += c.toString()));
  const file = path.join(out, 'env.json');
  const deadline = Date.now() + 90_000;
  while (!existsSync(file)) {
    if (child.exitCode !== null) throw new Error(`devenv exited ${child.exitCode}: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`devenv wrote no env.json in 90s: ${stderr}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  return { child, env: JSON.parse(await readFile(file, 'utf8')) as EnvironmentDescription, stderr: () => stderr };
}

function componentsOf(pid: number): Map<number, string> {
  return new Map(childPids(pid).map((p) => [p, commandLine(p)]));
}

describe('chainwarden devenv', () => {
  it('writes env.json for a working cluster and STS endpoint, and SIGTERM leaves nothing running', async () => {
    const { child, env } = await startDevenv();
    const components = componentsOf(child.pid ?? 0);
    const commands = [...components.values()].join('\n');
    expect(commands).toMatch(/etcd/);
    expect(commands).toMatch(/kube-apiserver/);
    expect(commands).toMatch(/moto[._]server/);

    const kc = new KubeConfig();
    kc.loadFromFile(env.kubeconfig);
    const namespaces = await kc.makeApiClient(CoreV1Api).listNamespace();
    expect(namespaces.items.map((n) => n.metadata?.name)).toEqual(expect.arrayContaining(['default', 'kube-system']));
    const sts = new STSClient({ region: 'us-east-1', endpoint: env.stsEndpoint, credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'x' } });
    expect((await sts.send(new GetCallerIdentityCommand({}))).Account).toBe('123456789012');
    // The operator's two listeners, and the webhooks registered at the second.
    expect(env.brokerUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(env.webhookUrl).toMatch(/^https:\/\/127\.0\.0\.1:\d+$/);
    expect(env.webhookUrl).not.toBe(env.brokerUrl);
    const hooks = await kc.makeApiClient(AdmissionregistrationV1Api).readValidatingWebhookConfiguration({ name: 'chainwarden' });
    expect(hooks.webhooks?.[0]?.clientConfig.url).toBe(`${env.webhookUrl ?? ''}/validate`);
    // The guards the chart installs are in place too: another user, even one RBAC lets write
    // anything, may not mark an approval spent (the operator, running as the admin, may).
    const asMallory: KubeAccess = {
      getCurrentCluster: () => kc.getCurrentCluster(),
      applyToHTTPSOptions: async (options) => {
        await kc.applyToHTTPSOptions(options);
        options.headers = { ...options.headers, 'Impersonate-User': 'mallory@example.com', 'Impersonate-Group': 'system:masters' };
      },
    };
    const approval = { apiVersion: 'chainwarden.io/v1alpha1', kind: 'AgentApproval', metadata: { name: 'spent', namespace: 'default', annotations: { 'chainwarden.io/used-by': 'x' } }, spec: { taskRef: { name: 't' }, hopId: 'h1_x', decision: 'Approve' } };
    const marked = await rawRequest(asMallory, 'POST', '/apis/chainwarden.io/v1alpha1/namespaces/default/agentapprovals', approval);
    expect(marked.status).toBe(403);
    expect(JSON.stringify(marked.body)).toMatch(/the chainwarden.io\/used-by annotation marks an AgentApproval spent and is written by the chainwarden operator \(chainwarden-admin\) only; mallory@example.com may not set, change or remove it/);

    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
    for (const pid of components.keys()) expect(isRunning(pid), components.get(pid)).toBe(false);
    expect(existsSync(env.stateDir)).toBe(false);
  });

  it('leaves nothing running when it is killed outright', async () => {
    const { child } = await startDevenv();
    const components = componentsOf(child.pid ?? 0);
    expect(components.size).toBe(3);
    child.kill('SIGKILL');
    await expect.poll(() => [...components.keys()].filter(isRunning), { timeout: 10_000 }).toEqual([]);
  });
});
