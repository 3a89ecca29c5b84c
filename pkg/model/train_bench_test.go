package model

import "testing"

// The training-step benchmarks mirror shared/bench/torch_train.py, PyTorch's
// side of the comparison in docs/benchmarks.md: one step is zero_grad,
// forward, backward and an SGD update (lr 0.01) on a fixed batch, with as
// many threads as GOMAXPROCS.

// BenchmarkCNNTrainStep: the reference CNN on 1×28×28 images, batch 64.
func BenchmarkCNNTrainStep(b *testing.B) {
	const n = 64
	x, y := testBatch(1, n)
	m := NewCNN(NewCPU(0), 1)
	benchTrainStep(b, m, Batch{N: n, X: x, Targets: y}, n, "samples/s")
}

// BenchmarkGPTTrainStep: the GPT of 4 layers, width 128, 4 heads, context
// 64 and a byte vocabulary, batch 16 (1024 tokens a step).
func BenchmarkGPTTrainStep(b *testing.B) {
	cfg := Config{Name: "gpt", Vocab: 256, Ctx: 64, Layers: 4, Dim: 128, Heads: 4}
	m, err := New(cfg, NewCPU(0), 1)
	if err != nil {
		b.Fatal(err)
	}
	const n = 16
	benchTrainStep(b, m, randomTokens(2, n, cfg.Ctx, cfg.Vocab), n*cfg.Ctx, "tokens/s")
}

// BenchmarkLSTMTrainStep: the default LSTM (2 layers, embedding 128,
// hidden 256, context 64, byte vocabulary), batch 16.
func BenchmarkLSTMTrainStep(b *testing.B) {
	cfg, _ := DefaultConfig("lstm")
	m, err := New(cfg, NewCPU(0), 1)
	if err != nil {
		b.Fatal(err)
	}
	const n = 16
	benchTrainStep(b, m, randomTokens(3, n, cfg.Ctx, cfg.Vocab), n*cfg.Ctx, "tokens/s")
}

func benchTrainStep(b *testing.B, m Model, batch Batch, units int, unit string) {
	opt := &SGD{LR: 0.01}
	step := func() {
		m.ZeroGrads()
		if _, err := m.ForwardBackward(batch, 1/float32(batch.Terms())); err != nil {
			b.Fatal(err)
		}
		opt.Step(m.Params(), m.Grads())
	}
	// Warm up: size the buffers, and let the scheduler's free lists fill
	// (see team), so that allocs/op shows the steady state.
	for range 5 {
		step()
	}
	b.ReportAllocs()
	for b.Loop() {
		step()
	}
	b.ReportMetric(float64(units*b.N)/b.Elapsed().Seconds(), unit)
}

// randomTokens returns n sequences of t random tokens with random targets.
func randomTokens(seed uint64, n, t, vocab int) Batch {
	r := newRand(seed)
	b := Batch{N: n, T: t, Tokens: make([]int32, n*t), Targets: make([]int32, n*t)}
	for i := range b.Tokens {
		b.Tokens[i] = int32(r.IntN(vocab))
		b.Targets[i] = int32(r.IntN(vocab))
	}
	return b
}
