// Package ringmasterv1 holds the coordinator's gRPC API, generated from
// coordinator.proto. Regenerate with `go generate ./...` (needs protoc,
// protoc-gen-go and protoc-gen-go-grpc; see docs/development.md).
package ringmasterv1

//go:generate protoc --proto_path=. --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative coordinator.proto
