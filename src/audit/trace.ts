import { agentCell, MAX_CELL, printable } from '../api/text.js';
import type { AuditRecord } from './record.js';

interface HopNode {
  hopId: string;
  record: AuditRecord;
  final?: AuditRecord;
  approval?: AuditRecord;
  children: HopNode[];
}

const time = (iso: string) => iso.slice(11, 19);
// A stream can be edited by anyone: read shapes defensively rather than crash on a forged one.
/** A field as text, whatever it holds: String() throws on an object whose toString is not a function. */
const text = (v: unknown): string => (typeof v === 'string' ? v : v === undefined ? '' : JSON.stringify(v));
const reasons = (r: unknown) => (Array.isArray(r) ? r.map((x) => text((x as { rule?: unknown } | null)?.rule)).join(', ') : '');

/** Visible ASCII but quote and backslash, no space. */
const PLAIN_WORD = /^[\x21\x23-\x5b\x5d-\x7e]+$/;
/** What an agent wrote (a hop's tool, action, resource): as it is when it is one word of plain ASCII, else quoted and cut, so no text of its own reads as the line's decision. */
const agentWord = (v: unknown) => agentCell(text(v), MAX_CELL, PLAIN_WORD);

function hopLine(node: HopNode): string {
  const d = node.record.data as { tool?: unknown; action?: unknown; resource?: unknown; decision?: unknown; reasons?: unknown };
  const first = `${time(node.record.at)} ${agentWord(d.tool)} ${agentWord(d.action)} ${agentWord(d.resource)} → ${text(d.decision)} [${reasons(d.reasons)}]`;
  return `${first}  (${node.hopId})`;
}

function approvalLine(node: HopNode): string | undefined {
  if (!node.final) return undefined;
  const fd = node.final.data;
  if (node.approval) {
    const a = node.approval.data as { decision?: unknown; reason?: unknown; approver?: { username?: unknown; groups?: unknown } | null };
    const groups = (Array.isArray(a.approver?.groups) ? (a.approver.groups as unknown[]) : []).map(text).filter((g) => !g.startsWith('system:'));
    const who = `${text(a.approver?.username ?? '?')}${groups.length > 0 ? ` (${groups.join(', ')})` : ''}`;
    return `${time(node.approval.at)} ${a.decision === 'Approve' ? 'approved' : 'rejected'} by ${who}${a.reason ? `: "${text(a.reason)}"` : ''} → ${text(fd.decision)}`;
  }
  return `${time(node.final.at)} no approval in time → ${text(fd.decision)} [${reasons(fd.reasons)}]`;
}

/**
 * The most levels of a tree drawn as indentation: a hop may be 999 deep, and a forged stream as
 * deep as it has records; past this, lines keep the indent of this level and say their depth.
 */
const MAX_DRAWN_DEPTH = 64;

/** Depth-first, with an explicit stack: a forged stream may nest hops deeper than the call stack. */
function render(roots: HopNode[], out: string[]): void {
  const stack = roots.map((node, i) => ({ node, prefix: '', last: i === roots.length - 1, depth: 1 })).reverse();
  for (let item = stack.pop(); item; item = stack.pop()) {
    const { node, prefix, last, depth } = item;
    const deep = depth > MAX_DRAWN_DEPTH ? `(depth ${depth}) ` : '';
    out.push(`${prefix}${last ? '└─ ' : '├─ '}${deep}${hopLine(node)}`);
    const inner = depth >= MAX_DRAWN_DEPTH ? prefix : `${prefix}${last ? '   ' : '│  '}`;
    const approval = approvalLine(node);
    if (approval) out.push(`${inner}   ${approval}`);
    for (let i = node.children.length - 1; i >= 0; i--) stack.push({ node: node.children[i] as HopNode, prefix: inner, last: i === node.children.length - 1, depth: depth + 1 });
  }
}

const OTHER: Partial<Record<AuditRecord['type'], (r: AuditRecord) => string>> = {
  task_admitted: (r) => `admitted under AgentPolicy ${text(r.data.policy)}, deadline ${text(r.data.deadline)}`,
  identity_bound: (r) => `identity ${text(r.data.spiffeID)} bound to ${(Array.isArray(r.data.pods) ? (r.data.pods as unknown[]) : []).map((p) => text((p as { name?: unknown } | null)?.name)).join(', ')}`,
  credential_issued: (r) => `credential ${text(r.data.credential)} issued: ${text(r.data.accessKeyId)} for ${text(r.data.roleArn)} until ${text(r.data.expiration)}`,
  violation: (r) => `VIOLATION by hop ${text(r.data.hopId)}: ${violated(r.data)}`,
  revocation: (r) => `revoked (${text(r.data.state)}); AWS-side deny in place: ${text(r.data.awsDenyInPlace)}`,
  completion: (r) => `completed (${text(r.data.reason)})`,
  expiry: (r) => `expired at ${text(r.data.deadline)}`,
};

