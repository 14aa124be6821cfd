import type { RequestId } from '@modelcontextprotocol/sdk/types.js';
import type { ResponseEdit } from './mcp-message.js';

/**
 * The MCP sessions this sidecar began for its agent, and for each one the requests it passed on
 * and what it changes in their answers. Two things rest on it:
 *
 * - A request naming a session the sidecar did not see begin goes nowhere. Every agent of a
 *   system reaches its server with the same credential, so the server cannot tell them apart;
 *   without this, an agent that learned or guessed another pod's session id could use that
 *   session, and resume its event stream to read the other agent's results.
 * - A resumed event stream (a GET with `Last-Event-ID`) replays answers to requests sent earlier,
 *   on other connections. Each is edited as its request's answer would have been (the tools the
 *   policy hides, the hop id a result carries); an answer to a request the sidecar never passed on
 *   in that session is not passed on.
 *
 * Bounded: the sessions least recently used, and a session's oldest requests, are forgotten first.
 * A forgotten session is refused like an unknown one (the agent's client begins a new one, as
 * MCP has it do after a 404); a forgotten request's replayed answer is replaced by an error.
 */
export class McpSessions {
  /** `<system> <session id>` (a line break for the id: the system's requests outside a session) → request id → its edit, or null for none. */
  private readonly books = new Map<string, Map<string, ResponseEdit | null>>();

  /** One copy of each list of visible tools: the broker's answers repeat the same few. */
  private readonly toolLists = new Map<string, string[]>();

  constructor(
    private readonly maxSessions = 64,
    private readonly maxRequestsPerSession = 256,
  ) {}

  /** Whether the sidecar saw the system's server begin this session, and the agent has not ended it. */
  knows(system: string, sessionId: string): boolean {
    return this.touch(bookKey(system, sessionId)) !== undefined;
  }

  /** The server named this session in its answer to the agent. */
  begin(system: string, sessionId: string): void {
    const key = bookKey(system, sessionId);
    if (this.touch(key) === undefined) this.add(key);
  }

  /** The agent ended the session, and its server said so. */
  end(system: string, sessionId: string): void {
    this.books.delete(bookKey(system, sessionId));
  }

  /** The request passed on, and what is changed in its answer (none: `undefined`). */
  remember(system: string, sessionId: string | undefined, id: RequestId, edit: ResponseEdit | undefined): void {
    const key = bookKey(system, sessionId);
    const book = this.touch(key) ?? this.add(key);
    const request = requestKey(id);
    book.delete(request);
    book.set(request, edit ? this.shared(edit) : null);
    if (book.size > this.maxRequestsPerSession) book.delete(book.keys().next().value as string);
  }

  /** What is changed in the answer to the request: null for nothing, undefined when the sidecar did not pass it on (or forgot it). */
  editOf(system: string, sessionId: string | undefined, id: RequestId): ResponseEdit | null | undefined {
    return this.books.get(bookKey(system, sessionId))?.get(requestKey(id));
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
  private touch(key: string): Map<string, ResponseEdit | null> | undefined {
    const book = this.books.get(key);
    if (book === undefined) return undefined;
    this.books.delete(key);
    this.books.set(key, book);
    return book;
  }

  private add(key: string): Map<string, ResponseEdit | null> {
    const book = new Map<string, ResponseEdit | null>();
    this.books.set(key, book);
    if (this.books.size > this.maxSessions) this.books.delete(this.books.keys().next().value as string);
    return book;
  }
}

// A system name is a DNS label, and a header value holds no line break: no two keys meet.
const bookKey = (system: string, sessionId: string | undefined): string => (sessionId === undefined ? `${system}\n` : `${system} ${sessionId}`);
// 1 and "1" are two ids in JSON-RPC.
const requestKey = (id: RequestId): string => (typeof id === 'string' ? `s${id}` : `n${id}`);
