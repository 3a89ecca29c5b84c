//go:build !amd64 || noasm

package model

// bestKernel returns the pure-Go micro-kernel: this build has no assembly.
func bestKernel() microKernel { return goKernel }

// asmKernels lists the assembly kernels this CPU can run: none.
func asmKernels() []microKernel { return nil }
