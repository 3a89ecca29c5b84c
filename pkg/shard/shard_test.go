package shard

import (
	"slices"
	"testing"
	"testing/quick"
)

func TestOrderIsAPermutationAndPure(t *testing.T) {
	for _, n := range []int{0, 1, 2, 7, 1000} {
		a := Order(42, 3, n)
		b := Order(42, 3, n)
		if !slices.Equal(a, b) {
			t.Fatalf("n=%d: Order is not a pure function of (seed, epoch)", n)
		}
		seen := make([]bool, n)
		for _, v := range a {
			if v < 0 || int(v) >= n || seen[v] {
				t.Fatalf("n=%d: not a permutation: %v", n, a)
			}
			seen[v] = true
		}
	}
	if slices.Equal(Order(42, 0, 100), Order(42, 1, 100)) {
		t.Error("epochs 0 and 1 have the same order")
	}
	if slices.Equal(Order(1, 0, 100), Order(2, 0, 100)) {
		t.Error("seeds 1 and 2 have the same order")
	}
}

// The order is pinned: a change here would break resuming old checkpoints
// with the same data order.
func TestOrderPinned(t *testing.T) {
	got := Order(1, 0, 10)
	want := []int32{4, 9, 0, 8, 1, 6, 7, 5, 3, 2}
	if !slices.Equal(got, want) {
		t.Fatalf("Order(1, 0, 10) = %v, want %v", got, want)
	}
}

func TestOrderUniform(t *testing.T) {
	// Position of element 0 over many seeds should be roughly uniform.
	const n, trials = 8, 40000
	var counts [n]int
	for s := range trials {
		o := Order(uint64(s), 0, n)
		counts[slices.Index(o, 0)]++
	}
	for i, c := range counts {
		if c < trials/n*9/10 || c > trials/n*11/10 {
			t.Errorf("position %d: %d hits of %d, want about %d", i, c, trials, trials/n)
		}
	}
}

// Every epoch uses every sample exactly once across all ranks, for any
// dataset size, world size and batch, even when the world size changes
// mid-epoch.
func TestEpochCoversEverySampleOnce(t *testing.T) {
	f := func(n16 uint16, w1, w2, b8 uint8, switchAt uint8) bool {
		n := int(n16%3000) + 1
		worlds := []int{int(w1%8) + 1, int(w2%8) + 1}
		batch := int(b8%64) + 1
		seen := make([]int, n)
		s := NewSampler(n, 9)
		p := Position{Epoch: 2}
		for step := 0; p.Epoch == 2; step++ {
			world := worlds[0]
			if step >= int(switchAt%16) {
				world = worlds[1]
			}
			var next Position
			for r := 0; r < world; r++ {
				idx, g, nx, err := s.Step(p, world, r, batch)
				if err != nil || g > world*batch || len(idx) > batch {
					return false
				}
				for _, i := range idx {
					seen[i]++
				}
				next = nx
			}
			p = next
		}
		for _, c := range seen {
			if c != 1 {
				return false
			}
		}
		return true
	}
	if err := quick.Check(f, &quick.Config{MaxCount: 300}); err != nil {
		t.Fatal(err)
	}
}

// W ranks of batch B see exactly the samples that one rank of batch W*B sees.
func TestDataParallelSamplesMatchSingleRank(t *testing.T) {
	const n = 1000
	one, two := NewSampler(n, 5), NewSampler(n, 5)
	p1, p2 := Position{}, Position{}
	for step := 0; step < 40; step++ {
		idx1, _, n1, _ := one.Step(p1, 1, 0, 64)
		a, _, n2, _ := two.Step(p2, 2, 0, 32)
		b, _, _, _ := two.Step(p2, 2, 1, 32)
		if !slices.Equal(idx1, append(slices.Clone(a), b...)) {
			t.Fatalf("step %d: 1x64 got %v, 2x32 got %v+%v", step, idx1, a, b)
		}
		if n1 != n2 {
			t.Fatalf("step %d: positions diverge %v vs %v", step, n1, n2)
		}
		p1, p2 = n1, n2
	}
}

func TestStepsLeftInEpoch(t *testing.T) {
	cases := []struct{ n, pos, world, batch, want int }{
		{60000, 0, 2, 32, 938},
		{60000, 59968, 2, 32, 1},
		{10, 0, 3, 4, 1},
		{10, 5, 1, 1, 5},
	}
	for _, c := range cases {
		if got := StepsLeftInEpoch(c.n, Position{Pos: c.pos}, c.world, c.batch); got != c.want {
			t.Errorf("StepsLeftInEpoch(%+v) = %d, want %d", c, got, c.want)
		}
	}
}

func TestRangeCovers(t *testing.T) {
	for world := 1; world <= 7; world++ {
		next := 0
		for r := 0; r < world; r++ {
			s, e := Range(10001, world, r)
			if s != next || e < s {
				t.Fatalf("world %d rank %d: [%d,%d) after %d", world, r, s, e, next)
			}
			next = e
		}
		if next != 10001 {
			t.Fatalf("world %d covers %d of 10001", world, next)
		}
	}
}

func TestStepRejectsBadArguments(t *testing.T) {
	s := NewSampler(10, 1)
	if _, _, _, err := s.Step(Position{}, 2, 2, 4); err == nil {
		t.Error("rank == world accepted")
	}
	if _, _, _, err := s.Step(Position{Pos: 10}, 1, 0, 4); err == nil {
		t.Error("position at end of epoch accepted")
	}
}

func TestBlockOrder(t *testing.T) {
	sizes := []int{5, 0, 7, 3}
	a := BlockOrder(4, 1, sizes)
	if !slices.Equal(a, BlockOrder(4, 1, sizes)) {
		t.Fatal("BlockOrder is not pure")
	}
	if slices.Equal(a, BlockOrder(4, 2, sizes)) {
		t.Error("epochs 1 and 2 have the same block order")
	}
	seen := make([]bool, 15)
	block := func(i int32) int {
		switch {
		case i < 5:
			return 0
		case i < 12:
			return 2
		}
		return 3
	}
	// A permutation in which each block's samples are contiguous.
	runs := 0
	for k, v := range a {
		if seen[v] {
			t.Fatalf("sample %d twice in %v", v, a)
		}
		seen[v] = true
		if k == 0 || block(a[k-1]) != block(v) {
			runs++
		}
	}
	if runs != 3 {
		t.Errorf("order %v visits blocks in %d runs, want 3 (one per non-empty block)", a, runs)
	}
	s := NewBlockSampler(sizes, 4)
	idx, g, _, err := s.Step(Position{Epoch: 1}, 2, 1, 3)
	if err != nil || g != 6 || !slices.Equal(idx, a[3:6]) {
		t.Errorf("Step = %v %d %v, want %v", idx, g, err, a[3:6])
	}
	if up := s.Upcoming(Position{Epoch: 1, Pos: 10}); !slices.Equal(up, a[10:]) {
		t.Errorf("Upcoming = %v", up)
	}
}
