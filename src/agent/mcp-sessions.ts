import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { RequestId } from '@modelcontextprotocol/sdk/types.js';
import type { ResponseEdit } from './mcp-message.js';

/** A request the sidecar passed on: the id the agent gave it, and what is changed in its answer. */
export interface SentRequest {
  /** The id the request went to the server with, this sidecar's own. */
  readonly upstreamId: string;
  readonly agentId: RequestId;
  readonly edit: ResponseEdit | undefined;
}

interface Book {
  /** By the id each request went upstream with, oldest first. */
  readonly sent: Map<string, SentRequest>;
  /** The upstream id of the agent's id (`requestKey`), for a `notifications/cancelled` naming it. */
  readonly byAgentId: Map<string, string>;
  /** The hop of each task a `tools/call` began (protocol 2025-11-25's tasks), by task id, oldest first: its `tasks/result` carries it. */
  readonly tasks: Map<string, string>;
}

/** Longer task ids are not remembered: the server chose them, and the book is bounded by count. */
const MAX_TASK_ID_CHARS = 256;

/**
 * The MCP sessions this sidecar began for its agent, and in each one the requests it passed on.
 * Every agent of a system reaches its server with the same credential, so the server cannot tell
 * one pod's session from another's; this book is what keeps each agent to its own:
 *
 * - A request naming a session the sidecar did not see begin goes nowhere: otherwise an agent that
 *   learned another session's id could use it, and resume its event streams.
 * - Each request goes upstream with an id of the sidecar's own, unique to it, and every answer
 *   comes back to the agent only by that id: with the agent's id, edited as the request's answer
 *   is (the tools the policy hides, the hop id a result carries), live or replayed. An agent that
 *   reuses an id cannot have an earlier answer replayed with a later request's edit, and an answer
 *   to a request this sidecar did not send (another session's, replayed by a server whose event
 *   store is shared) matches nothing and is not passed on.
 * - The event ids the agent sees are the server's, each prefixed with a MAC over the system and
 *   session it came in: a `Last-Event-ID` the sidecar did not hand out in that session goes nowhere,
 *   so an agent cannot resume a stream of another session by its server's event ids.
 *
 * Bounded: the sessions least recently used, and a session's oldest requests, are forgotten first.
 * A forgotten session is refused like an unknown one; a replayed answer to a forgotten request is
 * not passed on.
 */
export class McpSessions {
  private readonly books = new Map<string, Book>();
  /** One copy of each list of visible tools: the broker's answers repeat the same few. */
  private readonly toolLists = new Map<string, string[]>();
  /** Makes this sidecar's request ids its own: no other sidecar's, nor an earlier run's. */
  private readonly idPrefix = `chainwarden-${randomBytes(9).toString('base64url')}-`;
  private counter = 0;
  private readonly eventKey = randomBytes(32);

  constructor(
    private readonly maxSessions = 64,
    private readonly maxRequestsPerSession = 256,
  ) {}

  /** Whether the sidecar saw the system's server begin this session, and the agent has not ended it. */
  knows(system: string, sessionId: string): boolean {
    return this.touch(bookKey(system, sessionId)) !== undefined;
  }

  /** The server named this session in its answer to `request` (an initialize), which is then the session's too. */
  begin(system: string, sessionId: string, request?: SentRequest): void {
    const key = bookKey(system, sessionId);
    const book = this.touch(key) ?? this.add(key);
    if (request) this.enter(book, request);
  }

  /** The agent ended the session, and its server said so. */
  end(system: string, sessionId: string): void {
    this.books.delete(bookKey(system, sessionId));
  }

  /**
   * A request about to go upstream: the id it goes with, remembered with the agent's id and the
   * edit of its answer. In a session that ended meanwhile it is not remembered: its live answer
   * comes back by the returned request, and nothing of it is replayed.
   */
  send(system: string, sessionId: string | undefined, agentId: RequestId, edit: ResponseEdit | undefined): SentRequest {
    const request: SentRequest = { upstreamId: `${this.idPrefix}${this.counter++}`, agentId, edit: edit && this.shared(edit) };
    const key = bookKey(system, sessionId);
    const book = this.touch(key) ?? (sessionId === undefined ? this.add(key) : undefined);
    if (book !== undefined) this.enter(book, request);
    return request;
  }

  private enter(book: Book, request: SentRequest): void {
    book.sent.set(request.upstreamId, request);
    book.byAgentId.set(requestKey(request.agentId), request.upstreamId);
    if (book.sent.size > this.maxRequestsPerSession) {
      const [oldest] = book.sent.values();
      if (oldest) {
        book.sent.delete(oldest.upstreamId);
        if (book.byAgentId.get(requestKey(oldest.agentId)) === oldest.upstreamId) book.byAgentId.delete(requestKey(oldest.agentId));
      }
    }
  }

