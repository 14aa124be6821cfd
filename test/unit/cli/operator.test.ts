import { describe, expect, it } from 'vitest';
import { parseOtlpEndpoint, parseRate, webhookEndpoint } from '../../../src/cli/operator.js';

const broker = { host: '0.0.0.0', port: 8443 };

describe('webhookEndpoint', () => {
  it.each([
    ['no webhook flags: a free port on the --listen host, nothing registered by URL', undefined, undefined, { listen: { host: '0.0.0.0', port: 0 } }],
    ['--webhook-listen alone', '127.0.0.1:9443', undefined, { listen: { host: '127.0.0.1', port: 9443 } }],
    ['--webhook-url of this machine alone: listen on the port it names', undefined, 'https://127.0.0.1:9443', { listen: { host: '0.0.0.0', port: 9443 }, url: 'https://127.0.0.1:9443' }],
    ['both: the URL is registered as given (a proxy may sit in between)', '0.0.0.0:9443', 'https://webhooks.example.com', { listen: { host: '0.0.0.0', port: 9443 }, url: 'https://webhooks.example.com' }],
  ])('%s', (_name, listen, url, expected) => {
    expect(webhookEndpoint(broker, listen, url)).toEqual(expected);
  });

  it.each([
    ['a --webhook-url naming the broker\'s own loopback address: the webhook listener is registered instead', 'https://127.0.0.1:8443', { listen: { host: '127.0.0.1', port: 0 }, url: undefined }, /names the broker's --listen address; the webhooks have a listener of their own/],
    ['the same by name', 'https://localhost:8443', { listen: { host: 'localhost', port: 0 }, url: undefined }, /names the broker's --listen address/],
    ['a --webhook-url of another host without --webhook-listen: registered, a free port, and a warning (its port is a proxy\'s, not ours)', 'https://webhooks.example.com', { listen: { host: '0.0.0.0', port: 0 }, url: 'https://webhooks.example.com' }, /names another host: make it reach the webhook listener, and give --webhook-listen/],
  ])('%s', (_name, url, expected, warning) => {
    const endpoint = webhookEndpoint(broker, undefined, url);
    expect(endpoint).toMatchObject(expected);
    expect(endpoint.warning).toMatch(warning);
  });

  it('refuses a --webhook-url naming the broker together with a --webhook-listen, and a URL that is not one', () => {
    expect(() => webhookEndpoint(broker, '127.0.0.1:9443', 'https://127.0.0.1:8443')).toThrow(/names the broker's --listen address; point it at the webhook listener \(--webhook-listen 127.0.0.1:9443\)/);
    expect(() => webhookEndpoint(broker, undefined, 'not a url')).toThrow(expect.objectContaining({ code: 'usage' }));
  });
});

describe('parseOtlpEndpoint', () => {
  it('takes an http(s) URL as given', () => {
    expect(parseOtlpEndpoint('http://otel-collector.observability:4318/v1/traces')).toBe('http://otel-collector.observability:4318/v1/traces');
  });

  it.each(['otel-collector:4318', 'grpc://otel:4317', ''])('refuses %j, naming the flag and the form it takes', (text) => {
    expect(() => parseOtlpEndpoint(text)).toThrow(/--otlp-traces-endpoint \(or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT\) takes the OTLP\/HTTP traces URL/);
  });
});

describe('--journal-writes-per-second', () => {
  it('takes a positive number of writes a second', () => {
    expect(parseRate('20', '--journal-writes-per-second')).toBe(20);
    expect(parseRate('2.5', '--journal-writes-per-second')).toBe(2.5);
  });

  it.each(['0', '-5', 'fast', '', '1e3', '20/s', '100000'])('refuses %j, naming the flag and what it takes', (text) => {
    expect(() => parseRate(text, '--journal-writes-per-second')).toThrow(/^--journal-writes-per-second takes status writes a second, a number above 0 and at most 10000, e\.g\. 20/);
  });
});
