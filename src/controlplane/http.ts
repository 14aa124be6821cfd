import https from 'node:https';
import http from 'node:http';

export interface TlsClientOptions {
  ca?: string;
  cert?: string;
  key?: string;
}

/** GET `url` and return its status code and body; used by readiness probes. */
export async function httpGet(url: string, tls: TlsClientOptions = {}, timeoutMs = 2000): Promise<{ status: number; body: string }> {
  return httpRequest('GET', url, tls, timeoutMs);
}

export async function httpRequest(
  method: string,
  url: string,
  tls: TlsClientOptions = {},
  timeoutMs = 2000,
): Promise<{ status: number; body: string }> {
  const client = url.startsWith('https:') ? https : http;
  return new Promise((resolve, reject) => {
    const req = client.request(url, { method, ...tls, timeout: timeoutMs, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`${method} ${url} timed out`)));
    req.on('error', reject);
    req.end();
  });
}
