package model

import (
	"fmt"
	"hash/fnv"
	"math"
	"math/rand/v2"
	"runtime"
	"strings"
	"testing"
)

// testBatch returns n inputs ~ U(−1, 1) and random labels.
func testBatch(seed uint64, n int) ([]float32, []int32) {
	r := newRand(seed)
	y := make([]int32, n)
	for i := range y {
		y[i] = int32(r.IntN(CNNClasses))
	}
	return uniform32(r, n*CNNInputSize, -1, 1), y
}

func TestCNNTensorTable(t *testing.T) {
	m := NewCNN(NewCPU(1), 1)
	want := []struct {
		name  string
		shape []int
	}{
		{"conv1.weight", []int{32, 1, 3, 3}},
		{"conv1.bias", []int{32}},
		{"conv2.weight", []int{64, 32, 3, 3}},
		{"conv2.bias", []int{64}},
		{"fc1.weight", []int{128, 3136}},
		{"fc1.bias", []int{128}},
		{"fc2.weight", []int{10, 128}},
		{"fc2.bias", []int{10}},
	}
	tensors := m.Tensors()
	if len(tensors) != len(want) {
		t.Fatalf("%d tensors, want %d", len(tensors), len(want))
	}
	off := 0
	for i, w := range want {
		got := tensors[i]
		if got.Name != w.name || fmt.Sprint(got.Shape) != fmt.Sprint(w.shape) || got.Offset != off {
			t.Errorf("tensor %d = %s %v at %d, want %s %v at %d", i, got.Name, got.Shape, got.Offset, w.name, w.shape, off)
		}
		off += got.Size()
	}
	// PyTorch's sum(p.numel() for p in CNN().parameters()).
	if off != 421642 || len(m.Params()) != off || len(m.Grads()) != off {
		t.Errorf("tensors cover %d values, params %d, grads %d; want 421642", off, len(m.Params()), len(m.Grads()))
	}
	tensors[0].Shape[0] = 99 // a copy: must not reach the model
	if m.Tensors()[0].Shape[0] != 32 {
		t.Error("Tensors returned the model's own table")
	}
}

func TestCNNInit(t *testing.T) {
	m := NewCNN(NewCPU(1), 7)
	fanIn := map[string]int{"conv1": 9, "conv2": 288, "fc1": 3136, "fc2": 128}
	for _, tn := range m.Tensors() {
		bound := 1 / math.Sqrt(float64(fanIn[strings.Split(tn.Name, ".")[0]]))
		vals := tn.Slice(m.Params())
		var sum, sq float64
		for i, v := range vals {
			if math.Abs(float64(v)) > bound*(1+1e-7) {
				t.Fatalf("%s[%d] = %v outside ±%v", tn.Name, i, v, bound)
			}
			sum += float64(v)
			sq += float64(v) * float64(v)
		}
		if len(vals) < 10000 {
			continue
		}
		// U(−b, b): mean 0, variance b²/3. With ≥ 18432 draws the sample
		// mean's standard error is below 0.005·b.
		mean, variance := sum/float64(len(vals)), sq/float64(len(vals))
		if math.Abs(mean) > 0.03*bound || math.Abs(variance/(bound*bound/3)-1) > 0.03 {
			t.Errorf("%s: mean %.3g, variance %.4g; want about 0 and %.4g", tn.Name, mean, variance, bound*bound/3)
		}
	}

	// The documented recipe, recomputed: PCG(seed, initStream), u = top 53
	// bits / 2⁵³, value = float32(b·(2u − 1)), conv1.weight first.
	pcg := rand.NewPCG(7, initStream)
	for i, got := range m.Params()[:5] {
		u := float64(pcg.Uint64()>>11) / (1 << 53)
		if want := float32((2*u - 1) / 3); got != want {
			t.Errorf("conv1.weight[%d] = %v, want %v", i, got, want)
		}
	}

	// Same seed, same bits; another seed, other values.
	equalBits(t, "params of two CNNs with seed 7", NewCNN(NewCPU(2), 7).Params(), m.Params())
	other := NewCNN(NewCPU(1), 8).Params()
	same := 0
	for i := range other {
		if other[i] == m.Params()[i] {
			same++
		}
	}
	if same > len(other)/1000 {
		t.Errorf("seeds 7 and 8 agree on %d of %d parameters", same, len(other))
	}

	// Pin the stream: a change here breaks reproducibility of every run
	// that recorded only its seed.
	h := fnv.New64a()
	for _, v := range NewCNN(NewCPU(1), 0).Params() {
		b := math.Float32bits(v)
		h.Write([]byte{byte(b), byte(b >> 8), byte(b >> 16), byte(b >> 24)})
	}
	if got, want := h.Sum64(), uint64(pinnedInitHash); got != want {
		t.Errorf("FNV-64a of the seed-0 parameters is %#x, want %#x", got, want)
	}
}

