//go:build !amd64 || noasm

package model

// bestKernel returns the pure-Go micro-kernel: this build has no assembly.
func bestKernel() microKernel { return goKernel }

// asmKernels lists the assembly kernels this CPU can run: none.
func asmKernels() []microKernel { return nil }

// vecKernels are the vectorised elementwise kernels: none in this build.
type vecKernels struct {
	geluFwd func(dst, x []float32)
	geluBwd func(dst, dout, x []float32)
	expSub  func(dst, src []float32, shift float32) float32
}

func bestVec() vecKernels { return vecKernels{} }
