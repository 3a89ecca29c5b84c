// Package versitygw runs a versitygw S3 server (github.com/versity/versitygw)
// as a child process serving a local directory, so that tests and
// benchmarks talk to a real S3 implementation over loopback.
//
// The server is looked for on $PATH, in $(go env GOBIN) and in each
// $(go env GOPATH)/bin. When it is in none of them, Binary installs it,
// once, with
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// into GOBIN (or the first GOPATH's bin), which needs only the Go
// toolchain and the module proxy. The install holds an exclusive flock
// (Linux, macOS, the BSDs; elsewhere no lock) on a file in os.TempDir()
// named for the version, so that the test processes of `go test ./...` do
// not install it side by side; each looks again after taking the lock. It
// says on stderr that it is installing and where, and gives up after 10
// minutes. The server runs as
//
//	versitygw --access K --secret S --region us-east-1 --port 127.0.0.1:PORT --quiet --keep-alive posix DIR
//
// Tests that need it fail, rather than skip, when it is missing and cannot
// be installed; only `go test -short` skips them. A Server can be killed and
// restarted on the same address and directory, which is how tests cut the
// store off in the middle of an upload.
package versitygw
