package model

import (
	"flag"
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"
)

var stepProfile = flag.Bool("step-profile", false, "print where the benchmark models' training steps spend their time, kernel by kernel (TestStepProfile)")

// timedBackend wraps a Backend and adds up the wall time of each kernel, so
// that a step's time can be split by operation (docs/benchmarks.md). GEMMs
// are keyed by their shape class as well.
type timedBackend struct {
	Backend
	total map[string]time.Duration
	calls map[string]int
}

func (t *timedBackend) time(name string, start time.Time) {
	t.total[name] += time.Since(start)
	t.calls[name]++
}

func (t *timedBackend) Gemm(transA, transB bool, m, n, k int, alpha float32, a []float32, lda int, b []float32, ldb int, beta float32, c []float32, ldc int) {
	defer t.time(fmt.Sprintf("Gemm %s%s", map[bool]string{false: "N", true: "T"}[transA], map[bool]string{false: "N", true: "T"}[transB]), time.Now())
	t.Backend.Gemm(transA, transB, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc)
}
func (t *timedBackend) GemmStridedBatched(transA, transB bool, m, n, k int, alpha float32, a []float32, lda, strideA int, b []float32, ldb, strideB int, beta float32, c []float32, ldc, strideC int, batch int) {
	defer t.time("GemmStridedBatched", time.Now())
	t.Backend.GemmStridedBatched(transA, transB, m, n, k, alpha, a, lda, strideA, b, ldb, strideB, beta, c, ldc, strideC, batch)
}
func (t *timedBackend) Im2Col(col, x []float32, n int, g ConvGeom) {
	defer t.time("Im2Col", time.Now())
	t.Backend.Im2Col(col, x, n, g)
}
func (t *timedBackend) Col2Im(dx, col []float32, n int, g ConvGeom) {
	defer t.time("Col2Im", time.Now())
	t.Backend.Col2Im(dx, col, n, g)
}
func (t *timedBackend) MaxPool2x2Forward(y []float32, argmax []int32, x []float32, planes, h, w int) {
	defer t.time("MaxPool2x2Forward", time.Now())
	t.Backend.MaxPool2x2Forward(y, argmax, x, planes, h, w)
}
func (t *timedBackend) MaxPool2x2Backward(dx, dy []float32, argmax []int32, planes, h, w int) {
	defer t.time("MaxPool2x2Backward", time.Now())
	t.Backend.MaxPool2x2Backward(dx, dy, argmax, planes, h, w)
}
func (t *timedBackend) ReLUForward(y, x []float32) {
	defer t.time("ReLUForward", time.Now())
	t.Backend.ReLUForward(y, x)
}
func (t *timedBackend) ReLUBackward(dx, dy, y []float32) {
	defer t.time("ReLUBackward", time.Now())
	t.Backend.ReLUBackward(dx, dy, y)
}
func (t *timedBackend) BiasForward(x, bias []float32, n, inner int) {
	defer t.time("BiasForward", time.Now())
	t.Backend.BiasForward(x, bias, n, inner)
}
func (t *timedBackend) BiasBackward(dbias, dy []float32, n, inner int) {
	defer t.time("BiasBackward", time.Now())
	t.Backend.BiasBackward(dbias, dy, n, inner)
}
func (t *timedBackend) SoftmaxCrossEntropyForward(probs, logits []float32, labels []int32, n, classes int) float64 {
	defer t.time("SoftmaxCrossEntropyForward", time.Now())
	return t.Backend.SoftmaxCrossEntropyForward(probs, logits, labels, n, classes)
}
func (t *timedBackend) SoftmaxCrossEntropyBackward(dlogits, probs []float32, labels []int32, n, classes int, scale float32) {
	defer t.time("SoftmaxCrossEntropyBackward", time.Now())
	t.Backend.SoftmaxCrossEntropyBackward(dlogits, probs, labels, n, classes, scale)
}
func (t *timedBackend) ArgmaxMatches(x []float32, labels []int32, n, classes int) int {
	defer t.time("ArgmaxMatches", time.Now())
	return t.Backend.ArgmaxMatches(x, labels, n, classes)
}
func (t *timedBackend) EmbeddingForward(out []float32, tokens []int32, wte, wpe []float32, n, tt, c int) {
	defer t.time("EmbeddingForward", time.Now())
	t.Backend.EmbeddingForward(out, tokens, wte, wpe, n, tt, c)
}
func (t *timedBackend) EmbeddingBackward(dwte, dwpe, dout []float32, tokens []int32, n, tt, c int) {
	defer t.time("EmbeddingBackward", time.Now())
	t.Backend.EmbeddingBackward(dwte, dwpe, dout, tokens, n, tt, c)
}
func (t *timedBackend) LayerNormForward(out, mean, rstd, inp, weight, bias []float32, n, c int) {
	defer t.time("LayerNormForward", time.Now())
	t.Backend.LayerNormForward(out, mean, rstd, inp, weight, bias, n, c)
}
func (t *timedBackend) LayerNormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd []float32, n, c int) {
	defer t.time("LayerNormBackward", time.Now())
	t.Backend.LayerNormBackward(dinp, dweight, dbias, dout, inp, weight, mean, rstd, n, c)
}
func (t *timedBackend) GELUForward(out, x []float32) {
	defer t.time("GELUForward", time.Now())
	t.Backend.GELUForward(out, x)
}
func (t *timedBackend) GELUBackward(dx, dout, x []float32) {
	defer t.time("GELUBackward", time.Now())
	t.Backend.GELUBackward(dx, dout, x)
}
func (t *timedBackend) Add(out, a, b []float32) {
	defer t.time("Add", time.Now())
	t.Backend.Add(out, a, b)
}
func (t *timedBackend) AttentionForward(out, att, qkv []float32, n, tt, c, heads int) {
	defer t.time("AttentionForward", time.Now())
	t.Backend.AttentionForward(out, att, qkv, n, tt, c, heads)
}
func (t *timedBackend) AttentionBackward(dqkv, dout, qkv, att []float32, n, tt, c, heads int) {
	defer t.time("AttentionBackward", time.Now())
	t.Backend.AttentionBackward(dqkv, dout, qkv, att, n, tt, c, heads)
}
func (t *timedBackend) LSTMCellForward(h, c, tanhC, gates, cPrev []float32, n, hidden int) {
	defer t.time("LSTMCellForward", time.Now())
	t.Backend.LSTMCellForward(h, c, tanhC, gates, cPrev, n, hidden)
}
func (t *timedBackend) LSTMCellBackward(dgates, dcPrev, dh, dc, gates, cPrev, tanhC []float32, n, hidden int) {
	defer t.time("LSTMCellBackward", time.Now())
	t.Backend.LSTMCellBackward(dgates, dcPrev, dh, dc, gates, cPrev, tanhC, n, hidden)
}
func (t *timedBackend) Scale(x []float32, s float32) {
	defer t.time("Scale", time.Now())
	t.Backend.Scale(x, s)
}

