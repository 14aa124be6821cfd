import { describe, expect, it } from 'vitest';
import { awsErrorOf, awsErrorOfRefusal, protocolOf, renderAwsError, xmlText } from '../../../src/agent/aws-errors.js';

const HOP = 'h2_AAAAAAAAAAAA_BBBBBBBBBBBBBBBB';

describe('the AWS face of a refusal', () => {
  it.each([
    ['hop_denied', 403, 403, 'AccessDenied'],
    ['approval_pending', 403, 403, 'ChainwardenApprovalPending'],
    ['aws_signature_mismatch', 403, 403, 'SignatureDoesNotMatch'],
    ['aws_unknown_key', 403, 403, 'InvalidClientTokenId'],
    ['aws_unsigned', 403, 403, 'MissingAuthenticationToken'],
    ['task_not_active', 403, 403, 'AccessDenied'],
    ['unauthenticated', 401, 403, 'AccessDenied'],
    ['broker_unreachable', 502, 503, 'ServiceUnavailable'],
    ['aws_request_invalid', 400, 400, 'InvalidRequest'],
    // Codes the broker may add later: their status decides.
    ['some_new_refusal', 403, 403, 'AccessDenied'],
    ['some_new_failure', 500, 503, 'ServiceUnavailable'],
    ['rate_limited', 429, 429, 'ThrottlingException'],
  ])('%s (HTTP %i) → %i %s', (code, status, awsStatus, awsCode) => {
    expect(awsErrorOf(code, 'm', status)).toMatchObject({ status: awsStatus, code: awsCode });
  });

  it('names the rule and the hop even when the broker message does not', () => {
    const denied = awsErrorOfRefusal(403, { error: { code: 'hop_denied', message: 'denied' }, hopId: HOP, decision: 'deny', reasons: [{ rule: 'no-s3-writes', effect: 'deny' }] });
    expect(denied).toEqual({ status: 403, code: 'AccessDenied', message: `denied (rule no-s3-writes) (hop ${HOP})`, requestId: HOP });
    const named = awsErrorOfRefusal(403, { error: { code: 'hop_denied', message: `hop ${HOP} denied by rule no-s3-writes` }, hopId: HOP, reasons: [{ rule: 'no-s3-writes', effect: 'deny' }] });
    expect(named.message).toBe(`hop ${HOP} denied by rule no-s3-writes`);
    // A hop id that could break a header is left out of the headers.
    expect(awsErrorOfRefusal(403, { error: { code: 'hop_denied', message: 'x' }, hopId: 'h1\r\nset-cookie: a' }).requestId).toBeUndefined();
    expect(awsErrorOfRefusal(500, undefined)).toMatchObject({ status: 503, code: 'ServiceUnavailable' });
  });
});

describe('rendering', () => {
  const error = { status: 403, code: 'AccessDenied', message: 'rule <a&b> said "no"\u0000', requestId: HOP };

  it('JSON protocol: __type, message and x-amzn-errortype', () => {
    const out = renderAwsError('json', error, 'application/x-amz-json-1.0');
    expect(out.headers).toMatchObject({ 'content-type': 'application/x-amz-json-1.0', 'x-amzn-errortype': 'AccessDenied', 'x-amzn-requestid': HOP });
    expect(JSON.parse(out.body)).toEqual({ __type: 'AccessDenied', message: error.message });
  });

  it('query and REST-XML: escaped, and characters XML cannot carry replaced', () => {
    expect(renderAwsError('query', error).body).toBe(`<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>rule &lt;a&amp;b&gt; said &quot;no&quot;\ufffd</Message></Error><RequestId>${HOP}</RequestId></ErrorResponse>`);
    expect(renderAwsError('query', { ...error, status: 503 }).body).toContain('<Type>Receiver</Type>');
    expect(renderAwsError('rest-xml', error).body).toContain(`<Error><Code>AccessDenied</Code><Message>rule &lt;a&amp;b&gt; said &quot;no&quot;\ufffd</Message><RequestId>${HOP}</RequestId></Error>`);
    expect(xmlText('\ud800 ok \ud83d\ude00')).toBe('\ufffd ok \ud83d\ude00');
  });

  it.each([
    ['POST', { 'x-amz-target': 'DynamoDB_20120810.PutItem', 'content-type': 'application/x-amz-json-1.0' }, '', 'json'],
    ['POST', { 'content-type': 'application/x-www-form-urlencoded; charset=utf-8' }, '', 'query'],
    ['GET', {}, 'Action=GetCallerIdentity&Version=2011-06-15', 'query'],
    ['PUT', { 'content-type': 'application/x-www-form-urlencoded' }, 'x-id=PutObject', 'rest-xml'],
    ['GET', {}, 'list-type=2', 'rest-xml'],
    ['POST', {}, 'Act%69on=GetCallerIdentity', 'query'],
    ['GET', {}, 'Version=2011-06-15&%41ction=GetCallerIdentity', 'query'],
    ['GET', {}, 'Actions=1&%E0%A4%A=x', 'rest-xml'],
  ])('%s %j ?%s is %s', (method, headers, query, protocol) => {
    expect(protocolOf({ method, headers }, query)).toBe(protocol);
  });
});