  /** The request the server's answer is to, by the id it answers; undefined for one this sidecar did not send in the session (or forgot). */
  sent(system: string, sessionId: string | undefined, upstreamId: RequestId): SentRequest | undefined {
    return typeof upstreamId === 'string' ? this.books.get(bookKey(system, sessionId))?.sent.get(upstreamId) : undefined;
  }

  /**
   * A `tools/call` of the session began a task, under the call's hop: the task's result, fetched
   * later, carries that hop. A task id once given a hop keeps it: a server that names it again
   * does not move it to another call.
   */
  noteTask(system: string, sessionId: string | undefined, taskId: string, hopId: string): void {
    const book = this.books.get(bookKey(system, sessionId));
    if (!book || taskId.length > MAX_TASK_ID_CHARS || book.tasks.has(taskId)) return;
    book.tasks.set(taskId, hopId);
    if (book.tasks.size > this.maxRequestsPerSession) {
      const [oldest] = book.tasks.keys();
      if (oldest !== undefined) book.tasks.delete(oldest);
    }
  }

  /** The hop of the call that began the task, when a call of this session did. */
  hopOfTask(system: string, sessionId: string | undefined, taskId: string): string | undefined {
    return this.books.get(bookKey(system, sessionId))?.tasks.get(taskId);
  }

  /** The id the agent's request went upstream with, for a `notifications/cancelled` that names it. */
  upstreamIdOf(system: string, sessionId: string | undefined, agentId: RequestId): string | undefined {
    return this.books.get(bookKey(system, sessionId))?.byAgentId.get(requestKey(agentId));
  }

  /** The event id the agent sees for the server's: `<mac>.<server's id>`. */
  agentEventId(system: string, sessionId: string | undefined, eventId: string): string {
    return `${this.mac(system, sessionId, eventId).toString('base64url')}.${eventId}`;
  }

  /** The server's event id in one the sidecar handed out in this session; undefined for any other. */
  upstreamEventId(system: string, sessionId: string | undefined, agentEventId: string): string | undefined {
    const dot = agentEventId.indexOf('.');
    if (dot < 0) return undefined;
    const given = Buffer.from(agentEventId.slice(0, dot), 'base64url');
    const eventId = agentEventId.slice(dot + 1);
    const expected = this.mac(system, sessionId, eventId);
    return given.length === expected.length && timingSafeEqual(given, expected) ? eventId : undefined;
  }

  private mac(system: string, sessionId: string | undefined, eventId: string): Buffer {
    return createHmac('sha256', this.eventKey).update(`${bookKey(system, sessionId)}\n${eventId}`).digest().subarray(0, 16);
  }

  /** The edit with its list of visible tools shared with the edits that carry the same list, so that a full book holds few lists. */
  private shared(edit: ResponseEdit): ResponseEdit {
    if (!edit.visibleTools) return edit;
    const key = edit.visibleTools.join('\n');
    let list = this.toolLists.get(key);
    if (list === undefined) {
      // A new policy generation makes a new list: the old ones go, and the edits that hold them keep their own.
      if (this.toolLists.size >= 16) this.toolLists.clear();
      list = edit.visibleTools;
      this.toolLists.set(key, list);
    }
    return { ...edit, visibleTools: list };
  }

  /** The book, moved to the end of the order the least recently used are forgotten in. */
  private touch(key: string): Book | undefined {
    const book = this.books.get(key);
    if (book === undefined) return undefined;
    this.books.delete(key);
    this.books.set(key, book);
    return book;
  }

  private add(key: string): Book {
    const book: Book = { sent: new Map(), byAgentId: new Map(), tasks: new Map() };
    this.books.set(key, book);
    if (this.books.size > this.maxSessions) this.books.delete(this.books.keys().next().value as string);
    return book;
  }
}

// A system name is a DNS label, and a header value holds no line break: no two keys meet.
const bookKey = (system: string, sessionId: string | undefined): string => (sessionId === undefined ? `${system}\n` : `${system} ${sessionId}`);
// 1 and "1" are two ids in JSON-RPC.
const requestKey = (id: RequestId): string => (typeof id === 'string' ? `s${id}` : `n${id}`);

/** One request of the agent's, by system, session and id: the key of whatever the sidecar keeps of it. */
export const agentRequestKey = (system: string, sessionId: string | undefined, id: RequestId): string => `${bookKey(system, sessionId)}\n${requestKey(id)}`;
