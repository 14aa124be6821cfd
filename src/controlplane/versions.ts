/**
 * Pinned versions of the components the local control plane runs. Changing one changes the
 * cache key, so the next run builds (or installs) the new version beside the old one.
 */
export const KUBERNETES_VERSION = '1.35.4';
export const ETCD_VERSION = '3.5.33';
export const MOTO_VERSION = '5.2.5';
/** The oldest Go toolchain that builds the pinned kube-apiserver (its go.mod's `go` line). */
export const MIN_GO_VERSION = '1.25';
/** Helm, for rendering and linting the chart in tests. */
export const HELM_VERSION = '3.20.2';
/**
 * The OpenTelemetry Collector the tracing tests send spans to: its OTLP receiver and file
 * exporter, assembled by the collector's own builder. The stable modules (confmap providers)
 * are versioned apart from the rest; this pair is one collector release.
 */
export const OTEL_COLLECTOR_VERSION = '0.160.0';
export const OTEL_COLLECTOR_STABLE_VERSION = '1.66.0';
/** OPA, which the benchmark measures hop decisions against on the same rules (its Rego twin). */
export const OPA_VERSION = '1.22.2';
