package model

import "math"

// Independent float64 implementations of the language models' losses, with
// naive loops and no backend: the whole-model gradient checks differentiate
// them numerically with a step of 1e-6 (float64 makes the central difference
// exact to far below float32 precision) and compare with the float32 models'
// analytic gradients. They read parameters by tensor name from the flat
// layout, so they also pin which tensor each name is.

// refParams is a model's parameters in float64, by tensor name.
type refParams struct {
	p []float64
	t map[string]TensorInfo
}

func newRefParams(tensors []TensorInfo, params []float32) *refParams {
	r := &refParams{p: make([]float64, len(params)), t: map[string]TensorInfo{}}
	for i, v := range params {
		r.p[i] = float64(v)
	}
	for _, t := range tensors {
		r.t[t.Name] = t
	}
	return r
}

// get returns the named tensor's values (a view of p).
func (r *refParams) get(name string) []float64 {
	t, ok := r.t[name]
	if !ok {
		panic("reference: no tensor " + name)
	}
	return r.p[t.Offset : t.Offset+t.Size()]
}

// linear64 returns x·wᵀ + b for x [rows][in], w [out][in] (b may be nil).
func linear64(x, w, b []float64, rows, in, out int) []float64 {
	y := make([]float64, rows*out)
	for r := 0; r < rows; r++ {
		for o := 0; o < out; o++ {
			s := 0.0
			if b != nil {
				s = b[o]
			}
			for i := 0; i < in; i++ {
				s += x[r*in+i] * w[o*in+i]
			}
			y[r*out+o] = s
		}
	}
	return y
}

func layerNormRows64(x, w, b []float64, rows, c int) []float64 {
	out := make([]float64, rows*c)
	for r := 0; r < rows; r++ {
		row := x[r*c : (r+1)*c]
		var m, v float64
		for _, xv := range row {
			m += xv
		}
		m /= float64(c)
		for _, xv := range row {
			v += (xv - m) * (xv - m)
		}
		rs := 1 / math.Sqrt(v/float64(c)+lnEps)
		for i, xv := range row {
			out[r*c+i] = (xv-m)*rs*w[i] + b[i]
		}
	}
	return out
}

// crossEntropy64 returns Σ −log softmax(logits)[target] over targets ≥ 0.
func crossEntropy64(logits []float64, targets []int32, classes int) float64 {
	var loss float64
	for r, y := range targets {
		if y < 0 {
			continue
		}
		row := logits[r*classes : (r+1)*classes]
		mx := math.Inf(-1)
		for _, v := range row {
			mx = math.Max(mx, v)
		}
		var s float64
		for _, v := range row {
			s += math.Exp(v - mx)
		}
		loss += math.Log(s) - (row[y] - mx)
	}
	return loss
}

