/**
 * A load generator, run as its own process so it does not share an event loop with what it
 * measures. It reads a JSON job from argv and prints a JSON result.
 *
 * - closed: `concurrency` loops for `seconds`, each sending the next request when the last
 *   answered: the most the target sustains.
 * - open: requests start on a fixed schedule (`rate` per second) whatever the answers do;
 *   latency is counted from the scheduled start, so a stall shows up in the percentiles
 *   instead of slowing the offered rate down (no coordinated omission). Between starts it
 *   sleeps: on a small machine a spinning generator would take a core from what it measures.
 */
import http from 'node:http';
import https from 'node:https';
import { summarize } from './stats.js';

/** Seconds of load run before each measured run and not counted, unless a job says otherwise. */
export const WARMUP_SECONDS = 3;
/**
 * The warm-up of a run through a sidecar started for it: a sidecar lives as long as its pod, and
 * a new one spends its first seconds opening connections and compiling its code on the cores the
 * run shares. Its latencies are reported apart (`warmup`), not dropped.
 */
export const NEW_SIDECAR_WARMUP_SECONDS = 10;

export interface LoadJob {
  mode: 'closed' | 'open';
  url: string;
  method: 'GET' | 'POST';
  /** One body and header set per virtual client; requests take them round-robin. */
  clients: { headers: Record<string, string>; body?: string }[];
  ca?: string;
  seconds: number;
  concurrency?: number;
  rate?: number;
  /**
   * Seconds of the same load, at the same rate or concurrency, run first and not counted (3
   * unless set): the target's code is compiled and its connections open before anything is
   * measured, whatever ran on it before. Each run is measured warm, so two runs compare alike.
   */
  warmupSeconds?: number;
  /** Connections kept to the target (default 32). */
  maxSockets?: number;
}

export interface LoadResult {
  mode: string;
  requests: number;
  /** Requests answered during the warm-up, not counted in the figures: with them, what the target served over the whole run. */
  warmupRequests: number;
  /** The warm-up's own latencies, measured as the run's are: what a target just started, or just switched to, answers at first. */
  warmup: { p50Ms: number; p99Ms: number; maxMs: number };
  errors: number;
  statuses: Record<string, number>;
  /** Requests that got no answer (status 0), by the client's error code: a reset, a refused connection. */
  failures?: Record<string, number>;
  seconds: number;
  /** Every answer a second, refusals included. */
  ratePerSecond: number;
  /** The 2xx answers a second: what the target served, not what it turned away (a 503 `journal_behind`). */
  okPerSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

function requester(job: LoadJob) {
  const url = new URL(job.url);
  const secure = url.protocol === 'https:';
  // Connections are capped as a fleet of sidecars would hold them (each keeps a few alive);
  // past that, requests wait for a connection, and the wait counts in their latency.
  const sockets = job.maxSockets ?? 32;
  const agent = secure ? new https.Agent({ keepAlive: true, maxSockets: sockets, ca: job.ca }) : new http.Agent({ keepAlive: true, maxSockets: sockets });
  const lib = secure ? https : http;
  let next = 0;
  const failures: Record<string, number> = {};
  const send = () =>
    new Promise<number>((resolve) => {
      const client = job.clients[next++ % job.clients.length] ?? { headers: {} };
      const req = lib.request(url, { method: job.method, agent, headers: { 'content-type': 'application/json', ...client.headers } }, (res) => {
        res.resume();
        res.on('end', () => resolve(res.statusCode ?? 0));
      });
      req.on('error', (err: NodeJS.ErrnoException) => {
        const cause = err.code ?? err.message;
        failures[cause] = (failures[cause] ?? 0) + 1;
        resolve(0);
      });
      req.end(client.body);
    });
  return { send, failures };
}

async function closed(job: LoadJob, send: () => Promise<number>, until: number, record: (started: number, status: number) => void) {
  const loop = async () => {
    while (performance.now() < until) {
      const started = performance.now();
      record(started, await send());
    }
  };
  await Promise.all(Array.from({ length: job.concurrency ?? 16 }, loop));
}

async function open(job: LoadJob, send: () => Promise<number>, start: number, until: number, record: (scheduled: number, status: number) => void) {
  const interval = 1000 / (job.rate ?? 1000);
  const inflight = new Set<Promise<void>>();
  let i = 0;
  for (;;) {
    const now = performance.now();
    // Start everything that is due, then sleep until the next is: a timer fires a little late,
    // and that lateness counts in the latency, but spinning here would take a core from what
    // is measured.
    while (start + i * interval <= now) {
      const scheduled = start + i * interval;
      if (scheduled >= until) break;
      const p: Promise<void> = send().then((status) => {
        record(scheduled, status);
        inflight.delete(p);
      });
      inflight.add(p);
      i++;
    }
    const due = start + i * interval;
    if (due >= until) break;
    await new Promise((r) => setTimeout(r, Math.max(0, Math.floor(due - performance.now()))));
  }
  await Promise.all(inflight);
}

/** Runs `job` for `seconds` from now, handing each answer to `record`. */
function drive(job: LoadJob, send: () => Promise<number>, seconds: number, record: (started: number, status: number) => void): Promise<void> {
  const start = performance.now();
  const until = start + seconds * 1000;
  return job.mode === 'closed' ? closed(job, send, until, record) : open(job, send, start, until, record);
}

export async function runLoad(job: LoadJob): Promise<LoadResult> {
  const { send, failures } = requester(job);
  const warmupLatencies: number[] = [];
  await drive(job, send, job.warmupSeconds ?? WARMUP_SECONDS, (started) => void warmupLatencies.push(performance.now() - started));
  const { p50Ms: warmP50, p99Ms: warmP99, maxMs: warmMax } = summarize(warmupLatencies);
  for (const cause of Object.keys(failures)) delete failures[cause];
  const latencies: number[] = [];
  const statuses: Record<string, number> = {};
  let errors = 0;
  const record = (started: number, status: number) => {
    latencies.push(performance.now() - started);
    statuses[status] = (statuses[status] ?? 0) + 1;
    if (status < 200 || status >= 300) errors++;
  };
  const start = performance.now();
  await drive(job, send, job.seconds, record);
  const seconds = (performance.now() - start) / 1000;
  const summary = summarize(latencies);
  return { mode: job.mode, requests: summary.count, warmupRequests: warmupLatencies.length, warmup: { p50Ms: warmP50, p99Ms: warmP99, maxMs: warmMax }, errors, statuses, ...(Object.keys(failures).length > 0 ? { failures } : {}), seconds: Math.round(seconds * 100) / 100, ratePerSecond: Math.round(summary.count / seconds), okPerSecond: Math.round((summary.count - errors) / seconds), p50Ms: summary.p50Ms, p99Ms: summary.p99Ms, maxMs: summary.maxMs };
}

if (process.argv[2] === '--job') {
  const job = JSON.parse(process.argv[3] ?? '{}') as LoadJob;
  process.stdout.write(`${JSON.stringify(await runLoad(job))}\n`);
}
