// Package pki is Ringmaster's certificate authority and the identities it
// hands out.
//
// Every connection in a cluster is mutual TLS with certificates from one
// CA: the coordinator creates it (once, in its data directory) or is given
// it (a Kubernetes Secret shared by the replicas). A certificate names an
// identity, role and name, in its subject: the common name is
// "role:name" and the organisational unit is the role. The roles are
// the users' (admin, submit, view), the workers' (worker) and the control
// plane's (coordinator); the common name doubles as the etcd user name
// (etcd's client-certificate authentication maps a certificate to the user
// named by its common name), which is why a role prefix is always there: no
// identity can be called "root".
//
// Peers verify each other against the CA and then by role and name, not by
// host name: a ring connection must come from the worker assigned to that
// rank, a coordinator's certificate must carry the coordinator role. Server
// certificates still list the host names and addresses the servers are
// reached at, so that etcdctl and the nats CLI can verify them too.
//
// A credential file (YAML) holds one identity's key, its certificate and
// the CA certificate, and optionally the coordinator address: what the CLI
// reads from --credentials or RINGMASTER_CREDENTIALS, and what a worker
// keeps after joining. A join token lets a new worker get its credential
// without one: "ID.SECRET.CAHASH", where the coordinator keeps only a hash
// of SECRET and CAHASH pins the CA the worker must find at the other end
// (as kubeadm's discovery token hash does).
package pki
