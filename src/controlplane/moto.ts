import { existsSync, realpathSync } from 'node:fs';
import path from 'node:path';
import { ManagedProcess } from './process.js';
import { freePort } from './ports.js';
import { httpGet, httpRequest } from './http.js';
import { startWithFreshPorts } from './start.js';
import { ChainwardenError } from '../errors.js';

/** The STS/IAM wire endpoint: moto in server mode on loopback. */
export interface StsEmulator {
  endpoint: string;
  process: ManagedProcess;
  /** JSON lines, one per request moto received: what we sent, for what moto cannot check. */
  recording: string;
  /** Forgets every role, policy and session (moto's reset API). */
  reset(): Promise<void>;
}

export async function resetMoto(endpoint: string): Promise<void> {
  const res = await httpRequest('POST', `${endpoint}/moto-api/reset`);
  if (res.status !== 200) throw new ChainwardenError('reset_failed', `moto reset answered ${res.status}: ${res.body.slice(0, 200)}`);
}

/**
 * moto's own entry point, with two changes. The list of its service packages is read once: moto
 * lists its package directory (a `stat` of every one of some 190 entries) to route each request,
 * which was about a quarter of what a request cost it; what it routes to, and how, is unchanged.
 * And its recorder writes one request at a time: it appends each request through a buffered file,
 * so a request over 8 KiB goes out in pieces, and two such requests arriving at once interleave
 * into a line that is not JSON, which every later reader of the recording trips over. (Each
 * request's body is read before it waits its turn, so an upload whose body is slow to come holds
 * up no other request.)
 * Its first argument is the `moto_server` it stands for, run as it is when this Python has no moto.
 */
const MOTO_LAUNCHER = [
  'import io, os, sys, threading',
  'server = sys.argv.pop(1)',
  'try:',
  '    from moto.server import main',
  'except ImportError:',
  '    os.execv(server, [server] + sys.argv[1:])',
  'try:',
  '    import moto.backends as backends',
  '    modules = tuple(backends.list_of_moto_modules())',
  '    backends.list_of_moto_modules = lambda: modules',
  // A moto without that function (another version than the one installed here) starts as it is.
  'except (ImportError, AttributeError):',
  '    pass',
  'try:',
  '    from moto.moto_api._internal.recorder.models import Recorder',
  '    recording = threading.Lock()',
  '    record = Recorder._record_request',
  // The body is read before the lock is taken: a body still arriving would hold every other request's recording.
  '    def record_alone(self, request, body=None):',
  '        if body is None and self._user_enabled:',
  '            try:',
  '                body = request.environ["wsgi.input"].read(int(request.headers["Content-Length"]))',
  '                request.environ["wsgi.input"] = io.BytesIO(body)',
  '            except (AttributeError, KeyError, ValueError):',
  '                body = None',
  '        with recording:',
  '            return record(self, request, body)',
  '    Recorder._record_request = record_alone',
  'except (ImportError, AttributeError):',
  '    pass',
  'sys.exit(main())',
].join('\n');

/**
 * How to start `motoServer`: through the Python of the virtualenv it belongs to (beside it once
 * links are resolved) with the launcher above, else as given.
 */
export function motoCommand(motoServer: string, args: string[]): { command: string; args: string[] } {
  let python: string;
  try {
    python = path.join(path.dirname(realpathSync(motoServer)), 'python');
  } catch {
    return { command: motoServer, args };
  }
  return existsSync(python) ? { command: python, args: ['-c', MOTO_LAUNCHER, motoServer, ...args] } : { command: motoServer, args };
}

export async function startStsEmulator(motoServer: string, dir: string, timeoutMs = 60_000): Promise<StsEmulator> {
  return startWithFreshPorts(3, async () => {
    const port = await freePort();
    const endpoint = `http://127.0.0.1:${port}`;
    const recording = path.join(dir, 'moto-recording.jsonl');
    const proc = ManagedProcess.start({
      name: 'moto',
      ...motoCommand(motoServer, ['-H', '127.0.0.1', '-p', String(port)]),
      logFile: path.join(dir, 'moto.log'),
      // moto signs nothing itself but some code paths ask for a region and credentials.
      env: {
        ...process.env,
        AWS_DEFAULT_REGION: 'us-east-1',
        AWS_ACCESS_KEY_ID: 'testing',
        AWS_SECRET_ACCESS_KEY: 'testing',
        MOTO_ENABLE_RECORDING: 'True',
        MOTO_RECORDER_FILEPATH: recording,
      },
    });
    try {
      await proc.waitUntilReady(async () => (await httpGet(`${endpoint}/moto-api/data.json`)).status === 200, timeoutMs);
    } catch (err) {
      await proc.stop(1000);
      throw err;
    }
    return { endpoint, process: proc, recording, reset: () => resetMoto(endpoint) };
  });
}
