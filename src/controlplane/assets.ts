import { existsSync } from 'node:fs';
import { mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { MissingToolError, ChainwardenError } from '../errors.js';
import { cacheRoot, withLock } from './cache.js';
import { isExecutable, run, which } from './exec.js';
import { ETCD_VERSION, HELM_VERSION, KUBERNETES_VERSION, MIN_GO_VERSION, MOTO_VERSION, OPA_VERSION, OTEL_COLLECTOR_STABLE_VERSION, OTEL_COLLECTOR_VERSION } from './versions.js';

/** Executables the local control plane runs. */
export interface Assets {
  kubeApiserver: string;
  etcd: string;
  motoServer: string;
}

export type Progress = (message: string) => void;

interface GoBinary {
  name: string;
  /** Module that holds the main package, and its version. */
  module: string;
  version: string;
  pkg: string;
  /** Computes the wrapper module's replace lines from the upstream go.mod. */
  replaces?: (upstreamGoMod: string) => string[];
  ldflags?: string[];
}

/**
 * Upstream kubernetes replaces every `k8s.io/*` staging module with a directory inside its own
 * repository, which a module consumer cannot see. The same code is published as `v0.X.Y` of
 * each staging module, so the wrapper maps every one of them there; the list is read from the
 * upstream go.mod rather than written down, so a version bump cannot leave one out.
 */
export function stagingReplaces(upstreamGoMod: string, kubernetesVersion: string): string[] {
  const [, minor, patch] = kubernetesVersion.split('.');
  const stagingVersion = `v0.${minor}.${patch}`;
  const lines: string[] = [];
  for (const match of upstreamGoMod.matchAll(/^\s*(k8s\.io\/[\w.-]+)\s+=>\s+\.\/staging\//gm)) {
    lines.push(`${match[1]} => ${match[1]} ${stagingVersion}`);
  }
  if (lines.length === 0) {
    throw new ChainwardenError('provision_failed', `no staging modules found in k8s.io/kubernetes v${kubernetesVersion}'s go.mod`);
  }
  return lines;
}

const kubeApiserver: GoBinary = {
  name: 'kube-apiserver',
  module: 'k8s.io/kubernetes',
  version: `v${KUBERNETES_VERSION}`,
  pkg: 'k8s.io/kubernetes/cmd/kube-apiserver',
  replaces: (goMod) => stagingReplaces(goMod, KUBERNETES_VERSION),
  ldflags: (() => {
    const [major, minor] = KUBERNETES_VERSION.split('.');
    const v = 'k8s.io/component-base/version';
    return [
      `-X ${v}.gitVersion=v${KUBERNETES_VERSION}`,
      `-X ${v}.gitMajor=${major}`,
      `-X ${v}.gitMinor=${minor}`,
      `-X ${v}.gitTreeState=clean`,
    ];
  })(),
};

const etcd: GoBinary = {
  name: 'etcd',
  module: 'go.etcd.io/etcd/server/v3',
  version: `v${ETCD_VERSION}`,
  pkg: 'go.etcd.io/etcd/server/v3',
};

const helm: GoBinary = {
  name: 'helm',
  module: 'helm.sh/helm/v3',
  version: `v${HELM_VERSION}`,
  pkg: 'helm.sh/helm/v3/cmd/helm',
  ldflags: [`-X helm.sh/helm/v3/internal/version.version=v${HELM_VERSION}`],
};

/** helm, from `CHAINWARDEN_HELM`, else built once from its Go module into the cache. */
export async function ensureHelm(progress: Progress = () => {}): Promise<string> {
  return process.env.CHAINWARDEN_HELM ?? buildGoBinary(helm, progress);
}

const opa: GoBinary = {
  name: 'opa',
  module: 'github.com/open-policy-agent/opa',
  version: `v${OPA_VERSION}`,
  pkg: 'github.com/open-policy-agent/opa',
  ldflags: [`-X github.com/open-policy-agent/opa/v1/version.Version=${OPA_VERSION}`],
};

/** OPA, for the benchmark's comparison: `CHAINWARDEN_OPA`, else built once from its Go module into the cache. */
export async function ensureOpa(progress: Progress = () => {}): Promise<string> {
  return process.env.CHAINWARDEN_OPA ?? buildGoBinary(opa, progress);
}

const collectorBuilder: GoBinary = {
  name: 'otelcol-builder',
  module: 'go.opentelemetry.io/collector/cmd/builder',
  version: `v${OTEL_COLLECTOR_VERSION}`,
  pkg: 'go.opentelemetry.io/collector/cmd/builder',
};

/** What the test collector is made of: module, version. */
const COLLECTOR_MODULES: readonly (readonly [string, string])[] = [
  ['go.opentelemetry.io/collector/otelcol', `v${OTEL_COLLECTOR_VERSION}`],
  ['go.opentelemetry.io/collector/receiver/otlpreceiver', `v${OTEL_COLLECTOR_VERSION}`],
  ['github.com/open-telemetry/opentelemetry-collector-contrib/exporter/fileexporter', `v${OTEL_COLLECTOR_VERSION}`],
  ['go.opentelemetry.io/collector/confmap/provider/fileprovider', `v${OTEL_COLLECTOR_STABLE_VERSION}`],
  ['go.opentelemetry.io/collector/confmap/provider/envprovider', `v${OTEL_COLLECTOR_STABLE_VERSION}`],
];

/**
 * An OpenTelemetry Collector with the OTLP receiver and the file exporter, for the tracing
 * tests: `CHAINWARDEN_OTELCOL`, else built once into the cache. The collector's builder writes
 * the distribution's sources; the build then resolves only what the binary imports (the
 * builder's own `go mod tidy` would also fetch the components' test-only dependencies).
 */
export async function ensureOtelCollector(progress: Progress = () => {}): Promise<string> {
  const override = process.env.CHAINWARDEN_OTELCOL;
  if (override) return override;
  const home = path.join(cacheRoot(), 'otelcol', `v${OTEL_COLLECTOR_VERSION}`);
  const binary = path.join(home, 'otelcol');
  if (await isExecutable(binary)) return binary;
  const builder = await buildGoBinary(collectorBuilder, progress);
  return withLock(path.join(home, '.lock'), () => progress(`waiting for another process building the OpenTelemetry Collector v${OTEL_COLLECTOR_VERSION}`), async () => {
    if (await isExecutable(binary)) return binary;
    const go = await requireGo();
    const src = path.join(home, 'src');
    await rm(src, { recursive: true, force: true });
    await mkdir(src, { recursive: true });
    progress(`building the OpenTelemetry Collector v${OTEL_COLLECTOR_VERSION} from its Go modules (first run only)`);
    const env = goEnv();
    const component = (kind: string, module: string) => {
      const found = COLLECTOR_MODULES.find(([m]) => m.endsWith(module));
      if (!found) throw new ChainwardenError('provision_failed', `no pinned version for ${module}`);
      return `${kind}:\n  - gomod: ${found[0]} ${found[1]}\n`;
    };
    const manifest = [
      `dist:\n  name: otelcol\n  description: OTLP receiver and file exporter\n  output_path: ${src}\n  version: ${OTEL_COLLECTOR_VERSION}\n`,
      component('receivers', '/otlpreceiver'),
      component('exporters', '/fileexporter'),
      `providers:\n${COLLECTOR_MODULES.filter(([m]) => m.includes('/confmap/provider/')).map(([m, v]) => `  - gomod: ${m} ${v}\n`).join('')}`,
    ].join('');
    await writeFile(path.join(home, 'manifest.yaml'), manifest);
    await run(builder, ['--config', path.join(home, 'manifest.yaml'), '--skip-compilation', '--skip-get-modules'], { env, cwd: home });
    await writeFile(
      path.join(src, 'go.mod'),
      `module chainwarden.local/build/otelcol\n\ngo ${MIN_GO_VERSION}.0\n\nrequire (\n${COLLECTOR_MODULES.map(([m, v]) => `\t${m} ${v}`).join('\n')}\n)\n`,
    );
    const partial = `${binary}.partial`;
    await run(go, ['build', '-o', partial, '.'], { env, cwd: src });
    await rename(partial, binary);
    progress(`built ${binary}`);
    return binary;
  });
}

function goEnv(): NodeJS.ProcessEnv {
  // Never let the go command fetch a toolchain of its own, and let it edit the wrapper's go.mod.
  return { ...process.env, GOTOOLCHAIN: 'local', GOFLAGS: '-mod=mod' };
}

export function versionAtLeast(have: string, want: string): boolean {
  const a = have.split('.').map(Number);
  const b = want.split('.').map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    const x = a[i] ?? 0;
    const y = b[i] ?? 0;
    if (x !== y) return x > y;
  }
  return true;
}

async function requireGo(): Promise<string> {
  const why = `to build kube-apiserver v${KUBERNETES_VERSION}, etcd v${ETCD_VERSION} and helm v${HELM_VERSION} on first use (they are cached after)`;
  const go = await which('go');
  if (!go) {
    throw new MissingToolError(
      `Go ${MIN_GO_VERSION} or newer is needed ${why}. Install Go, or set KUBEBUILDER_ASSETS to a directory holding kube-apiserver and etcd.`,
    );
  }
  const version = (await run(go, ['env', 'GOVERSION'], { env: goEnv() })).trim().replace(/^go/, '');
  if (!versionAtLeast(version, MIN_GO_VERSION)) {
    throw new MissingToolError(`Go ${MIN_GO_VERSION} or newer is needed ${why}; found go${version}. Upgrade Go, or set KUBEBUILDER_ASSETS.`);
  }
  return go;
}

async function buildGoBinary(spec: GoBinary, progress: Progress): Promise<string> {
  const home = path.join(cacheRoot(), spec.name, spec.version);
  const binary = path.join(home, spec.name);
  if (await isExecutable(binary)) return binary;
  return withLock(path.join(home, '.lock'), () => progress(`waiting for another process building ${spec.name} ${spec.version}`), async () => {
    if (await isExecutable(binary)) return binary;
    const go = await requireGo();
    const src = path.join(home, 'src');
    await rm(src, { recursive: true, force: true });
    await mkdir(src, { recursive: true });
    progress(`building ${spec.name} ${spec.version} from its Go module (first run only; this takes several minutes)`);
    const env = goEnv();
    let replaceBlock = '';
    if (spec.replaces) {
      const info = JSON.parse(await run(go, ['mod', 'download', '-json', `${spec.module}@${spec.version}`], { env, cwd: src })) as { GoMod: string };
      const lines = spec.replaces(await readFile(info.GoMod, 'utf8'));
      replaceBlock = `\nreplace (\n${lines.map((l) => `\t${l}`).join('\n')}\n)\n`;
    }
    await writeFile(
      path.join(src, 'go.mod'),
      `module chainwarden.local/build/${spec.name}\n\ngo ${MIN_GO_VERSION}.0\n\nrequire ${spec.module} ${spec.version}\n${replaceBlock}`,
    );
    await writeFile(path.join(src, 'tools.go'), `//go:build tools\n\npackage tools\n\nimport _ "${spec.pkg}"\n`);
    await run(go, ['mod', 'tidy'], { env, cwd: src });
    const partial = `${binary}.partial`;
    const args = ['build', '-o', partial];
    if (spec.ldflags) args.push('-ldflags', spec.ldflags.join(' '));
    args.push(spec.pkg);
    await run(go, args, { env, cwd: src });
    await rename(partial, binary);
    progress(`built ${binary}`);
    return binary;
  });
}

/** moto alone, for what needs an AWS emulator and no control plane: `CHAINWARDEN_MOTO_SERVER`, or installed once into the cache. */
export function ensureMoto(progress: Progress = () => {}): Promise<string> {
  const override = process.env.CHAINWARDEN_MOTO_SERVER;
  return override ? Promise.resolve(override) : installMoto(progress);
}

async function installMoto(progress: Progress): Promise<string> {
  const home = path.join(cacheRoot(), 'moto', MOTO_VERSION);
  const venv = path.join(home, 'venv');
  const server = path.join(venv, 'bin', 'moto_server');
  const marker = path.join(home, '.complete');
  if (existsSync(marker) && (await isExecutable(server))) return server;
  return withLock(path.join(home, '.lock'), () => progress(`waiting for another process installing moto ${MOTO_VERSION}`), async () => {
    if (existsSync(marker) && (await isExecutable(server))) return server;
    const python = (await which('python3')) ?? (await which('python'));
    if (!python) {
      throw new MissingToolError(
        `Python 3 with venv and pip is needed to install the STS/IAM emulator (moto ${MOTO_VERSION}) on first use. Install python3 and python3-venv, or set CHAINWARDEN_MOTO_SERVER to a moto_server executable.`,
      );
    }
    progress(`installing moto ${MOTO_VERSION} into ${venv}`);
    await rm(venv, { recursive: true, force: true });
    try {
      await run(python, ['-m', 'venv', venv]);
    } catch (err) {
      throw new MissingToolError(
        `could not create a Python virtualenv for moto (${(err as Error).message.split('\n').pop() ?? ''}). Install python3-venv (Debian/Ubuntu) or set CHAINWARDEN_MOTO_SERVER.`,
      );
    }
    await run(path.join(venv, 'bin', 'python'), ['-m', 'pip', 'install', '--disable-pip-version-check', '--quiet', `moto[server]==${MOTO_VERSION}`]);
    await writeFile(marker, `${MOTO_VERSION}\n`);
    return server;
  });
}

async function fromKubebuilderAssets(dir: string): Promise<Pick<Assets, 'kubeApiserver' | 'etcd'>> {
  const found = { kubeApiserver: path.join(dir, 'kube-apiserver'), etcd: path.join(dir, 'etcd') };
  for (const file of Object.values(found)) {
    if (!(await isExecutable(file))) {
      throw new ChainwardenError(
        'provision_failed',
        `KUBEBUILDER_ASSETS is set to ${dir} but ${path.basename(file)} is not an executable there; point it at a directory holding kube-apiserver and etcd, or unset it to build them.`,
      );
    }
  }
  return found;
}

/**
 * Finds or builds everything the local control plane runs. `KUBEBUILDER_ASSETS` (the envtest
 * convention) supplies kube-apiserver and etcd; `CHAINWARDEN_MOTO_SERVER` supplies moto.
 * Otherwise each is built or installed once into the cache and reused. The two Go builds share
 * the machine's cores, so they run one after the other while moto installs beside them.
 */
export async function ensureAssets(progress: Progress = () => {}): Promise<Assets> {
  const moto = ensureMoto(progress);
  // Do not let a moto failure go unobserved while the Go builds run.
  moto.catch(() => {});
  const assetsDir = process.env.KUBEBUILDER_ASSETS;
  let kube: Pick<Assets, 'kubeApiserver' | 'etcd'>;
  if (assetsDir) {
    kube = await fromKubebuilderAssets(assetsDir);
  } else {
    const etcdBinary = await buildGoBinary(etcd, progress);
    kube = { etcd: etcdBinary, kubeApiserver: await buildGoBinary(kubeApiserver, progress) };
  }
  return { ...kube, motoServer: await moto };
}
