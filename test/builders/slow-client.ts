import tls from 'node:tls';

/**
 * A client that keeps its request headers coming (slowloris): over TLS it sends a request line and
 * then one more header line every `everyMs`, never the blank line that ends them. Resolves with
 * what the server answered once it closes the connection.
 */
export function dripHeaders(target: { host: string; port: number; ca: string; servername: string; path: string; everyMs: number }): Promise<string> {
  return new Promise<string>((resolve, reject) => {
    const socket = tls.connect({ host: target.host, port: target.port, ca: target.ca, servername: target.servername }, () => {
      socket.write(`POST ${target.path} HTTP/1.1\r\nHost: ${target.servername}\r\n`);
      const drip = setInterval(() => socket.writable && socket.write('X-Slow: 1\r\n'), target.everyMs);
      let text = '';
      socket.on('data', (c: Buffer) => (text += c.toString()));
      socket.on('close', () => {
        clearInterval(drip);
        resolve(text);
      });
    });
    socket.on('error', reject);
  });
}