// gptLoss64 is the GPT's loss sum in float64.
func gptLoss64(cfg Config, r *refParams, b Batch, t int) float64 {
	n, V, C, NH, Hd := b.N, cfg.Vocab, cfg.Dim, cfg.Heads, cfg.Hidden
	rows, hs := n*t, C/NH
	wte, wpe := r.get("transformer.wte.weight"), r.get("transformer.wpe.weight")
	x := make([]float64, rows*C)
	for row, tok := range b.Tokens {
		for i := 0; i < C; i++ {
			x[row*C+i] = wte[int(tok)*C+i] + wpe[(row%t)*C+i]
		}
	}
	blk := func(l int, what string) []float64 { return r.get("transformer.h." + itoa(l) + "." + what) }
	for l := 0; l < cfg.Layers; l++ {
		ln1 := layerNormRows64(x, blk(l, "ln_1.weight"), blk(l, "ln_1.bias"), rows, C)
		qkv := linear64(ln1, blk(l, "attn.c_attn.weight"), blk(l, "attn.c_attn.bias"), rows, C, 3*C)
		y := make([]float64, rows*C)
		for s := 0; s < n; s++ {
			for h := 0; h < NH; h++ {
				for i := 0; i < t; i++ {
					q := qkv[(s*t+i)*3*C+h*hs:]
					w := make([]float64, i+1)
					mx := math.Inf(-1)
					for j := 0; j <= i; j++ {
						k := qkv[(s*t+j)*3*C+C+h*hs:]
						for d := 0; d < hs; d++ {
							w[j] += q[d] * k[d]
						}
						w[j] /= math.Sqrt(float64(hs))
						mx = math.Max(mx, w[j])
					}
					var sum float64
					for j := range w {
						w[j] = math.Exp(w[j] - mx)
						sum += w[j]
					}
					for j := range w {
						v := qkv[(s*t+j)*3*C+2*C+h*hs:]
						for d := 0; d < hs; d++ {
							y[(s*t+i)*C+h*hs+d] += w[j] / sum * v[d]
						}
					}
				}
			}
		}
		proj := linear64(y, blk(l, "attn.c_proj.weight"), blk(l, "attn.c_proj.bias"), rows, C, C)
		for i := range x {
			x[i] += proj[i]
		}
		ln2 := layerNormRows64(x, blk(l, "ln_2.weight"), blk(l, "ln_2.bias"), rows, C)
		fc := linear64(ln2, blk(l, "mlp.c_fc.weight"), blk(l, "mlp.c_fc.bias"), rows, C, Hd)
		for i, v := range fc {
			fc[i] = v * 0.5 * (1 + math.Erf(v/math.Sqrt2))
		}
		proj = linear64(fc, blk(l, "mlp.c_proj.weight"), blk(l, "mlp.c_proj.bias"), rows, Hd, C)
		for i := range x {
			x[i] += proj[i]
		}
	}
	lnf := layerNormRows64(x, r.get("transformer.ln_f.weight"), r.get("transformer.ln_f.bias"), rows, C)
	head := "lm_head.weight"
	if cfg.TieEmbeddings {
		head = "transformer.wte.weight"
	}
	return crossEntropy64(linear64(lnf, r.get(head), nil, rows, C, V), b.Targets, V)
}

// lstmLoss64 is the LSTM's loss sum in float64. Truncation (BPTT) changes
// gradients, not the loss, so the reference has none: the gradient check
// runs without it, and the PyTorch reference covers it.
func lstmLoss64(cfg Config, r *refParams, b Batch, t int) float64 {
	n, V, C, H := b.N, cfg.Vocab, cfg.Dim, cfg.Hidden
	emb := r.get("embedding.weight")
	in, inW := make([]float64, n*t*C), C // batch-major [n][t][·]
	for row, tok := range b.Tokens {
		copy(in[row*C:(row+1)*C], emb[int(tok)*C:])
	}
	sig := func(x float64) float64 { return 1 / (1 + math.Exp(-x)) }
	for l := 0; l < cfg.Layers; l++ {
		wih, whh := r.get("lstm.weight_ih_l"+itoa(l)), r.get("lstm.weight_hh_l"+itoa(l))
		bih, bhh := r.get("lstm.bias_ih_l"+itoa(l)), r.get("lstm.bias_hh_l"+itoa(l))
		out := make([]float64, n*t*H)
		for s := 0; s < n; s++ {
			h, c := make([]float64, H), make([]float64, H)
			for p := 0; p < t; p++ {
				x := in[(s*t+p)*inW : (s*t+p+1)*inW]
				g := make([]float64, 4*H)
				for o := range g {
					v := bih[o] + bhh[o]
					for i, xv := range x {
						v += wih[o*inW+i] * xv
					}
					for i, hv := range h {
						v += whh[o*H+i] * hv
					}
					g[o] = v
				}
				for j := 0; j < H; j++ {
					c[j] = sig(g[H+j])*c[j] + sig(g[j])*math.Tanh(g[2*H+j])
					h[j] = sig(g[3*H+j]) * math.Tanh(c[j])
				}
				copy(out[(s*t+p)*H:], h)
			}
		}
		in, inW = out, H
	}
	return crossEntropy64(linear64(in, r.get("head.weight"), r.get("head.bias"), n*t, H, V), b.Targets, V)
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + itoa(i%10)
}
