package model

import "math"

// refCNN is an independent float64 implementation of the CNN's forward pass:
// direct convolutions, no im2col, no GEMM, no backend. The whole-model
// gradient check differentiates it numerically, where float64 allows a step
// of 1e-6 (no kink is crossed, and the truncation and rounding errors are
// far below float32 precision), and compares with the float32 CNN's analytic
// gradients.
//
// Its stages are cached so that a perturbed parameter only recomputes what it
// affects: fc parameters only the head, a conv2 parameter only its output
// channel.
type refCNN struct {
	n      int
	x      []float64
	labels []int32
	p      []float64 // parameters, in the CNN's layout
	t      map[string]TensorInfo

	pool1 []float64 // [n][32][14][14]
	pool2 []float64 // [n][64][7][7] = [n][3136]
}

func newRefCNN(tensors []TensorInfo, params []float32, x []float32, labels []int32, n int) *refCNN {
	r := &refCNN{n: n, labels: labels, t: map[string]TensorInfo{}}
	for _, t := range tensors {
		r.t[t.Name] = t
	}
	r.p = make([]float64, len(params))
	for i, v := range params {
		r.p[i] = float64(v)
	}
	r.x = make([]float64, len(x))
	for i, v := range x {
		r.x[i] = float64(v)
	}
	r.pool1 = make([]float64, n*32*14*14)
	r.pool2 = make([]float64, n*3136)
	r.stage1()
	for oc := 0; oc < 64; oc++ {
		r.stage2(oc)
	}
	return r
}

func (r *refCNN) tensor(name string) []float64 {
	t := r.t[name]
	return r.p[t.Offset : t.Offset+t.Size()]
}

// convReLUPool computes, for one image and one output channel, pool(relu(conv3x3
// pad 1 (in) + b)) into out, for in of inC×h×w.
func convReLUPool(out, in, w []float64, b float64, inC, h, wd int) {
	conv := make([]float64, h*wd)
	for y := 0; y < h; y++ {
		for x := 0; x < wd; x++ {
			s := b
			for c := 0; c < inC; c++ {
				for kh := 0; kh < 3; kh++ {
					for kw := 0; kw < 3; kw++ {
						iy, ix := y+kh-1, x+kw-1
						if iy >= 0 && iy < h && ix >= 0 && ix < wd {
							s += w[(c*3+kh)*3+kw] * in[(c*h+iy)*wd+ix]
						}
					}
				}
			}
			conv[y*wd+x] = math.Max(s, 0)
		}
	}
	for y := 0; y < h/2; y++ {
		for x := 0; x < wd/2; x++ {
			out[y*(wd/2)+x] = max(conv[2*y*wd+2*x], conv[2*y*wd+2*x+1], conv[(2*y+1)*wd+2*x], conv[(2*y+1)*wd+2*x+1])
		}
	}
}

// stage1 recomputes conv1 → ReLU → pool for every image and channel.
func (r *refCNN) stage1() {
	w, b := r.tensor("conv1.weight"), r.tensor("conv1.bias")
	for i := 0; i < r.n; i++ {
		for oc := 0; oc < 32; oc++ {
			convReLUPool(r.pool1[(i*32+oc)*196:][:196], r.x[i*784:][:784], w[oc*9:][:9], b[oc], 1, 28, 28)
		}
	}
}

// stage2 recomputes conv2 → ReLU → pool for output channel oc of every image.
func (r *refCNN) stage2(oc int) {
	w, b := r.tensor("conv2.weight"), r.tensor("conv2.bias")
	for i := 0; i < r.n; i++ {
		convReLUPool(r.pool2[i*3136+oc*49:][:49], r.pool1[i*32*196:][:32*196], w[oc*288:][:288], b[oc], 32, 14, 14)
	}
}

// head runs fc1 → ReLU → fc2 → cross-entropy and returns the loss sum and the
// logits.
func (r *refCNN) head() (float64, []float64) {
	w1, b1, w2, b2 := r.tensor("fc1.weight"), r.tensor("fc1.bias"), r.tensor("fc2.weight"), r.tensor("fc2.bias")
	var loss float64
	logits := make([]float64, r.n*10)
	h := make([]float64, 128)
	for i := 0; i < r.n; i++ {
		in := r.pool2[i*3136 : (i+1)*3136]
		for o := range h {
			s := b1[o]
			for j, v := range in {
				s += w1[o*3136+j] * v
			}
			h[o] = math.Max(s, 0)
		}
		z := logits[i*10 : (i+1)*10]
		mx := math.Inf(-1)
		for o := range z {
			s := b2[o]
			for j, v := range h {
				s += w2[o*128+j] * v
			}
			z[o] = s
			mx = math.Max(mx, s)
		}
		var sum float64
		for _, v := range z {
			sum += math.Exp(v - mx)
		}
		loss += math.Log(sum) + mx - z[r.labels[i]]
	}
	return loss, logits
}

// lossAfter sets parameter i to v, recomputes what depends on it and returns
// the loss; it leaves the parameter at v.
func (r *refCNN) lossAfter(i int, v float64) float64 {
	r.p[i] = v
	switch name := r.owner(i); name {
	case "conv1.weight", "conv1.bias":
		r.stage1()
		for oc := 0; oc < 64; oc++ {
			r.stage2(oc)
		}
	case "conv2.weight":
		r.stage2((i - r.t[name].Offset) / 288)
	case "conv2.bias":
		r.stage2(i - r.t[name].Offset)
	}
	loss, _ := r.head()
	return loss
}

func (r *refCNN) owner(i int) string {
	for name, t := range r.t {
		if i >= t.Offset && i < t.Offset+t.Size() {
			return name
		}
	}
	panic("parameter index out of range")
}
