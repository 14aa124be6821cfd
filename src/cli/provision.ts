import { ensureAssets, ensureHelm, ensureOtelCollector } from '../controlplane/assets.js';
import { noArguments, progressLine } from './common.js';

/** Builds or installs everything the local control plane needs, so a later start is quick. */
export async function runProvision(args: string[]): Promise<number> {
  noArguments('provision', args);
  const assets = await ensureAssets(progressLine);
  const helm = await ensureHelm(progressLine);
  const otelCollector = await ensureOtelCollector(progressLine);
  process.stdout.write(`${JSON.stringify({ ...assets, helm, otelCollector }, null, 2)}\n`);
  return 0;
}
