import { ensureAssets, ensureHelm } from '../controlplane/assets.js';
import { progressLine } from './main.js';

/** Builds or installs everything the local control plane needs, so a later start is quick. */
export async function runProvision(_args: string[]): Promise<number> {
  const assets = await ensureAssets(progressLine);
  const helm = await ensureHelm(progressLine);
  process.stdout.write(`${JSON.stringify({ ...assets, helm }, null, 2)}\n`);
  return 0;
}
