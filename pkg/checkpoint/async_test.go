package checkpoint_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// overwrite is what a training step does to the state after Wait.
func overwrite(st *checkpoint.State, v float32) {
	for _, t := range st.Tensors {
		for i := range t.Data {
			t.Data[i] = v
		}
	}
}

// Begin's snapshot is the state as it was at Begin, even when the caller
// overwrites every tensor right after Wait (the race detector also checks
// that the copy no longer reads them then), whether Wait comes at once
// (the caller helps copy) or after the copy has finished on its own; the
// upload stores that snapshot.
func TestBeginSnapshotsTheStateAtBegin(t *testing.T) {
	// Several tensors of several copy chunks each, and small ones.
	sizes := []int{600_000, 100, 300_000, 7, 262_145}
	for _, tc := range []struct {
		name  string
		delay bool
	}{{"wait-at-once", false}, {"wait-later", true}} {
		t.Run(tc.name, func(t *testing.T) {
			ts := fileStore(t)
			ctx := context.Background()
			m := newManager(t, ts.store, 10)
			results := make(chan checkpoint.Result, 1)
			saver := checkpoint.NewAsyncSaver(m, checkpoint.WaitIfBusy, func(r checkpoint.Result) { results <- r })
			defer saver.Close()
			st := randomState(1, 5, sizes...)
			for step := int64(1); step <= 2; step++ { // a new host buffer, then the reused one
				st.Step = step
				st.Meta["job"] = "j1"
				want := randomState(step, 5, sizes...)
				overwrite(want, float32(step))
				if step > 1 {
					overwrite(st, float32(step))
				} else {
					want = randomState(1, 5, sizes...)
				}
				p, err := saver.Begin(ctx, st)
				if err != nil {
					t.Fatal(err)
				}
				st.Meta["job"] = "changed" // small fields are copied by Begin
				if tc.delay {
					time.Sleep(50 * time.Millisecond)
				}
				if _, err := p.Wait(ctx); err != nil {
					t.Fatal(err)
				}
				overwrite(st, -1) // the optimizer step
				r := <-results
				if r.Err != nil || r.Step != step || r.Info.Step != step || !r.Info.Valid {
					t.Fatalf("step %d: result %+v", step, r)
				}
				if _, err := p.Wait(ctx); err != nil {
					t.Errorf("second Wait: %v", err)
				}
				got, _, err := m.LoadStep(ctx, step)
				if err != nil {
					t.Fatal(err)
				}
				sameState(t, got, want)
			}
		})
	}
}

// Closing the saver while a snapshot is being taken stops it cleanly: no
// goroutine is left, Wait returns, the result reports the failure and no
// checkpoint is committed.
func TestCloseWhileSnapshotPending(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ts := fileStore(t)
	ctx := context.Background()
	m := newManager(t, ts.store, 10)
	results := make(chan checkpoint.Result, 1)
	saver := checkpoint.NewAsyncSaver(m, checkpoint.WaitIfBusy, func(r checkpoint.Result) { results <- r })
	st := randomState(1, 3, 2<<20)
	p, err := saver.Begin(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	saver.Close()
	r := <-results
	if _, err := p.Wait(ctx); err != nil && r.Err == nil {
		t.Errorf("Wait failed (%v) but the save succeeded", err)
	}
	if r.Err == nil {
		// The copy may have won the race; then the upload must have seen
		// the cancellation.
		t.Fatalf("save completed after Close: %+v", r)
	}
	overwrite(st, 0)
	if _, _, err := m.LoadStep(ctx, 1); err == nil {
		t.Error("a checkpoint was committed by a save cut short by Close")
	}
	if _, err := saver.Begin(ctx, st); err == nil {
		t.Error("Begin on a closed saver succeeded")
	}
}

// A Wait whose context ends gives the save up: the caller may write the
// tensors once Wait returns, the result reports the failure, and the next
// save works.
func TestWaitContextEndsGivesUp(t *testing.T) {
	ts := fileStore(t)
	ctx := context.Background()
	m := newManager(t, ts.store, 10)
	results := make(chan checkpoint.Result, 1)
	saver := checkpoint.NewAsyncSaver(m, checkpoint.SkipIfBusy, func(r checkpoint.Result) { results <- r })
	defer saver.Close()
	st := randomState(1, 3, 2<<20)
	p, err := saver.Begin(ctx, st)
	if err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, werr := p.Wait(cctx)
	overwrite(st, 0)
	r := <-results
	switch {
	case werr == nil && r.Err != nil:
		t.Fatalf("Wait succeeded but the save failed: %v", r.Err)
	case werr != nil && !errors.Is(werr, context.Canceled):
		t.Fatalf("Wait: %v, want context.Canceled", werr)
	case werr != nil && r.Err == nil:
		t.Fatalf("Wait gave up (%v) but the save committed", werr)
	}
	st2 := randomState(2, 4, 1000)
	if _, err := saver.Save(ctx, st2); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.Err != nil {
		t.Fatal(r.Err)
	}
	got, _, err := m.LoadStep(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	sameState(t, got, randomState(2, 4, 1000))
}
