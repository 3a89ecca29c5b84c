// Package ringpb holds the control messages of the ring wire protocol;
// regenerate with `go generate ./...`.
package ringpb

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative ring.proto
