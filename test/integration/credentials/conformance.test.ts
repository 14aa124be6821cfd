import { CreateRoleCommand, IAMClient } from '@aws-sdk/client-iam';
import { inject } from 'vitest';
import { AwsIamPort } from '../../../src/credentials/iam.js';
import { AwsStsPort } from '../../../src/credentials/sts.js';
import { localAws } from '../../../src/controlplane/environment.js';
import { iamConformance, stsConformance } from '../../conformance/ports.js';

async function role(): Promise<{ arn: string; name: string }> {
  const aws = localAws(inject('env'));
  const name = `conformance-${Date.now()}-${Math.floor(Math.random() * 1e6)}`;
  const iam = new IAMClient({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials });
  const created = await iam.send(new CreateRoleCommand({ RoleName: name, AssumeRolePolicyDocument: '{"Version":"2012-10-17","Statement":[]}' }));
  return { arn: created.Role?.Arn ?? '', name };
}

stsConformance('AWS SDK on the emulator', async () => {
  const aws = localAws(inject('env'));
  return { port: new AwsStsPort({ region: aws.region, endpoint: aws.stsEndpoint, credentials: aws.credentials }), roleArn: (await role()).arn };
});

iamConformance('AWS SDK on the emulator', async () => {
  const aws = localAws(inject('env'));
  return { port: new AwsIamPort({ region: aws.region, endpoint: aws.iamEndpoint, credentials: aws.credentials }), roleName: (await role()).name };
});
