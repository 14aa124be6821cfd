import type { IAMClient } from '@aws-sdk/client-iam';
import { GetCallerIdentityCommand, type STSClient } from '@aws-sdk/client-sts';
import { describe, expect, it } from 'vitest';
import { awsPorts } from '../../../src/operator/operator.js';

const credentials = { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'secret' };

/** The one signature of a client's middleware stack used here: a middleware at the build step, where the request has its endpoint. */
interface BuildStack {
  add(middleware: (next: unknown) => (args: { request: unknown }) => Promise<never>, options: { step: 'build'; name: string }): void;
}

/** Where a client's next request would go: the request is stopped once built, before it is sent. */
async function hostOf(client: IAMClient | STSClient, send: () => Promise<unknown>): Promise<string> {
  let host = '';
  (client.middlewareStack as unknown as BuildStack).add(
    () => (args) => {
      const request = args.request as { protocol: string; hostname: string; port?: number };
      host = `${request.protocol}//${request.hostname}${request.port ? `:${request.port}` : ''}`;
      return Promise.reject(new Error('stopped before sending'));
    },
    { step: 'build', name: 'whereTo' },
  );
  await expect(send()).rejects.toThrow('stopped before sending');
  return host;
}

const clientOf = <T>(port: object): T => (port as unknown as { client: T }).client;

describe('the operator’s AWS clients', () => {
  it('sends IAM calls to AWS’s IAM endpoint when only a private STS endpoint is set, not to the STS host', async () => {
    const { sts, iam } = awsPorts({ region: 'eu-west-1', stsEndpoint: 'https://sts.vpce.example:8443', credentials });
    expect(await hostOf(clientOf<IAMClient>(iam), () => iam.getRolePolicy('agents', 'deny'))).toBe('https://iam.amazonaws.com');
    const stsClient = clientOf<STSClient>(sts);
    expect(await hostOf(stsClient, () => stsClient.send(new GetCallerIdentityCommand({})))).toBe('https://sts.vpce.example:8443');
  });

  it('sends IAM calls to the IAM endpoint set', async () => {
    const { iam } = awsPorts({ region: 'eu-west-1', stsEndpoint: 'https://sts.vpce.example', iamEndpoint: 'http://127.0.0.1:5000', credentials });
    expect(await hostOf(clientOf<IAMClient>(iam), () => iam.listRolePolicies('agents'))).toBe('http://127.0.0.1:5000');
  });
});
