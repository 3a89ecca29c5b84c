package worker

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// inmemRing returns one communicator per rank over a new in-memory
// network.
func inmemRing(t *testing.T, world int, gen uint64) ([]*allreduce.Comm, *allreduce.InmemNetwork) {
	t.Helper()
	net := allreduce.NewInmemNetwork(world)
	comms := make([]*allreduce.Comm, world)
	for r := range world {
		c, err := allreduce.New(allreduce.Config{Rank: r, World: world, Generation: gen}, net.Transport(r))
		if err != nil {
			t.Fatal(err)
		}
		comms[r] = c
	}
	return comms, net
}

// commitLog collects every rank's committed steps.
type commitLog struct {
	mu     sync.Mutex
	byStep map[int64][]Commit
}

func (l *commitLog) hook(c Commit) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.byStep[c.Step] = append(l.byStep[c.Step], c)
}

// A rank dies after step 10. The two survivors see their ring break,
// naming the dead rank; with a fresh replacement they join a new ring
// generation, the replacement receives the state from a survivor, and the
// job ends with parameters bit-identical to an uninterrupted run on the
// same number of ranks. Every step's samples were committed once, and the
// survivors leak no goroutine.
func TestTrainerGoesOnInPlaceAfterALostRank(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	const world, steps, lostAfter = 3, 24, 10
	spec := testSpec(world, 8, steps)
	ds := loadMNIST(t)
	newTrainer := func(log *commitLog) *Trainer {
		tr := &Trainer{JobID: "t", Spec: spec, World: world, Train: MNISTData(ds.Train), Eval: MNISTData(ds.Test),
			Backend: model.NewCPU(1), Reporter: newMemReporter(), Log: zaptest.NewLogger(t), ReplicaCheckEvery: 5}
		if log != nil {
			tr.CommitHook = log.hook
		}
		if err := tr.Prepare(context.Background()); err != nil {
			t.Fatal(err)
		}
		return tr
	}
	join := func(trs []*Trainer, gen uint64) ([]*allreduce.Comm, *allreduce.InmemNetwork) {
		comms, net := inmemRing(t, len(trs), gen)
		var wg sync.WaitGroup
		errs := make([]error, len(trs))
		for r, tr := range trs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[r] = tr.Join(context.Background(), Ring{Rank: r, World: len(trs), Generation: gen, Comm: comms[r], Reporter: tr.Reporter})
			}()
		}
		wg.Wait()
		for r, err := range errs {
			if err != nil {
				t.Fatalf("rank %d: join generation %d: %v", r, gen, err)
			}
		}
		return comms, net
	}
	// runAll steps every trainer until stop says so or a step fails.
	runAll := func(trs []*Trainer, stop func(r int, tr *Trainer) bool) []error {
		errs := make([]error, len(trs))
		var wg sync.WaitGroup
		for r, tr := range trs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !tr.Done() && !stop(r, tr) {
					if err := tr.Step(context.Background()); err != nil {
						errs[r] = err
						return
					}
				}
			}()
		}
		wg.Wait()
		return errs
	}
	finishAll := func(trs []*Trainer) {
		var wg sync.WaitGroup
		for r, tr := range trs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if _, err := tr.Finish(context.Background()); err != nil {
					t.Errorf("rank %d: finish: %v", r, err)
				}
			}()
		}
		wg.Wait()
	}

	// The reference: uninterrupted.
	ref := []*Trainer{newTrainer(nil), newTrainer(nil), newTrainer(nil)}
	refComms, _ := join(ref, 1)
	for r, err := range runAll(ref, func(int, *Trainer) bool { return false }) {
		if err != nil {
			t.Fatalf("reference rank %d: %v", r, err)
		}
	}
	finishAll(ref)
	for _, c := range refComms {
		c.Close()
	}

	// Interrupted: rank 2 stops after step 10 and its side of the ring dies.
	log := &commitLog{byStep: map[int64][]Commit{}}
	trs := []*Trainer{newTrainer(log), newTrainer(log), newTrainer(log)}
	comms1, net1 := join(trs, 1)
	errs := runAll(trs, func(r int, tr *Trainer) bool {
		if r == 2 && tr.step == lostAfter {
			net1.Kill(2)
			return true
		}
		return false
	})
	for r := range 2 {
		var re *allreduce.RingError
		if !errors.As(errs[r], &re) || re.Culprit != 2 {
			t.Fatalf("rank %d: got %v, want a RingError blaming rank 2", r, errs[r])
		}
		if trs[r].step != lostAfter {
			t.Fatalf("rank %d committed %d steps before the ring broke, want %d", r, trs[r].step, lostAfter)
		}
	}
	for _, c := range comms1 {
		c.Close()
	}

	// Generation 2: the survivors and a replacement that holds nothing.
	repl := newTrainer(log)
	gen2 := []*Trainer{trs[0], trs[1], repl}
	comms2, _ := join(gen2, 2)
	if repl.step != lostAfter {
		t.Fatalf("the replacement starts at step %d, want %d from the survivors", repl.step, lostAfter)
	}
	for r, err := range runAll(gen2, func(int, *Trainer) bool { return false }) {
		if err != nil {
			t.Fatalf("generation 2 rank %d: %v", r, err)
		}
	}
	finishAll(gen2)
	for _, c := range comms2 {
		c.Close()
	}
	for r, tr := range gen2 {
		if !slices.Equal(tr.params, ref[0].params) {
			t.Errorf("generation 2 rank %d: final parameters differ from the uninterrupted run", r)
		}
	}

	// Every step committed once over [0, steps*24) of epoch 0, each by
	// ranks that agree on its samples.
	pos := 0
	for s := int64(1); s <= steps; s++ {
		cs := log.byStep[s]
		if len(cs) == 0 {
			t.Fatalf("step %d was never committed", s)
		}
		for _, c := range cs {
			if c.Epoch != 0 || c.Lo != pos || c.Hi != pos+world*8 {
				t.Fatalf("step %d committed samples [%d, %d) of epoch %d, want [%d, %d) of epoch 0", s, c.Lo, c.Hi, c.Epoch, pos, pos+world*8)
			}
		}
		pos += world * 8
	}
}
