/**
 * The shapes of Kubernetes names, for checking names that arrive outside an object (in a URL
 * path) before anything is looked up by them. The CRD schema's CEL rules use the same
 * expressions (a unit test compares them).
 */

/** A DNS-1123 label: namespaces, and names that must also fit a label value (a credential's name). */
export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

/** A DNS-1123 subdomain: the names of most objects, AgentTasks among them. */
export const DNS_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

// The length is checked first, so a pattern never sees more than 253 characters.
export const isDnsLabel = (text: string): boolean => text.length <= 63 && DNS_LABEL.test(text);
export const isDnsSubdomain = (text: string): boolean => text.length <= 253 && DNS_SUBDOMAIN.test(text);
