/**
 * The chainwarden Cedar schema: what a policy can see when it decides a hop. Compiled
 * AgentPolicy rules and raw Cedar are both validated against it, so a typo in an attribute
 * name is an admission error, not a policy that silently never matches.
 *
 * - principal: the task (`Chainwarden::Task`), with its namespace, name, service account, intent;
 * - action: `Chainwarden::Action::"hop"`, the only action;
 * - resource: what the hop touches (`Chainwarden::Resource`), a member of its tool
 *   (`Chainwarden::Tool`); the hop's attributes are the resource's tags (strings);
 * - context: the chain so far.
 */
export const CEDAR_NAMESPACE = 'Chainwarden';

export const CEDAR_SCHEMA = `namespace ${CEDAR_NAMESPACE} {
  entity Task = {
    namespace: String,
    name: String,
    serviceAccount: String,
    intent: String,
  };
  entity Tool = {
    trustBoundary: String,
    dataClasses: Set<String>,
  };
  entity Resource in [Tool] tags String;
  type HopContext = {
    tool: String,
    action: String,
    resource: String,
    intent: String,
    depth: Long,
    hopCount: Long,
    secondsSinceStart: Long,
    systemsTouched: Set<String>,
    dataClassesTouched: Set<String>,
    trustBoundary: String,
    crossesTrustBoundary: Bool,
    priorDenials: Long,
  };
  action "hop" appliesTo {
    principal: [Task],
    resource: [Resource],
    context: HopContext,
  };
}
`;
