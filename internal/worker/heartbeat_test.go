package worker

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/model"
)

func TestHeartbeatStalled(t *testing.T) {
	now := time.Unix(1000, 0)
	floor := time.Second
	cases := []struct {
		hb        Heartbeat
		stalled   bool
		wantLimit time.Duration
	}{
		{Heartbeat{Phase: PhaseCompute, Since: now.Add(-2 * time.Second), Longest: 10 * time.Millisecond, Stretches: 5}, true, floor},
		{Heartbeat{Phase: PhaseCompute, Since: now.Add(-500 * time.Millisecond), Longest: 10 * time.Millisecond, Stretches: 5}, false, floor},
		// A rank whose steps are long gets a longer limit.
		{Heartbeat{Phase: PhaseCompute, Since: now.Add(-2 * time.Second), Longest: 300 * time.Millisecond, Stretches: 5}, false, 3 * time.Second},
		// Waiting on the ring, reading data or saving is never a stall.
		{Heartbeat{Phase: PhaseWait, Since: now.Add(-time.Hour), Longest: time.Millisecond, Stretches: 5}, false, floor},
		{Heartbeat{Phase: PhaseIO, Since: now.Add(-time.Hour), Longest: time.Millisecond, Stretches: 5}, false, floor},
		{Heartbeat{Phase: PhaseIdle, Since: now.Add(-time.Hour), Longest: time.Millisecond, Stretches: 5}, false, floor},
		// No finished stretch to compare with: the first one is not judged.
		{Heartbeat{Phase: PhaseCompute, Since: now.Add(-time.Hour)}, false, floor},
	}
	for i, c := range cases {
		stalled, limit := c.hb.Stalled(now, floor)
		if stalled != c.stalled || limit != c.wantLimit {
			t.Errorf("case %d (%v for %v): stalled %v limit %v, want %v %v", i, c.hb.Phase, now.Sub(c.hb.Since), stalled, limit, c.stalled, c.wantLimit)
		}
	}
}

// blockingData is training data whose Fill blocks on release at one step.
type blockingData struct {
	Data
	mu      sync.Mutex
	calls   int
	blockAt int
	release chan struct{}
}

func (d *blockingData) Fill(ctx context.Context, idx []int32, b *model.Batch) error {
	d.mu.Lock()
	d.calls++
	n := d.calls
	d.mu.Unlock()
	if n == d.blockAt {
		<-d.release
	}
	return d.Data.Fill(ctx, idx, b)
}

// The heartbeat tells a rank stuck in its own computation (wedged) from a
// rank that waits on the ring for it, and from one that waits for its data:
// only the first is a stall.
func TestHeartbeatTellsAWedgedRank(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	for _, where := range []string{"compute", "data"} {
		t.Run(where, func(t *testing.T) {
			const world, steps, at = 2, 8, 4
			spec := testSpec(world, 8, steps)
			ds := loadMNIST(t)
			release := make(chan struct{})
			trs := make([]*Trainer, world)
			for r := range trs {
				tr := &Trainer{JobID: "t", Spec: spec, World: world, Train: MNISTData(ds.Train), Eval: MNISTData(ds.Test),
					Backend: model.NewCPU(1), Reporter: newMemReporter(), Log: zaptest.NewLogger(t)}
				if r == 1 {
					switch where {
					case "compute": // the step's computation hangs
						tr.SampleHook = func(step int64, _ []int32) {
							if step == at {
								<-release
							}
						}
					case "data": // a cold shard
						tr.Train = &blockingData{Data: tr.Train, blockAt: at, release: release}
					}
				}
				if err := tr.Prepare(context.Background()); err != nil {
					t.Fatal(err)
				}
				trs[r] = tr
			}
			// The collective's deadline is far: only the heartbeat judges.
			net := allreduce.NewInmemNetwork(world)
			comms := make([]*allreduce.Comm, world)
			for r := range comms {
				c, err := allreduce.New(allreduce.Config{Rank: r, World: world, Generation: 1, Timeout: 10 * time.Minute}, net.Transport(r))
				if err != nil {
					t.Fatal(err)
				}
				comms[r] = c
			}
			errs := make([]error, world)
			var wg sync.WaitGroup
			for r, tr := range trs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := tr.Join(context.Background(), Ring{Rank: r, World: world, Generation: 1, Comm: comms[r], Reporter: tr.Reporter}); err != nil {
						errs[r] = err
						return
					}
					for !tr.Done() {
						if err := tr.Step(context.Background()); err != nil {
							errs[r] = err
							return
						}
					}
				}()
			}
			// The floor is well above what a step takes on a loaded machine
			// with the race detector, so that only a hang is a stall.
			const floor = time.Second
			// The watchdog, as a worker runs it beside rank 1.
			wctx, stopWatch := context.WithCancel(context.Background())
			reported := make(chan time.Duration, 1)
			var watching sync.WaitGroup
			watching.Add(1)
			go func() {
				defer watching.Done()
				watchStall(wctx, trs[1].Heartbeat, floor, func(stalled, _ time.Duration) { reported <- stalled })
			}()
			var hb0, hb1 Heartbeat
			deadline := time.Now().Add(time.Minute)
			for {
				hb0, hb1 = trs[0].Heartbeat(), trs[1].Heartbeat()
				if time.Since(hb1.Since) > max(2*floor, (stallFactor+1)*hb1.Longest) && hb1.Phase != PhaseIdle && hb0.Phase == PhaseWait {
					break
				}
				if time.Now().After(deadline) {
					close(release)
					wg.Wait()
					t.Fatalf("rank 1 never blocked: heartbeats %+v and %+v", hb0, hb1)
				}
				time.Sleep(10 * time.Millisecond)
			}
			now := time.Now()
			s0, _ := hb0.Stalled(now, floor)
			s1, limit := hb1.Stalled(now, floor)
			wantPhase, wantStall := PhaseCompute, true
			if where == "data" {
				wantPhase, wantStall = PhaseIO, false
			}
			if hb1.Phase != wantPhase || s1 != wantStall {
				t.Errorf("blocked rank: phase %v stalled %v (limit %v, longest stretch %v), want %v %v", hb1.Phase, s1, limit, hb1.Longest, wantPhase, wantStall)
			}
			if s0 {
				t.Errorf("the rank waiting on the ring is judged stalled: %+v", hb0)
			}
			if where == "compute" {
				select {
				case d := <-reported:
					t.Logf("the watchdog reported rank 1 wedged after %v", d)
				case <-time.After(time.Minute):
					t.Errorf("the watchdog did not report the wedged rank")
				}
			}
			stopWatch()
			watching.Wait()
			if where == "data" && len(reported) > 0 {
				t.Errorf("the watchdog reported a rank that waited for its data")
			}
			close(release)
			wg.Wait()
			for r, err := range errs {
				if err != nil {
					t.Errorf("rank %d: %v", r, err)
				}
			}
			for r, c := range comms {
				c.Close()
				if trs[r].Heartbeat().Phase != PhaseIdle {
					t.Errorf("rank %d is not idle after its last step", r)
				}
				trs[r].Close()
			}
		})
	}
}
