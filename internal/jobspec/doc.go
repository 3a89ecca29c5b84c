// Package jobspec parses and validates the YAML job spec that users submit.
//
// A spec is refused at submission, never half-accepted: Parse reports every
// problem it finds at once, each naming the field by its YAML path
// ("optimizer.lr") together with what is allowed, so a user can fix the file
// in one pass. Unknown fields are errors too (a typo such as "learning_rte"
// would otherwise be silently ignored and the job trained with the default).
//
// A server passes its Policy in Options: the checkpoint stores and dataset
// locations a spec names must then lie inside it, and paths are probed for
// existence only once they do, so that a submitter learns nothing about
// the rest of the server's file system.
//
// The result is the defaulted api JobSpec, the same message that the
// coordinator stores in etcd and the workers read.
package jobspec
