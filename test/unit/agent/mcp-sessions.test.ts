import { describe, expect, it } from 'vitest';
import { McpSessions } from '../../../src/agent/mcp-sessions.js';

/** The sidecar's book of MCP sessions: which it lets the agent use, and what it edits in their replays. */
describe('McpSessions', () => {
  it('knows a session only on the system whose server began it, and not once it ended', () => {
    const sessions = new McpSessions();
    sessions.begin('tickets', 'S1');
    expect(sessions.knows('tickets', 'S1')).toBe(true);
    expect(sessions.knows('email', 'S1')).toBe(false);
    expect(sessions.knows('tickets', 'S2')).toBe(false);
    sessions.end('tickets', 'S1');
    expect(sessions.knows('tickets', 'S1')).toBe(false);
  });

  it('requests outside a session are not a session: an empty Mcp-Session-Id is unknown', () => {
    const sessions = new McpSessions();
    sessions.remember('tickets', undefined, 1, undefined);
    expect(sessions.editOf('tickets', undefined, 1)).toBeNull();
    expect(sessions.knows('tickets', '')).toBe(false);
    expect(sessions.editOf('tickets', '', 1)).toBeUndefined();
  });

  it('tells the edit of each request, 1 and "1" apart, and undefined for one it never passed on', () => {
    const sessions = new McpSessions();
    sessions.begin('tickets', 'S1');
    sessions.remember('tickets', 'S1', 1, { id: 1, visibleTools: ['get_*'] });
    sessions.remember('tickets', 'S1', '1', undefined);
    expect(sessions.editOf('tickets', 'S1', 1)).toEqual({ id: 1, visibleTools: ['get_*'] });
    expect(sessions.editOf('tickets', 'S1', '1')).toBeNull();
    expect(sessions.editOf('tickets', 'S1', 2)).toBeUndefined();
    expect(sessions.editOf('tickets', 'S2', 1)).toBeUndefined();
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

    for (const id of [1, 2, 3]) sessions.remember('tickets', 'C', id, { id, hopId: `h${id}` });
    expect(sessions.editOf('tickets', 'C', 1)).toBeUndefined();
    expect(sessions.editOf('tickets', 'C', 3)).toEqual({ id: 3, hopId: 'h3' });
  });
});
