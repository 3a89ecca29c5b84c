// Package versitygw runs a versitygw S3 server (github.com/versity/versitygw)
// as a child process serving a local directory, so that tests and
// benchmarks talk to a real S3 implementation over loopback.
//
// The server is found on $PATH or in $GOPATH/bin; install it with
//
//	go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
//
// (.ci/run does). It runs as
//
//	versitygw --access K --secret S --region us-east-1 --port 127.0.0.1:PORT --quiet --keep-alive posix DIR
//
// Tests that need it fail, rather than skip, when it is missing; only
// `go test -short` skips them. A Server can be killed and restarted on the same address and
// directory, which is how tests cut the store off in the middle of an
// upload.
package versitygw
