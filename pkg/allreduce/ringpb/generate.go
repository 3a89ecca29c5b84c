// Package ringpb holds the generated ring wire protocol; regenerate with
// `go generate ./...`.
package ringpb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative ring.proto
