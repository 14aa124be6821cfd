import { createParser, type EventSourceMessage } from 'eventsource-parser';

/**
 * Server-sent events as the MCP gateway passes them on: read with the parser the agent's MCP
 * client uses (the SDK's, eventsource-parser), so the gateway sees exactly the events the client
 * will, and written back event by event.
 */

/** One event in wire form. Field values from the parser hold no line breaks; data may, and gets one `data:` line per line. */
export function sseEvent(event: EventSourceMessage): string {
  let out = event.event === undefined ? '' : `event: ${event.event}\n`;
  if (event.id !== undefined) out += `id: ${event.id}\n`;
  for (const line of event.data.split(/\r\n|\r|\n/)) out += `data: ${line}\n`;
  return `${out}\n`;
}

/** A JSON-RPC message as the `message` event MCP's Streamable HTTP transport sends. */
export const sseMessage = (message: unknown): string => sseEvent({ event: 'message', data: JSON.stringify(message) });

export interface EventStreamEditor {
  feed(text: string): void;
}

/**
 * Re-emits an event stream, each `message` event's data passed through `edit` (events of other
 * types as they came); comments (keep-alives) and `retry` pass on as they arrive. An event is
 * written only when complete, so the output is always at an event boundary. `fail` is called
 * once if an event grows past `maxChars` before it ends.
 */
export function eventStreamEditor(edit: (data: string) => string, write: (text: string) => void, fail: (err: Error) => void, maxChars: number): EventStreamEditor {
  let failed = false;
  const parser = createParser({
    onEvent: (event) => write(sseEvent(event.event === undefined || event.event === 'message' ? { ...event, data: edit(event.data) } : event)),
    onComment: (comment) => write(`: ${comment}\n`),
    onRetry: (ms) => write(`retry: ${ms}\n\n`),
    onError: (err) => {
      if (err.type !== 'max-buffer-size-exceeded' || failed) return;
      failed = true;
      fail(new Error(`an event is longer than ${maxChars} characters`));
    },
    maxBufferSize: maxChars,
  });
  return {
    feed: (text) => {
      if (!failed) parser.feed(text);
    },
  };
}