const pinnedInitHash = 0x92b41d829bbe9a57

// TestCNNGradientCheck compares the CNN's float32 forward with refCNN's
// float64 one, and its analytic gradients with central differences of
// refCNN's loss.
func TestCNNGradientCheck(t *testing.T) {
	const n = 2
	m := NewCNN(NewCPU(2), 3)
	x, y := testBatch(4, n)
	loss, err := cnnFB(m, x, y, n, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref := newRefCNN(m.Tensors(), m.Params(), x, y, n)
	refLoss, refLogits := ref.head()
	if math.Abs(loss-refLoss) > 1e-5*refLoss {
		t.Errorf("loss %.9g, float64 reference %.9g", loss, refLoss)
	}
	for i, want := range refLogits {
		if got := float64(m.fwd.logits[i]); math.Abs(got-want) > 1e-5*(1+math.Abs(want)) {
			t.Errorf("logit %d = %.7g, float64 reference %.7g", i, got, want)
		}
	}

	r := newRand(5)
	perTensor := map[string]int{"conv1.weight": 8, "conv1.bias": 4, "conv2.weight": 16, "conv2.bias": 8,
		"fc1.weight": 24, "fc1.bias": 12, "fc2.weight": 16, "fc2.bias": 10}
	const h = 1e-6
	for _, tn := range m.Tensors() {
		grad := tn.Slice(m.Grads())
		var rms float64
		for _, g := range grad {
			rms += float64(g) * float64(g)
		}
		rms = math.Sqrt(rms / float64(len(grad)))
		// Half the coordinates among those with a non-zero gradient (dead
		// ReLUs zero many of fc1's and fc2's), half anywhere.
		var live []int
		for i, g := range grad {
			if g != 0 {
				live = append(live, i)
			}
		}
		k := perTensor[tn.Name]
		coords := someCoords(r, tn.Size(), k-k/2)
		for _, j := range someCoords(r, len(live), k/2) {
			coords = append(coords, live[j])
		}
		nonzero, worst := 0, 0.0
		for _, i := range coords {
			p := tn.Offset + i
			orig := ref.p[p]
			want := (ref.lossAfter(p, orig+h) - ref.lossAfter(p, orig-h)) / (2 * h)
			ref.lossAfter(p, orig)
			got := float64(grad[i])
			if got != 0 {
				nonzero++
			}
			// float32 forward and backward: each gradient is a sum of
			// products rounded at 2⁻²⁴; sums over many positions (the
			// biases, conv weights) cancel, so the error is bounded
			// relative to the tensor's gradient scale as well as to the
			// value itself.
			d, tol := math.Abs(got-want), 1e-4*math.Abs(want)+1e-5*rms
			worst = max(worst, d/tol)
			if !(d <= tol) {
				t.Errorf("%s[%d]: analytic %.7g, central difference %.7g (|diff| %.2g > %.2g)", tn.Name, i, got, want, d, tol)
			}
		}
		if nonzero < k/2 {
			t.Errorf("%s: only %d of the %d checked gradients are non-zero: the check is vacuous", tn.Name, nonzero, len(coords))
		}
		t.Logf("%s: %d coordinates, largest |diff| is %.2g of the tolerance", tn.Name, len(coords), worst)
	}

	// The model's own central differences, for fc2: the loss is smooth in
	// fc2's parameters (the logits are linear in them), so float32 forward
	// passes with a step of 1e-2 give about 1e-5 relative accuracy. Deeper
	// parameters pass through ReLU and max-pool kinks, and float32 rounding
	// over 1e-3..1e-2 steps leaves errors of several per cent there; hence
	// refCNN above.
	grads := append([]float32(nil), m.Grads()...)
	loss32 := func() float64 {
		l, err := cnnFB(m, x, y, n, 0) // scale 0: Grads unchanged
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	for _, tn := range m.Tensors()[6:] {
		gradCheck(t, tn.Name+" (float32 model)", tn.Slice(m.Params()), tn.Slice(grads), someCoords(r, tn.Size(), 20), 1e-2, 1e-5, 1e-4, loss32)
	}
}

// TestCNNScaleAndAccumulate checks the ForwardBackward contract: gradients
// are scale·∂(loss sum), added to what Grads holds.
func TestCNNScaleAndAccumulate(t *testing.T) {
	const n = 6
	x, y := testBatch(6, n)
	m := NewCNN(NewCPU(2), 1)
	full, err := cnnFB(m, x, y, n, 1)
	if err != nil {
		t.Fatal(err)
	}
	g1 := append([]float32(nil), m.Grads()...)

	// A power-of-two scale multiplies every intermediate exactly.
	m.ZeroGrads()
	if _, err := cnnFB(m, x, y, n, 0.25); err != nil {
		t.Fatal(err)
	}
	for i, g := range m.Grads() {
		if g != 0.25*g1[i] {
			t.Fatalf("grad[%d] with scale 0.25 is %v, want exactly %v", i, g, 0.25*g1[i])
		}
	}

	// Two halves accumulate to the whole batch, as two ranks' shares do.
	m.ZeroGrads()
	l1, err1 := cnnFB(m, x[:2*CNNInputSize], y[:2], 2, 1)
	l2, err2 := cnnFB(m, x[2*CNNInputSize:], y[2:], n-2, 1)
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	if math.Abs(l1+l2-full) > 1e-12*full {
		t.Errorf("loss of the halves %.15g + %.15g, of the whole %.15g", l1, l2, full)
	}
	var maxAbs float64
	for _, g := range g1 {
		maxAbs = max(maxAbs, math.Abs(float64(g)))
	}
	for i, g := range m.Grads() {
		if d := math.Abs(float64(g - g1[i])); d > 1e-6*maxAbs {
			t.Fatalf("grad[%d] accumulated over two halves %v, whole batch %v", i, g, g1[i])
		}
	}

	// n = 0 is a rank with no samples: no loss, grads untouched.
	before := append([]float32(nil), m.Grads()...)
	if l, err := cnnFB(m, nil, nil, 0, 1); l != 0 || err != nil {
		t.Errorf("n=0: loss %v, err %v; want 0, nil", l, err)
	}
	equalBits(t, "grads after n=0", m.Grads(), before)
}

func TestCNNInputErrors(t *testing.T) {
	m := NewCNN(NewCPU(1), 1)
	x, y := testBatch(1, 2)
	for _, tc := range []struct {
		name string
		x    []float32
		y    []int32
		n    int
		want string
	}{
		{"short x", x[:100], y, 2, "100 input values for 2 samples, want 1568"},
		{"n too large", x, y, 3, "want 2352"},
		{"negative n", nil, nil, -1, "negative sample count"},
		{"label count", x, y[:1], 2, "1 labels for 2 samples"},
		{"label too large", x, []int32{3, 10}, 2, "label 10 of sample 1 is outside [0,10)"},
		{"negative label", x, []int32{-1, 0}, 2, "label -1 of sample 0"},
	} {
		before := append([]float32(nil), m.Grads()...)
		_, err := cnnFB(m, tc.x, tc.y, tc.n, 1)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: error %v, want one containing %q", tc.name, err, tc.want)
		}
		equalBits(t, tc.name+": grads after a refused call", m.Grads(), before)
	}
	if err := m.Predict(x, 2, make([]int32, 1)); err == nil || !strings.Contains(err.Error(), "room for 1 predictions, want 2") {
		t.Errorf("Predict with a short output: error %v", err)
	}
	if err := m.Predict(x[:5], 2, make([]int32, 2)); err == nil || !strings.Contains(err.Error(), "5 input values") {
		t.Errorf("Predict with short input: error %v", err)
	}
}

// TestCNNDeterminism requires bit-identical losses and gradients from two
// models with one seed, whatever GOMAXPROCS and the number of workers.
func TestCNNDeterminism(t *testing.T) {
	const n = 12
	x, y := testBatch(7, n)
	run := func(workers int) (float64, []float32) {
		m := NewCNN(NewCPU(workers), 11)
		loss, err := cnnFB(m, x, y, n, 1.0/n)
		if err != nil {
			t.Fatal(err)
		}
		// A second step on top, as a training loop does, after an update.
		for i, g := range m.Grads() {
			m.Params()[i] -= 0.1 * g
		}
		m.ZeroGrads()
		loss2, err := cnnFB(m, x, y, n, 1.0/n)
		if err != nil {
			t.Fatal(err)
		}
		return loss + loss2, m.Grads()
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(0))
	runtime.GOMAXPROCS(1)
	wantLoss, want := run(0) // 0: one worker, from GOMAXPROCS
	runtime.GOMAXPROCS(2)
	for _, workers := range []int{0, 2, 3} {
		loss, got := run(workers)
		if math.Float64bits(loss) != math.Float64bits(wantLoss) {
			t.Errorf("workers=%d: loss %v, want %v", workers, loss, wantLoss)
		}
		equalBits(t, fmt.Sprintf("grads with workers=%d vs GOMAXPROCS=1", workers), got, want)
	}
}

// TestCNNAllocations requires that a step at a batch size seen before
// allocates nothing, goroutines included. testing.AllocsPerRun rounds the
// mean down, so it is run once per measurement: any allocation counts. It
// measures at GOMAXPROCS=1 (with two workers still started), after warming
// up at GOMAXPROCS=1 too: changing GOMAXPROCS drops per-P runtime caches
// (goroutine descriptors, the wait queues' entries), which the next calls
// refill; see team for the runtime's warm-up allocations with more Ps.
func TestCNNAllocations(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	m := NewCNN(NewCPU(2), 1)
	x, y := testBatch(8, 8)
	out := make([]int32, 8)
	for range 3 {
		if _, err := cnnFB(m, x, y, 8, 0.125); err != nil {
			t.Fatal(err)
		}
	}
	for _, n := range []int{8, 8, 5} { // 5: smaller batches reuse the buffers
		got := testing.AllocsPerRun(1, func() {
			if _, err := cnnFB(m, x[:n*CNNInputSize], y[:n], n, 0.125); err != nil {
				t.Fatal(err)
			}
		})
		if got != 0 {
			t.Errorf("ForwardBackward(n=%d): %v allocations, want 0", n, got)
		}
	}
	if got := testing.AllocsPerRun(1, func() { _ = m.Predict(x, 8, out) }); got != 0 {
		t.Errorf("Predict: %v allocations, want 0", got)
	}
}

// TestCNNPredict checks Predict against the logits of ForwardBackward, over
// more samples than one chunk so that chunking is exercised.
func TestCNNPredict(t *testing.T) {
	const n = cnnMaxChunk + 3
	x, y := testBatch(9, n)
	m := NewCNN(NewCPU(2), 2)
	got := make([]int32, n)
	if err := m.Predict(x, n, got); err != nil {
		t.Fatal(err)
	}
	for _, lo := range []int{0, cnnMaxChunk - 1, cnnMaxChunk} { // the last chunk starts at cnnMaxChunk
		k := min(3, n-lo)
		if _, err := cnnFB(m, x[lo*CNNInputSize:(lo+k)*CNNInputSize], y[lo:lo+k], k, 0); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < k; i++ {
			row := m.fwd.logits[i*CNNClasses : (i+1)*CNNClasses]
			best := 0
			for j := range row {
				if row[j] > row[best] {
					best = j
				}
			}
			if got[lo+i] != int32(best) {
				t.Errorf("sample %d: predicted %d, logits %v", lo+i, got[lo+i], row)
			}
		}
	}
}

// separableData makes n 28×28 images whose class is the position of a bright
// 7×7 square (classes 0..9 on a 4×3 grid), plus noise.
func separableData(r *rand.Rand, n int) ([]float32, []int32) {
	x := uniform32(r, n*CNNInputSize, -0.3, 0.3)
	y := make([]int32, n)
	for i := range y {
		c := r.IntN(CNNClasses)
		y[i] = int32(c)
		oy, ox := (c/4)*9+1, (c%4)*7
		for dy := 0; dy < 7; dy++ {
			for dx := 0; dx < 7; dx++ {
				x[i*CNNInputSize+(oy+dy)*28+ox+dx] += 1
			}
		}
	}
	return x, y
}

// TestCNNTrains runs SGD on separable data and requires the loss to fall well
// below chance and the training accuracy to rise.
func TestCNNTrains(t *testing.T) {
	const n, batch, steps = 160, 16, 20
	r := newRand(10)
	x, y := separableData(r, n)
	m := NewCNN(NewCPU(0), 1)
	opt := &SGD{LR: 0.05, Momentum: 0.9}
	var first, last float64
	for step := 0; step < steps; step++ {
		lo := (step * batch) % n
		m.ZeroGrads()
		loss, err := cnnFB(m, x[lo*CNNInputSize:(lo+batch)*CNNInputSize], y[lo:lo+batch], batch, 1.0/batch)
		if err != nil {
			t.Fatal(err)
		}
		opt.Step(m.Params(), m.Grads())
		mean := loss / batch
		if step == 0 {
			first = mean
		}
		last = mean
		t.Logf("step %2d: loss %.4f", step, mean)
	}
	pred := make([]int32, n)
	if err := m.Predict(x, n, pred); err != nil {
		t.Fatal(err)
	}
	correct := 0
	for i := range pred {
		if pred[i] == y[i] {
			correct++
		}
	}
	if first < 2 || last > 0.3*first || correct < n*9/10 {
		t.Errorf("loss went from %.3f to %.3f and %d/%d are classified correctly; want a drop below 30%% and 90%% accuracy", first, last, correct, n)
	}
}

func TestNew(t *testing.T) {
	m, err := New(Config{Name: "cnn"}, NewCPU(1), 5)
	if err != nil || m.Name() != "cnn" {
		t.Fatalf("New(cnn) = %v, %v", m, err)
	}
	equalBits(t, "New(cnn) vs NewCNN", m.Params(), NewCNN(NewCPU(1), 5).Params())
	if _, err := New(Config{Name: "resnet"}, NewCPU(1), 5); err == nil || !strings.Contains(err.Error(), `unknown model "resnet" (known: cnn, lstm, gpt)`) {
		t.Errorf("New(resnet): error %v", err)
	}
	if _, err := New(Config{Name: "cnn"}, nil, 5); err == nil {
		t.Error("New with a nil backend: no error")
	}
}

func TestView(t *testing.T) {
	m := NewCNN(NewCPU(1), 1)
	ti := m.Tensors()[6] // fc2.weight [10,128]
	v := View(m.Params(), ti)
	if fmt.Sprint(v.Shape()) != "(10, 128)" {
		t.Fatalf("view shape %v", v.Shape())
	}
	if err := v.SetAt(float32(42), 9, 127); err != nil {
		t.Fatal(err)
	}
	if got := m.Params()[ti.Offset+9*128+127]; got != 42 {
		t.Errorf("write through the view: param is %v, want 42", got)
	}
}

func BenchmarkCNNForwardBackward(b *testing.B) {
	const n = 64
	x, y := testBatch(1, n)
	m := NewCNN(NewCPU(0), 1)
	// Warm up: size the buffers, and let the scheduler's free lists fill
	// (see team), so that allocs/op shows the steady state.
	for range 10 {
		if _, err := cnnFB(m, x, y, n, 1.0/n); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := cnnFB(m, x, y, n, 1.0/n); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "samples/s")
}
