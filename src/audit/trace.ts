import type { AuditRecord } from './record.js';

interface HopNode {
  hopId: string;
  record: AuditRecord;
  final?: AuditRecord;
  approval?: AuditRecord;
  children: HopNode[];
}

const time = (iso: string) => iso.slice(11, 19);
const reasons = (r: unknown) => ((r as { rule: string }[] | undefined) ?? []).map((x) => x.rule).join(', ');

function hopLine(node: HopNode): string {
  const d = node.record.data as { tool?: string; action?: string; resource?: string; decision?: string; reasons?: unknown };
  const first = `${time(node.record.at)} ${d.tool ?? ''} ${d.action ?? ''} ${d.resource ?? ''} → ${d.decision ?? ''} [${reasons(d.reasons)}]`;
  return `${first}  (${node.hopId})`;
}

function approvalLine(node: HopNode): string | undefined {
  if (!node.final) return undefined;
  const fd = node.final.data;
  if (node.approval) {
    const a = node.approval.data as { decision?: string; reason?: string; approver?: { username?: string; groups?: string[] } };
    const groups = (a.approver?.groups ?? []).filter((g) => !g.startsWith('system:'));
    const who = `${a.approver?.username ?? '?'}${groups.length > 0 ? ` (${groups.join(', ')})` : ''}`;
    return `${time(node.approval.at)} ${a.decision === 'Approve' ? 'approved' : 'rejected'} by ${who}${a.reason ? `: "${a.reason}"` : ''} → ${String(fd.decision)}`;
  }
  return `${time(node.final.at)} no approval in time → ${String(fd.decision)} [${reasons(fd.reasons)}]`;
}

function render(nodes: HopNode[], prefix: string, out: string[]): void {
  nodes.forEach((node, i) => {
    const last = i === nodes.length - 1;
    out.push(`${prefix}${last ? '└─ ' : '├─ '}${hopLine(node)}`);
    const inner = `${prefix}${last ? '   ' : '│  '}`;
    const approval = approvalLine(node);
    if (approval) out.push(`${inner}   ${approval}`);
    render(node.children, inner, out);
  });
}

const OTHER: Partial<Record<AuditRecord['type'], (r: AuditRecord) => string>> = {
  task_admitted: (r) => `admitted under AgentPolicy ${String(r.data.policy)}, deadline ${String(r.data.deadline)}`,
  identity_bound: (r) => `identity ${String(r.data.spiffeID)} bound to ${((r.data.pods as { name: string }[] | undefined) ?? []).map((p) => p.name).join(', ')}`,
  credential_issued: (r) => `credential ${String(r.data.credential)} issued: ${String(r.data.accessKeyId)} for ${String(r.data.roleArn)} until ${String(r.data.expiration)}`,
  violation: (r) => `VIOLATION by hop ${String(r.data.hopId)}: ${String(r.data.message)}`,
  revocation: (r) => `revoked (${String(r.data.state)}); AWS-side deny in place: ${String(r.data.awsDenyInPlace)}`,
  completion: (r) => `completed (${String(r.data.reason)})`,
  expiry: (r) => `expired at ${String(r.data.deadline)}`,
};

/** The hop tree of one task (parent → children) with decisions, reasons, approvers and times, then the task's other events. */
export function renderTrace(records: readonly AuditRecord[]): string {
  const nodes = new Map<string, HopNode>();
  const roots: HopNode[] = [];
  const events: string[] = [];
  for (const record of records) {
    const d = record.data as { hopId?: string; parentHop?: string; decision?: string };
    if (record.type === 'hop_decided' && d.hopId) {
      const existing = nodes.get(d.hopId);
      if (existing) {
        existing.final = record;
        continue;
      }
      const node: HopNode = { hopId: d.hopId, record, children: [] };
      nodes.set(d.hopId, node);
      const parent = d.parentHop ? nodes.get(d.parentHop) : undefined;
      (parent ? parent.children : roots).push(node);
    } else if (record.type === 'approval' && d.hopId) {
      const node = nodes.get(d.hopId);
      if (node) node.approval = record;
    } else {
      const describe = OTHER[record.type];
      if (describe) events.push(`${time(record.at)} ${describe(record)}`);
    }
  }
  const out: string[] = ['hops:'];
  if (roots.length === 0) out.push('   (none)');
  render(roots, '', out);
  out.push('events:', ...events.map((e) => `   ${e}`));
  return out.join('\n');
}