/**
 * What a violation denied, its agent-chosen words quoted as a hop line's are; a record without
 * them (written before they were recorded apart) by its message, quoted and cut whole, since the
 * agent's words are inside it.
 */
function violated(d: Record<string, unknown>): string {
  const { tool, action, resource, rule } = d;
  if (typeof tool === 'string' && typeof action === 'string' && typeof resource === 'string') return `${agentWord(tool)} ${agentWord(action)} ${agentWord(resource)} was denied by ${text(rule)}`;
  return agentCell(text(d.message), MAX_CELL, PLAIN_WORD);
}

/**
 * The hop trees: each hop under the parent it names, and a hop whose parent is not in the stream
 * a root. Only a forged stream has a loop of parents; each loop is cut at its hop met first in
 * chain order, which becomes a root. Linear in the hops, whatever the stream holds.
 */
function plant(nodes: Map<string, HopNode>): HopNode[] {
  const parentOf = (node: HopNode) => {
    const parentHop = (node.record.data as { parentHop?: unknown }).parentHop;
    return typeof parentHop === 'string' ? nodes.get(parentHop) : undefined;
  };
  const roots: HopNode[] = [];
  for (const node of nodes.values()) {
    const parent = parentOf(node);
    (parent ? parent.children : roots).push(node);
  }
  const reached = new Set<HopNode>();
  const reach = (from: HopNode) => {
    const stack = [from];
    for (let node = stack.pop(); node; node = stack.pop()) {
      reached.add(node);
      // One by one: a forged stream may hang more children under one hop than a call takes arguments.
      for (const child of node.children) stack.push(child);
    }
  };
  for (const root of roots) reach(root);
  // What no root reaches is in a loop or hangs from one; each of its hops has a parent.
  const order = new Map([...nodes.values()].map((node, i) => [node, i]));
  for (const node of nodes.values()) {
    if (reached.has(node)) continue;
    const walked = new Set<HopNode>();
    let at = node;
    while (!walked.has(at)) {
      walked.add(at);
      at = parentOf(at) as HopNode;
    }
    let cut = at;
    for (let member = parentOf(at) as HopNode; member !== at; member = parentOf(member) as HopNode) {
      if ((order.get(member) ?? 0) < (order.get(cut) ?? 0)) cut = member;
    }
    const parent = parentOf(cut) as HopNode;
    parent.children.splice(parent.children.indexOf(cut), 1);
    roots.push(cut);
    reach(cut);
  }
  return roots;
}

const byTime = (a: HopNode, b: HopNode) => (a.record.at < b.record.at ? -1 : a.record.at > b.record.at ? 1 : 0);

/**
 * The hop tree of one task (parent → children) with decisions, reasons, approvers and times,
 * then the task's other events. `records` are in chain order; a child may come before its
 * parent there (replicas write one task's records in batches), so the tree is built after
 * every hop is known, and siblings are ordered by decision time. Every string from the stream is
 * passed through `printable`: an agent chose the hop's resource and intent, and they must not
 * be able to move the cursor, forge a line or reverse the text of the trace.
 */
export function renderTrace(records: readonly AuditRecord[]): string {
  const nodes = new Map<string, HopNode>();
  const approvals: AuditRecord[] = [];
  const events: string[] = [];
  for (const record of records) {
    const d = record.data as { hopId?: unknown };
    const hopId = typeof d.hopId === 'string' ? d.hopId : undefined;
    if (record.type === 'hop_decided' && hopId !== undefined) {
      const existing = nodes.get(hopId);
      if (existing) existing.final = record;
      else nodes.set(hopId, { hopId, record, children: [] });
    } else if (record.type === 'approval' && hopId !== undefined) {
      approvals.push(record);
    } else {
      const describe = OTHER[record.type];
      if (describe) events.push(`${time(record.at)} ${describe(record)}`);
    }
  }
  for (const approval of approvals) {
    const node = nodes.get((approval.data as { hopId: string }).hopId);
    if (node) node.approval = approval;
  }
  const roots = plant(nodes);
  roots.sort(byTime);
  for (const node of nodes.values()) node.children.sort(byTime);
  const out: string[] = ['hops:'];
  if (roots.length === 0) out.push('   (none)');
  render(roots, out);
  out.push('events:', ...events.map((e) => `   ${e}`));
  return out.map(printable).join('\n');
}
