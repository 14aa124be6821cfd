/** What every command shares: the usage text, argument parsing that names it, addresses, progress lines, signals. */
import { parseArgs } from 'node:util';
import { ChainwardenError, errorMessage } from '../errors.js';

export const USAGE = `usage: chainwarden <command> [options]

commands:
  demo                              the whole story on one machine: control plane, STS emulator, operator, an agent
  operator [--kubeconfig F] [--namespace NS] [--listen HOST:PORT] [--webhook-listen HOST:PORT] [--tls-cert F --tls-key F [--tls-ca F]]
           [--trust-domain D] [--issuer-url URL] [--broker-url URL] [--webhook-service NS/NAME:PORT | --webhook-url URL]
           [--sidecar-image IMAGE] [--aws-region R] [--sts-endpoint URL] [--iam-endpoint URL] [--aws-gateway-endpoint URL]
           [--permitted-role-arn GLOB ...]
           [--audit-file F] [--otlp-traces-endpoint URL] [--log-level L] [--journal-writes-per-second N]
           [--watch-namespace NS] [--no-controllers] [--identity NAME] [--leader-elect-lease-duration D]
           [--leader-elect-renew-deadline D] [--leader-elect-retry-period D] [--revocation-prune-interval D]
                                    controllers (leader only), admission webhooks and the broker
  agent --broker URL --token-file F [--ca F] [--listen 127.0.0.1:PORT] [--aws-listen 127.0.0.1:PORT] [--local-token-file F]
                                    the in-pod sidecar: loopback http to the broker over TLS; callers
                                    present the local token (created if absent) or else the pod token;
                                    --aws-listen is the pod's AWS_ENDPOINT_URL: SDK requests signed with the
                                    placeholder credentials go to AWS only as the broker signs them
  devenv --out DIR [--keep-state] [--no-operator]
                                    run a local control plane, STS emulator and the operator; write DIR/env.json
  provision                         build or install the local control plane's components now
  trace <ns>/<task> [FILE...] [--kubeconfig F] [--operator-namespace NS]
                                    the task's hop tree from audit streams (FILEs, e.g. one per replica, or stdin),
                                    checked against its status
  audit verify [FILE...]            check every hash chain in audit streams (FILEs in any order, or stdin); exit 1 on any break
  crds [--write DIR]                print the CRDs (or write one file per kind to DIR)

day-two operations (also as a kubectl plugin: kubectl chainwarden …):
  hops [-n NS] [TASK] [--pending] [-o json] [--kubeconfig F]
                                    the hops of a task (or of every task in NS) from its status: waiting ones
                                    with tool, action, resource, attributes, intent and rules, then the latest decided
  approve NS/TASK HOP --reason TEXT [--kubeconfig F]
  reject NS/TASK HOP --reason TEXT [--kubeconfig F]
                                    decide a waiting hop: creates the AgentApproval as the kubeconfig's user
  policy replay --policy FILE [--allow-breaks] [AUDIT_FILE|-]
                                    re-decide the recorded hops of an audit stream under the AgentPolicy in FILE;
                                    print each decision that would change; exit 1 if any would, 2 when the
                                    stream's chains break (--allow-breaks: replay those that verify)
`;

/**
 * One command's lines of the usage text: its own line and those under it, up to the next
 * command. `approve` and `reject` share their description, and a command's first word names it
 * (`policy replay`, `audit verify`).
 */
export function usageOf(command: string): string | undefined {
  const lines = USAGE.split('\n');
  const start = lines.findIndex((l) => l.startsWith(`  ${command} `) || l === `  ${command}`);
  if (start < 0) return undefined;
  let end = start + 1;
  while (end < lines.length && /^ {3,}\S/.test(lines[end] ?? '')) end++;
  // A line with no description of its own shares the next command's (approve, reject).
  if (end === start + 1 && !/\S {3,}\S/.test(lines[start] ?? '') && /^ {2}\S/.test(lines[end] ?? '')) {
    end++;
    while (end < lines.length && /^ {3,}\S/.test(lines[end] ?? '')) end++;
  }
  const block = lines.slice(start, end).map((l, i) => (/^ {2}\S/.test(l) ? `${i === 0 ? 'usage:' : '      '} chainwarden ${l.slice(2)}` : l.slice(2)));
  return `${block.join('\n')}\n`;
}

/** parseArgs with errors that name the command and its usage. */
export function parseCommandArgs<T extends NonNullable<Parameters<typeof parseArgs>[0]>['options']>(
  command: string,
  args: string[],
  options: T,
) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new ChainwardenError('usage', `${errorMessage(err)}\n\n${USAGE}`);
  }
}

/** For a command that takes nothing: a mistyped flag is refused before anything starts, not ignored. */
export function noArguments(command: string, args: string[]): void {
  if (args.length > 0) throw new ChainwardenError('usage', `${command} takes no arguments (got ${args.map((a) => JSON.stringify(a)).join(' ')})\n\n${usageOf(command) ?? USAGE}`);
}

/**
 * A reader that stops early (`chainwarden policy replay … | head -1`) closes the pipe: what is
 * left to print has no one to read it, and is dropped. Unheard, the EPIPE would end the command
 * with a stack trace and exit 1, which `policy replay` and `audit verify` give as a verdict; the
 * command instead runs to its end and exits with its own. Any other error on stdout is thrown as before.
 */
function dropOutputWithoutReader(err: NodeJS.ErrnoException): void {
  if (err.code !== 'EPIPE') throw err;
}

/** Once for every command (main may run several in one process, as the tests do). */
export function quietOnClosedStdout(stdout: NodeJS.WritableStream = process.stdout): void {
  if (!stdout.listeners('error').includes(dropOutputWithoutReader)) stdout.on('error', dropOutputWithoutReader);
}

export function progressLine(message: string): void {
  process.stderr.write(`• ${message}\n`);
}

export function parseHostPort(text: string, flag: string): { host: string; port: number } {
  const m = /^(.*):(\d+)$/.exec(text);
  const port = Number(m?.[2]);
  if (!m || !Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`${flag} takes HOST:PORT, e.g. 127.0.0.1:15080 (got "${text}")`);
  return { host: (m[1] ?? '').replace(/^\[|\]$/g, '') || '0.0.0.0', port };
}

/** Resolves once the process is asked to stop. */
export function untilSignal(): Promise<NodeJS.Signals> {
  return new Promise((resolve) => {
    const done = (s: NodeJS.Signals) => resolve(s);
    process.once('SIGINT', done);
    process.once('SIGTERM', done);
  });
}
