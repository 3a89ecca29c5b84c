// Package cli is the command-line interface of the coordinator and worker
// binaries: cobra commands that turn flags into configurations, start the
// components, and talk to a coordinator's API. The binaries' main packages
// only call into it.
package cli
