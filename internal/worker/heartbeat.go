package worker

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// Phase is what a rank's training loop is doing, as its heartbeat tells.
type Phase int32

const (
	// PhaseIdle: between steps (joining a ring, evaluating, finishing).
	PhaseIdle Phase = iota
	// PhaseCompute: the rank's own computation (forward, backward,
	// optimizer). Only a rank stuck here is wedged.
	PhaseCompute
	// PhaseWait: waiting on the ring; a peer that hangs is found by the
	// lease, the keepalives or the collective's deadline, not here.
	PhaseWait
	// PhaseIO: reading data, reporting, saving a checkpoint: slow stores
	// and cold shards are not a stall.
	PhaseIO
)

func (p Phase) String() string {
	return [...]string{"idle", "compute", "wait", "io"}[p]
}

// heartbeat is the training loop's step-progress signal: the phase it is
// in, since when, and the longest stretch of computation it has finished.
// The loop writes it at every phase change; the stall watchdog reads it
// from another goroutine.
type heartbeat struct {
	phase     atomic.Int32
	since     atomic.Int64 // unix nanoseconds
	longest   atomic.Int64 // nanoseconds
	stretches atomic.Int64 // computation stretches finished
}

func (h *heartbeat) enter(p Phase) {
	now := time.Now().UnixNano()
	if Phase(h.phase.Load()) == PhaseCompute {
		if d := now - h.since.Load(); d > h.longest.Load() {
			h.longest.Store(d)
		}
		h.stretches.Add(1)
	}
	h.since.Store(now)
	h.phase.Store(int32(p))
}

// Heartbeat is a snapshot of a training loop's heartbeat.
type Heartbeat struct {
	Phase Phase
	Since time.Time
	// Longest is the longest stretch of computation finished so far, over
	// Stretches of them.
	Longest   time.Duration
	Stretches int64
}

// Heartbeat returns the training loop's heartbeat.
func (t *Trainer) Heartbeat() Heartbeat {
	return Heartbeat{Phase: Phase(t.beat.phase.Load()), Since: time.Unix(0, t.beat.since.Load()),
		Longest: time.Duration(t.beat.longest.Load()), Stretches: t.beat.stretches.Load()}
}

// stallFactor: a stretch of computation this many times longer than the
// longest one finished before is a stall (when also over the floor).
const stallFactor = 10

// Stalled reports whether the heartbeat shows a rank stuck in its own
// computation, and the limit it was held to: max(floor, stallFactor x the
// longest stretch finished). Without a finished stretch to compare with
// (the first one warms caches and allocates), nothing is a stall.
func (h Heartbeat) Stalled(now time.Time, floor time.Duration) (bool, time.Duration) {
	limit := max(floor, stallFactor*h.Longest)
	return h.Phase == PhaseCompute && h.Stretches > 0 && now.Sub(h.Since) > limit, limit
}

// watchStall reports this rank as wedged when its training loop stops
// making progress in its own computation for longer than the stall limit,
// separately from the collective's deadline: the lease and the ring's
// keepalives still answer for a process whose training goroutine hangs (a
// deadlock, a stuck device kernel). The coordinator then rebuilds the
// ring without it, and excludes it until it registers anew.
func (w *Worker) watchStall(ctx context.Context, t *Trainer, c *pb.Claim, log *zap.Logger) {
	watchStall(ctx, t.Heartbeat, w.cfg.StallTimeout, func(stalled, limit time.Duration) {
		msg := fmt.Sprintf("its training loop made no progress in its own computation for %v (limit %v): it is wedged",
			stalled.Round(time.Millisecond), limit.Round(time.Millisecond))
		log.Error("wedged: reporting this rank lost", zap.Int32("rank", c.Rank), zap.Duration("stalled", stalled), zap.Duration("limit", limit))
		w.report(&pb.RankReport{Generation: c.Generation, Rank: c.Rank, Ring: true, Suspects: []int32{c.Rank}, Error: msg}, c.JobId, log)
	})
}

// watchStall checks beat a few times per floor (at least every second)
// and calls onStall once, with how long the loop has been stuck and the
// limit, when it is stalled. It returns when ctx ends or after onStall;
// floor 0 turns it off.
func watchStall(ctx context.Context, beat func() Heartbeat, floor time.Duration, onStall func(stalled, limit time.Duration)) {
	if floor <= 0 {
		return
	}
	tick := time.NewTicker(min(floor/4, time.Second))
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tick.C:
			hb := beat()
			if stalled, limit := hb.Stalled(now, floor); stalled {
				onStall(now.Sub(hb.Since), limit)
				return
			}
		}
	}
}
