import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { errorMessage } from '../errors.js';

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

export type { EventSourceMessage };

/**
 * Re-emits an event stream, each event passed through `edit` (undefined: left out); comments
 * (keep-alives) and `retry` pass on as they arrive. An event is written only when complete, so the
 * output is always at an event boundary. `fail` is called once, and nothing more is written, if an
 * event grows past `maxChars` before it ends or `edit` throws (JSON nested too deep to serialize).
 */
export function eventStreamEditor(edit: (event: EventSourceMessage) => EventSourceMessage | undefined, write: (text: string) => void, fail: (err: Error) => void, maxChars: number): EventStreamEditor {
  let failed = false;
  const stop = (err: Error) => {
    if (failed) return;
    failed = true;
    fail(err);
  };
  const parser = createParser({
    onEvent: (event) => {
      if (failed) return;
      let edited: EventSourceMessage | undefined;
      try {
        edited = edit(event);
      } catch (err) {
        return stop(new Error(`an event could not be checked: ${errorMessage(err)}`));
      }
      if (edited) write(sseEvent(edited));
    },
    onComment: (comment) => {
      if (!failed) write(`: ${comment}\n`);
    },
    onRetry: (ms) => {
      if (!failed) write(`retry: ${ms}\n\n`);
    },
    onError: (err) => {
      if (err.type === 'max-buffer-size-exceeded') stop(new Error(`an event is longer than ${maxChars} characters`));
    },
    maxBufferSize: maxChars,
  });
  return {
    feed: (text) => {
      if (!failed) parser.feed(text);
    },
  };
}
