import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ManagedProcess } from './process.js';
import { freePort } from './ports.js';
import { httpGet } from './http.js';
import { startWithFreshPorts } from './start.js';
import type { CertificateAuthority, KeyPairPem } from '../pki/authority.js';
import { generateSigningKeyPem } from '../pki/authority.js';

/** The issuer of the service-account tokens the local API server mints. */
export const SERVICE_ACCOUNT_ISSUER = 'https://kubernetes.default.svc.cluster.local';

export interface KubeApiserver {
  url: string;
  /** The running process; a new one after each `start`. */
  readonly process: ManagedProcess;
  /** Stops the process (SIGTERM, SIGKILL after `graceMs`), as a control-plane upgrade or crash would; its state stays in etcd. */
  stop(graceMs?: number): Promise<void>;
  /** Starts it again on the same port with the same flags and keys; resolves once it is ready. */
  start(): Promise<void>;
}

export interface ApiserverInputs {
  binary: string;
  etcdUrl: string;
  dir: string;
  ca: CertificateAuthority;
  /** Used by the readiness probe; any client certificate in system:masters. */
  admin: KeyPairPem;
  timeoutMs?: number;
}

/**
 * kube-apiserver as a real cluster runs it, minus the nodes: RBAC on, client-certificate
 * authentication against its own CA, service-account token issuance (TokenRequest,
 * TokenReview, the OIDC discovery and JWKS documents), and the default admission chain, which
 * includes the mutating and validating webhooks.
 */
export async function startKubeApiserver(inputs: ApiserverInputs): Promise<KubeApiserver> {
  const pki = path.join(inputs.dir, 'pki');
  await mkdir(pki, { recursive: true });
  const serving = await inputs.ca.issueServing('kube-apiserver', {
    dnsNames: ['localhost', 'kubernetes', 'kubernetes.default', 'kubernetes.default.svc', 'kubernetes.default.svc.cluster.local'],
    ips: ['127.0.0.1', '10.0.0.1'],
  });
  const signing = await generateSigningKeyPem();
  const files = {
    ca: path.join(pki, 'ca.crt'),
    cert: path.join(pki, 'apiserver.crt'),
    key: path.join(pki, 'apiserver.key'),
    saKey: path.join(pki, 'sa.key'),
    saPub: path.join(pki, 'sa.pub'),
  };
  await writeFile(files.ca, inputs.ca.certPem);
  await writeFile(files.cert, serving.certPem);
  await writeFile(files.key, serving.keyPem, { mode: 0o600 });
  await writeFile(files.saKey, signing.privateKeyPem, { mode: 0o600 });
  await writeFile(files.saPub, signing.publicKeyPem);

  const launch = async (port: number): Promise<ManagedProcess> => {
    const url = `https://127.0.0.1:${port}`;
    const proc = ManagedProcess.start({
      name: 'kube-apiserver',
      command: inputs.binary,
      args: [
        `--etcd-servers=${inputs.etcdUrl}`,
        '--bind-address=127.0.0.1',
        '--advertise-address=127.0.0.1',
        `--secure-port=${port}`,
        `--tls-cert-file=${files.cert}`,
        `--tls-private-key-file=${files.key}`,
        `--client-ca-file=${files.ca}`,
        '--authorization-mode=RBAC',
        `--service-account-issuer=${SERVICE_ACCOUNT_ISSUER}`,
        `--service-account-key-file=${files.saPub}`,
        `--service-account-signing-key-file=${files.saKey}`,
        '--service-cluster-ip-range=10.0.0.0/24',
        '--allow-privileged=true',
        // Without nodes nothing serves the `kubernetes` Service, so do not maintain its endpoints.
        '--endpoint-reconciler-type=none',
        `--cert-dir=${pki}`,
        '--profiling=false',
        '--v=1',
      ],
      logFile: path.join(inputs.dir, 'kube-apiserver.log'),
    });
    try {
      await proc.waitUntilReady(async () => {
        const res = await httpGet(`${url}/readyz`, { ca: inputs.ca.certPem, cert: inputs.admin.certPem, key: inputs.admin.keyPem });
        return res.status === 200;
      }, inputs.timeoutMs ?? 90_000);
    } catch (err) {
      await proc.stop(1000);
      throw err;
    }
    return proc;
  };

  const first = await startWithFreshPorts(3, async () => {
    const port = await freePort();
    return { port, proc: await launch(port) };
  });
  let current = first.proc;
  return {
    url: `https://127.0.0.1:${first.port}`,
    get process() {
      return current;
    },
    stop: (graceMs) => current.stop(graceMs),
    start: async () => {
      if (current.running) return;
      // The port was ours a moment ago; another process taking it in between is a failure to start, said as such.
      current = await launch(first.port);
    },
  };
}
