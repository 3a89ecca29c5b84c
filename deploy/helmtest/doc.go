// Package helmtest tests the Helm chart in deploy/helm/ringmaster. It is a
// module of its own so that Helm's and Kubernetes' libraries stay out of
// the main module's build; it imports the main module (replaced by this
// checkout) to parse the chart's command lines with the binaries' own
// cobra commands.
//
// The tests render the chart with the Helm library for the default values,
// every values file in the chart's examples/ and a few variants, lint it
// strictly, decode every manifest into the k8s.io/api types rejecting
// unknown fields, and check what Kubernetes would only find out at run
// time: selectors that match, ports, volumes, Secrets and claims that
// exist, names within Kubernetes' length limits for release names of up
// to 53 characters, non-root pods, and command lines and environment that
// the real binaries accept.
//
//	cd deploy/helmtest && go test ./...
package helmtest
