// Package jobspec parses and validates the YAML job spec that users submit.
//
// A spec is refused at submission, never half-accepted: Parse reports every
// problem it finds at once, each naming the field by its YAML path
// ("optimizer.lr") together with what is allowed, so a user can fix the file
// in one pass. Unknown fields are errors too (a typo such as "learning_rte"
// would otherwise be silently ignored and the job trained with the default).
//
// The result is the defaulted api JobSpec, the same message that the
// coordinator stores in etcd and the workers read.
package jobspec