// TestStepProfile prints, with -step-profile, the share of a training step's
// wall time each kernel takes for the benchmark configurations (the
// optimizer step, SGD in Go, is timed separately).
func TestStepProfile(t *testing.T) {
	if !*stepProfile {
		t.Skip("run with -step-profile")
	}
	cases := []struct {
		name  string
		build func(Backend) Model
		batch Batch
	}{
		{"cnn batch 64", func(be Backend) Model { return NewCNN(be, 1) }, cnnTestBatch(1, 64)},
		{"gpt L4 d128 h4 ctx64 batch 16", func(be Backend) Model {
			m, _ := New(Config{Name: "gpt", Vocab: 256, Ctx: 64, Layers: 4, Dim: 128, Heads: 4}, be, 1)
			return m
		}, randomTokens(2, 16, 64, 256)},
		{"lstm L2 d128 h256 ctx64 batch 16", func(be Backend) Model {
			cfg, _ := DefaultConfig("lstm")
			m, _ := New(cfg, be, 1)
			return m
		}, randomTokens(3, 16, 64, 256)},
	}
	for _, tc := range cases {
		tb := &timedBackend{Backend: NewCPU(0), total: map[string]time.Duration{}, calls: map[string]int{}}
		m := tc.build(tb)
		opt := &SGD{LR: 0.01}
		var optTime, stepTime time.Duration
		const warm, steps = 5, 30
		for i := 0; i < warm+steps; i++ {
			if i == warm {
				tb.total, tb.calls, optTime, stepTime = map[string]time.Duration{}, map[string]int{}, 0, 0
			}
			start := time.Now()
			m.ZeroGrads()
			if _, err := m.ForwardBackward(tc.batch, 1/float32(tc.batch.Terms())); err != nil {
				t.Fatal(err)
			}
			o := time.Now()
			opt.Step(m.Params(), m.Grads())
			optTime += time.Since(o)
			stepTime += time.Since(start)
		}
		tb.total["SGD step (Go)"] = optTime
		tb.calls["SGD step (Go)"] = steps
		var names []string
		var kernels time.Duration
		for name, d := range tb.total {
			names = append(names, name)
			kernels += d
		}
		sort.Slice(names, func(i, j int) bool { return tb.total[names[i]] > tb.total[names[j]] })
		var b strings.Builder
		fmt.Fprintf(&b, "%s: %.1f ms a step\n| kernel | calls/step | ms/step | share |\n|---|---|---|---|\n", tc.name, ms(stepTime)/steps)
		for _, name := range names {
			d := tb.total[name]
			fmt.Fprintf(&b, "| %s | %d | %.2f | %.1f%% |\n", name, tb.calls[name]/steps, ms(d)/steps, 100*float64(d)/float64(stepTime))
		}
		fmt.Fprintf(&b, "| (outside kernels) | | %.2f | %.1f%% |\n", ms(stepTime-kernels)/steps, 100*float64(stepTime-kernels)/float64(stepTime))
		t.Log("\n" + b.String())
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
