//go:build !unix

package allreduce

// maybeRunProcRank: the process fault tests need unix signals.
func maybeRunProcRank() bool { return false }
