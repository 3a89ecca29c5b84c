// Package embedded runs etcd and NATS inside the coordinator's process, so
// that one command on a fresh machine has the whole control plane. Both are
// the real servers (go.etcd.io/etcd/server/v3/embed and
// github.com/nats-io/nats-server/v2/server), started with a lifecycle like
// theirs: Start returns once the server accepts connections, Close stops it.
package embedded
