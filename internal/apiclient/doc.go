// Package apiclient dials the coordinator API for the CLI and the workers.
//
// A coordinator address may be a comma-separated list of replicas
// ("c1:7070,c2:7070,c3:7070"). Every replica serves the whole API (its
// writes are etcd transactions, safe from any replica), so the client
// needs one that answers: the list is given to gRPC as one target with
// several addresses and the pick_first policy, which connects to the first
// that accepts and moves to the next when that one goes away.
package apiclient
