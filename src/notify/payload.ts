import { API_VERSION, type AgentPolicySpec, type AgentTaskStatus } from '../api/schema.js';
import { escapeUnits, printable, unseen } from '../api/text.js';

export type PendingHop = NonNullable<AgentTaskStatus['pendingHops']>[number];
export type NotifyFormat = NonNullable<NonNullable<NonNullable<AgentPolicySpec['approval']>['notify']>['format']>;

/** What a notification is about: the waiting hop and the task it belongs to. */
export interface PendingHopNotice {
  namespace: string;
  task: string;
  hop: PendingHop;
}

export interface NotifyRequest {
  contentType: string;
  body: string;
}

/** The commands an approver runs, with the hop filled in; `…` is theirs to replace with a reason. */
export function approvalCommands(namespace: string, task: string, hopId: string): { approve: string; reject: string; kubectlApprove: string } {
  const args = `${namespace}/${task} ${hopId} --reason "…"`;
  return { approve: `chainwarden approve ${args}`, reject: `chainwarden reject ${args}`, kubectlApprove: `kubectl chainwarden approve ${args}` };
}

/** The hop's facts as the CloudEvent's data and for any receiver: agent text is carried as JSON strings, never markup. */
export function noticeData(notice: PendingHopNotice) {
  const { namespace, task, hop } = notice;
  return {
    namespace,
    task,
    hopId: hop.hopId,
    tool: hop.tool,
    action: hop.action,
    resource: hop.resource,
    depth: hop.depth,
    ...(hop.parentHop ? { parentHop: hop.parentHop } : {}),
    ...(hop.intent ? { intent: hop.intent } : {}),
    attributes: hop.attributes ?? {},
    rules: hop.rules,
    ...(hop.wouldDenyBy ? { wouldDenyBy: hop.wouldDenyBy } : {}),
    digest: hop.digest,
    requestedAt: hop.requestedAt,
    timeoutAt: hop.timeoutAt,
    commands: approvalCommands(namespace, task, hop.hopId),
  };
}

/** CloudEvents 1.0, structured mode. The id is the hop id: a receiver that sees it twice (a resend after a failover) can drop the second. */
export function cloudEvent(notice: PendingHopNotice): NotifyRequest {
  const event = {
    specversion: '1.0',
    type: 'io.chainwarden.hop.pending',
    source: `/apis/${API_VERSION}/namespaces/${notice.namespace}/agenttasks/${notice.task}`,
    id: notice.hop.hopId,
    subject: notice.hop.hopId,
    time: notice.hop.requestedAt,
    datacontenttype: 'application/json',
    data: noticeData(notice),
  };
  return { contentType: 'application/cloudevents+json', body: JSON.stringify(event) };
}

// ---------------------------------------------------------------------------------------------
// Slack

/** One character of agent text as it may stand in a Slack code span. */
function slackChar(char: string): string {
  switch (char) {
    case '&':
      return '&amp;';
    case '<':
      return '&lt;';
    case '>':
      return '&gt;';
    case '`':
      return 'ˋ';
    case '\r':
    case '\n':
    case '\u2028':
    case '\u2029':
      return '⏎';
    default: {
      // Invisible characters (zero-width, tags, fillers) are shown as escapes too: padding of them would hide the rest of the text, and count against the cut.
      const shown = printable(char);
      return shown === char && unseen(char) ? escapeUnits(char) : shown;
    }
  }
}

/**
 * Agent text in Slack mrkdwn. Slack reads `<…>` as links, mentions (`<!channel>`) and dates, so
 * `&`, `<` and `>` become entities, as Slack asks. The text then goes inside a code span, where
 * `*bold*` and `_italics_` are not formatting; a backtick would close the span, so it becomes a
 * look-alike (ˋ), and line breaks become ⏎ so the text cannot start a line of its own that reads
 * like chainwarden's. Other controls, bidi overrides and invisible characters (zero-width spaces,
 * tag characters) are shown as escapes (`\u202e`, `\u200b`), so what
 * the approver reads is what the hop holds: `invoice\u202egpj.exe` does not display as
 * `invoiceexe.jpg`. At most `max` characters are shown, counted as sent, so a block stays within
 * Slack's limits however many entities the text needs; the rest is cut, saying so.
 */
