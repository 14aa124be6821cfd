import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { renderCrdFiles } from '../api/crd.js';
import { parseCommandArgs } from './common.js';

/** `chainwarden crds [--write DIR]`: the CRDs as YAML, rendered from the API schema. */
export async function runCrds(args: string[]): Promise<number> {
  const { values } = parseCommandArgs('crds', args, { write: { type: 'string' } });
  const files = renderCrdFiles();
  if (!values.write) {
    process.stdout.write(files.map((f) => f.yaml).join('---\n'));
    return 0;
  }
  await mkdir(values.write, { recursive: true });
  for (const f of files) await writeFile(path.join(values.write, f.file), f.yaml);
  process.stderr.write(`wrote ${files.map((f) => path.join(values.write ?? '', f.file)).join(', ')}\n`);
  return 0;
}
