//go:build !amd64

package allreduce

func addF32(dst []float32, src []byte) { addF32Generic(dst, src) }

func divF32(dst []float32, d float32) { divF32Generic(dst, d) }

func addAsmVariants(map[string]func([]float32, []byte)) {}