export function slackCode(text: string, max = 500): string {
  let out = '';
  let shown = 0;
  for (const char of text) {
    const safe = char === '\r' && text[shown + 1] === '\n' ? '' : slackChar(char);
    if (out.length + safe.length > max) break;
    out += safe;
    shown += char.length;
  }
  const rest = text.length - shown;
  return `\`${out === '' ? ' ' : out}${rest > 0 ? `… (${rest} more characters)` : ''}\``;
}

/** Items joined with commas, as many as fit in `max` characters (a Slack field takes 2,000), then how many more. */
function listed(items: string[], max = 1_500): string {
  let out = '';
  let shown = 0;
  for (const item of items) {
    const next = shown === 0 ? item : `${out}, ${item}`;
    if (next.length > max) break;
    out = next;
    shown++;
  }
  return shown < items.length ? `${out}${shown > 0 ? ' ' : ''}and ${items.length - shown} more` : out;
}

/** Slack refuses a section's text over 3,000 characters. */
const MAX_SECTION = 2_900;

/**
 * Every attribute, in as many sections as they take: the agent chooses their names and order,
 * and one left out could be the one the approval binds (an amount behind ten decoys).
 */
function attributeSections(attributes: Record<string, string> | undefined): { type: 'section'; text: { type: 'mrkdwn'; text: string } }[] {
  const lines = Object.entries(attributes ?? {}).map(([k, v]) => `${slackCode(k, 64)} = ${slackCode(v, 180)}`);
  const texts: string[] = [];
  let current = '*Attributes*';
  for (const line of lines) {
    if (current.length + 1 + line.length > MAX_SECTION) {
      texts.push(current);
      current = '*Attributes (continued)*';
    }
    current += `\n${line}`;
  }
  texts.push(lines.length === 0 ? `${current}\n(none)` : current);
  return texts.map((text) => ({ type: 'section', text: { type: 'mrkdwn', text } }));
}

/** Slack-compatible JSON: `text` for notifications and clients without blocks, `blocks` for the message itself. */
export function slackMessage(notice: PendingHopNotice): NotifyRequest {
  const { namespace, task, hop } = notice;
  const commands = approvalCommands(namespace, task, hop.hopId);
  const rules = listed(hop.rules.map((r) => slackCode(r, 63)));
  const what = `${slackCode(hop.tool, 63)} ${slackCode(hop.action, 128)} on ${slackCode(hop.resource)}`;
  const wouldDeny = hop.wouldDenyBy ? listed(hop.wouldDenyBy.map((r) => slackCode(r, 63))) : undefined;
  const warning = wouldDeny ? ` The policy is in Audit mode; Enforce would deny it (${wouldDeny}).` : '';
  const text = `Hop ${hop.hopId} of AgentTask ${namespace}/${task} waits for approval until ${hop.timeoutAt}: ${what} (${rules}).${warning} Approve: \`${commands.approve}\``;
  const field = (label: string, value: string) => ({ type: 'mrkdwn', text: `*${label}*\n${value}` });
  const blocks = [
    { type: 'header', text: { type: 'plain_text', text: `Approval needed: ${namespace}/${task}`.slice(0, 150) } },
    {
      type: 'section',
      fields: [
        field('Tool', slackCode(hop.tool, 63)),
        field('Action', slackCode(hop.action, 128)),
        field('Resource', slackCode(hop.resource)),
        field('Rules', rules),
        ...(wouldDeny ? [field('Enforce would deny it', wouldDeny)] : []),
        field('Hop', `\`${hop.hopId}\` (depth ${hop.depth})`),
        field('Times out', hop.timeoutAt),
      ],
    },
    { type: 'section', text: { type: 'mrkdwn', text: `*Intent*\n${hop.intent ? slackCode(hop.intent, 1024) : '(none given)'}` } },
    ...attributeSections(hop.attributes),
    { type: 'section', text: { type: 'mrkdwn', text: `*Approve*\n\`${commands.approve}\`\n*Reject*\n\`${commands.reject}\`\n(or \`${commands.kubectlApprove}\`)` } },
  ];
  return { contentType: 'application/json', body: JSON.stringify({ text, blocks }) };
}

export function notifyRequest(format: NotifyFormat | undefined, notice: PendingHopNotice): NotifyRequest {
  return format === 'CloudEvents' ? cloudEvent(notice) : slackMessage(notice);
}
