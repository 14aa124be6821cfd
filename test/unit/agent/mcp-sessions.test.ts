import { describe, expect, it } from 'vitest';
import { McpSessions } from '../../../src/agent/mcp-sessions.js';

/** The sidecar's book of MCP sessions: which it lets the agent use, and how answers come back to it. */
describe('McpSessions', () => {
  it('knows a session only on the system whose server began it, and not once it ended, even if a request of it was on its way', () => {
    const sessions = new McpSessions();
    sessions.begin('tickets', 'S1');
    expect(sessions.knows('tickets', 'S1')).toBe(true);
    expect(sessions.knows('email', 'S1')).toBe(false);
    expect(sessions.knows('tickets', 'S2')).toBe(false);
    sessions.end('tickets', 'S1');
    const late = sessions.send('tickets', 'S1', 1, undefined);
    expect(sessions.knows('tickets', 'S1')).toBe(false);
    expect(sessions.sent('tickets', 'S1', late.upstreamId)).toBeUndefined();
  });

  it('requests outside a session are not a session: an empty Mcp-Session-Id is unknown', () => {
    const sessions = new McpSessions();
    const sent = sessions.send('tickets', undefined, 1, undefined);
    expect(sessions.sent('tickets', undefined, sent.upstreamId)).toBe(sent);
    expect(sessions.knows('tickets', '')).toBe(false);
    expect(sessions.sent('tickets', '', sent.upstreamId)).toBeUndefined();
  });

  it('sends every request with an id of its own, so an id the agent reuses does not take over an earlier answer', () => {
    const sessions = new McpSessions();
    sessions.begin('tickets', 'S1');
    const call = sessions.send('tickets', 'S1', 77, { id: 77, hopId: 'h1' });
    const ping = sessions.send('tickets', 'S1', 77, undefined);
    expect(call.upstreamId).not.toBe(ping.upstreamId);
    expect(sessions.sent('tickets', 'S1', call.upstreamId)).toMatchObject({ agentId: 77, edit: { hopId: 'h1' } });
    expect(sessions.sent('tickets', 'S1', ping.upstreamId)).toMatchObject({ agentId: 77, edit: undefined });
    // The agent's id names the latest request sent with it, for a notifications/cancelled.
    expect(sessions.upstreamIdOf('tickets', 'S1', 77)).toBe(ping.upstreamId);
    expect(sessions.upstreamIdOf('tickets', 'S1', '77')).toBeUndefined();
    // Another sidecar's ids are not this one's.
    expect(new McpSessions().send('tickets', 'S1', 77, undefined).upstreamId).not.toBe(call.upstreamId);
    expect(sessions.sent('tickets', 'S1', 0)).toBeUndefined();
  });

  it('hands out event ids bound to the system and session, and takes back only those', () => {
    const sessions = new McpSessions();
    const given = sessions.agentEventId('tickets', 'S1', 'stream-1_42');
    expect(given.endsWith('.stream-1_42')).toBe(true);
    expect(sessions.upstreamEventId('tickets', 'S1', given)).toBe('stream-1_42');
    expect(sessions.upstreamEventId('tickets', 'S2', given)).toBeUndefined();
    expect(sessions.upstreamEventId('email', 'S1', given)).toBeUndefined();
    expect(sessions.upstreamEventId('tickets', undefined, given)).toBeUndefined();
    expect(sessions.upstreamEventId('tickets', 'S1', 'stream-1_42')).toBeUndefined();
    expect(sessions.upstreamEventId('tickets', 'S1', given.replace('.stream-1_42', '.stream-2_1'))).toBeUndefined();
    expect(new McpSessions().upstreamEventId('tickets', 'S1', given)).toBeUndefined();
  });

  it("keeps a task's first hop, in the session whose call began it only, the newest tasks within the bound, and no task id past 256 characters", () => {
    const sessions = new McpSessions(64, 3);
    sessions.begin('exports', 'S1');
    sessions.begin('exports', 'S2');
    sessions.noteTask('exports', 'S1', 'task-1', 'h1_one');
    expect(sessions.hopOfTask('exports', 'S1', 'task-1')).toBe('h1_one');
    // A server naming the task again, in another call's answer, does not move it to that call.
    sessions.noteTask('exports', 'S1', 'task-1', 'h1_other');
    expect(sessions.hopOfTask('exports', 'S1', 'task-1')).toBe('h1_one');
    // Another session, another system, a session never seen: none began it.
    expect(sessions.hopOfTask('exports', 'S2', 'task-1')).toBeUndefined();
    expect(sessions.hopOfTask('tickets', 'S1', 'task-1')).toBeUndefined();
    sessions.noteTask('exports', 'S9', 'task-9', 'h1_nine');
    expect(sessions.hopOfTask('exports', 'S9', 'task-9')).toBeUndefined();
    // Past the bound the oldest task goes first.
    for (const n of [2, 3, 4]) sessions.noteTask('exports', 'S1', `task-${n}`, `h1_${n}`);
    expect(sessions.hopOfTask('exports', 'S1', 'task-1')).toBeUndefined();
    expect(sessions.hopOfTask('exports', 'S1', 'task-4')).toBe('h1_4');
    sessions.noteTask('exports', 'S1', 'x'.repeat(257), 'h1_long');
    expect(sessions.hopOfTask('exports', 'S1', 'x'.repeat(257))).toBeUndefined();
    expect(sessions.hopOfTask('exports', 'S1', 'task-2')).toBe('h1_2');
    // An ended session's tasks go with it.
    sessions.end('exports', 'S1');
    expect(sessions.hopOfTask('exports', 'S1', 'task-4')).toBeUndefined();
  });

  it('forgets the session used least recently first, and a session its oldest requests first', () => {
    const sessions = new McpSessions(2, 2);
    sessions.begin('tickets', 'A');
    sessions.begin('tickets', 'B');
    expect(sessions.knows('tickets', 'A')).toBe(true); // A is now the more recent
    sessions.begin('tickets', 'C');
    expect(sessions.knows('tickets', 'B')).toBe(false);
    expect(sessions.knows('tickets', 'A')).toBe(true);
    expect(sessions.knows('tickets', 'C')).toBe(true);

    const [first, , third] = [1, 2, 3].map((id) => sessions.send('tickets', 'C', id, { id, hopId: `h${id}` }));
    expect(sessions.sent('tickets', 'C', first?.upstreamId ?? '')).toBeUndefined();
    expect(sessions.upstreamIdOf('tickets', 'C', 1)).toBeUndefined();
    expect(sessions.sent('tickets', 'C', third?.upstreamId ?? '')).toMatchObject({ agentId: 3, edit: { hopId: 'h3' } });
  });
});
