/**
 * The MCP gateway's one call from the sidecar to the broker: `POST /v1/mcp/forward`,
 * authenticated with the pod token like every broker call. The sidecar serves
 * `/mcp/<system>` to the agent's MCP client and passes every message on to the system's server;
 * before each one it asks the broker where the server is and what to add. For `tools/call` that
 * question is a hop: the broker decides it with the whole chain in view. Message bodies never
 * pass through the broker (a call's name and arguments excepted, which the hop is made of).
 */

/** Arguments of one call: what the broker reads for the hop's resource and attributes. */
export type McpArguments = Record<string, unknown>;

export interface McpForwardRequest {
  /** The `<system>` of `/mcp/<system>`: a system of the task's policy that names an MCP server. */
  system: string;
  /**
   * The JSON-RPC method of the agent's message (`initialize`, `tools/list`, `tools/call`,
   * `notifications/initialized`, …); absent for what carries none: the agent's GET (the
   * server's event stream), DELETE (ending the session) and its responses to server requests.
   */
  method?: string;
  /** `tools/call` only: the tool, its arguments, and the parent hop from `_meta["chainwarden.io/parentHop"]`. */
  call?: { name: string; arguments: McpArguments; parentHop?: string };
}

/** Go ahead: where the message goes and the headers it goes with (they replace the agent's of the same name). */
export interface McpForwardAnswer {
  /** The MCP server's Streamable HTTP endpoint, from the policy's `systems[].mcp.url`. */
  url: string;
  /**
   * The address to connect to for `url`'s host, as the broker resolved it (absent when the URL
   * names an address): the sidecar never resolves the name itself, since the agent may write
   * the pod's hosts file. The request still names the host (`Host`, and TLS's server name).
   */
  address?: string;
  /**
   * Header names lowercased: the credential from the system's Secret (`credentials.header`,
   * value `prefix` + the Secret's key) when the system names one, and for `tools/call` the
   * hop's `txn-token`.
   */
  headers: Record<string, string>;
  /** `tools/call`: the allowed hop; the result the agent gets carries it in `_meta["chainwarden.io/hopId"]`. */
  hopId?: string;
  reasons?: { rule: string; effect: string }[];
  /**
   * `tools/list`: globs (`*` any run of characters) over tool names that some rule of the policy
   * could allow on this system; the list the agent gets keeps only tools matching one. Absent
   * when any tool may be allowed (raw Cedar could permit anything).
   */
  visibleTools?: string[];
}

/**
 * Refusals come as the broker's usual JSON error (`{error: {code, message, field?}}`) with, for a
 * decided hop, `hopId`, `decision` and `reasons` beside it. `hop_denied` (403): JSON-RPC error
 * -32001 naming the rule, `data.hopId`. `approval_pending` (403, `decision: pending_approval`):
 * the sidecar holds the call (progress notifications when the agent sent a progressToken) for
 * up to `holdForSeconds`, polling `GET /v1/hops/{hopId}`; once that says `allow` it asks again
 * with the same call, which the broker then allows (the approval is used once); `deny` ends it
 * with -32001; when the time is up, JSON-RPC error -32002 with `data.hopId`. `mcp_unknown_system`
 * (404): the policy has no such system with an MCP server. Other codes (401, `task_not_active`,
 * `journal_behind` 503, …): a JSON-RPC error carrying the broker's message.
 */
export interface McpForwardRefusal {
  error: { code: string; message: string; field?: string };
  hopId?: string;
  decision?: 'deny' | 'pending_approval';
  reasons?: { rule: string; effect: string }[];
  /** `approval_pending`: how long to hold the call, the policy's `approval.holdFor` (30 s unless set). */
  holdForSeconds?: number;
}

/** JSON-RPC error codes the gateway answers with (the AuthZEN MCP binding's, for a denial). */
export const MCP_DENIED = -32001;
export const MCP_APPROVAL_PENDING = -32002;

/** `_meta` keys the gateway reads from a call and writes into its result. */
export const META_PARENT_HOP = 'chainwarden.io/parentHop';
export const META_HOP_ID = 'chainwarden.io/hopId';
