import { ChainwardenError, errorMessage } from '../errors.js';
import { printable } from '../api/text.js';
import { quietOnClosedStdout, USAGE, usageOf } from './common.js';

type Command = (args: string[]) => Promise<number>;

/**
 * Each command's module is loaded only when it runs: the operator and the sidecar are long-lived
 * processes, and every library the other commands pull in (the demo's MCP servers, the control
 * plane's tooling) would stay resident in them for nothing.
 */
const commands: Record<string, () => Promise<Command>> = {
  devenv: async () => (await import('./devenv.js')).runDevenv,
  provision: async () => (await import('./provision.js')).runProvision,
  crds: async () => (await import('./crds.js')).runCrds,
  operator: async () => (await import('./operator.js')).runOperator,
  agent: async () => (await import('./agent.js')).runAgent,
  audit: async () => (await import('./audit.js')).runAudit,
  demo: async () => (await import('./demo.js')).runDemo,
  trace: async () => (await import('./audit.js')).runTrace,
  hops: async () => (await import('./hops.js')).runHops,
  approve: async () => (await import('./hops.js')).decisionCommand('Approve'),
  reject: async () => (await import('./hops.js')).decisionCommand('Reject'),
  policy: async () => (await import('./replay.js')).runPolicy,
};

/**
 * What the user typed to run us: kubectl runs a plugin as `kubectl-chainwarden` (found on PATH,
 * a symlink or a wrapper), and its messages should name the command as the user knows it.
 */
export function programName(invokedAs: string | undefined): string {
  const base = (invokedAs ?? '').split(/[\\/]/).pop() ?? '';
  return /^kubectl-chainwarden(\.[a-z]+)?$/.test(base) ? 'kubectl chainwarden' : 'chainwarden';
}

/** The `chainwarden` command line; returns the exit code. */
export async function main(argv: string[], invokedAs?: string): Promise<number> {
  quietOnClosedStdout();
  const program = programName(invokedAs);
  const named = (text: string) => (program === 'chainwarden' ? text : text.replace(/(^|[\s:])chainwarden /g, `$1${program} `));
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(named(USAGE));
    return name === undefined ? 2 : 0;
  }
  const load = commands[name];
  if (!load) {
    process.stderr.write(named(`chainwarden: unknown command "${name}"\n\n${USAGE}`));
    return 2;
  }
  // Asked before anything runs: `demo --help` must not start a control plane.
  const options = rest.includes('--') ? rest.slice(0, rest.indexOf('--')) : rest;
  if (options.includes('--help') || options.includes('-h')) {
    process.stdout.write(named(usageOf(name) ?? USAGE));
    return 0;
  }
  try {
    const command = await load();
    return await command(rest);
  } catch (err) {
    const code = err instanceof ChainwardenError ? ` [${err.code}]` : '';
    // A message may quote what a stream, a manifest or the API server held: shown escaped, line by line.
    const message = errorMessage(err).split('\n').map(printable).join('\n');
    process.stderr.write(named(`chainwarden ${name}: ${message}${code}\n`));
    return 1;
  }
}
