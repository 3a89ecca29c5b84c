package model

import (
	"sync"
	"sync/atomic"
)

// task is a unit of parallel work split into numbered items. Items must write
// disjoint memory, so the result does not depend on which goroutine runs which
// item or in what order: that is what keeps the CPU kernels deterministic.
type task interface {
	// do runs one item. worker, in [0, team size), identifies the
	// goroutine, so that an item may use that worker's scratch space; no two
	// items run concurrently with the same worker.
	do(item, worker int)
}

// team runs the items of one task at a time on up to size goroutines: the
// caller's plus size−1 helpers started for that task and waited for before run
// returns, so no goroutine outlives the call.
//
// run allocates nothing of its own. A go statement whose function has
// arguments or captures variables allocates a closure each time; helper is
// built once, and tasks are pointers to structs the CPU backend keeps
// preallocated, so passing one as an interface does not allocate either.
//
// The scheduler itself still allocates now and then. It recycles exited
// goroutines through per-P free lists, and with GOMAXPROCS > 1 a helper may
// exit on another P than the one that starts the next, so until the lists
// fill it sometimes allocates a goroutine descriptor (and, rarely, a thread).
// Measured with two Ps on the CNN at batch 64: about 100 allocations over the
// first 20 steps, then about one per ten steps; with one P, none. This is
// bounded and independent of the data, so it is accepted rather than traded
// for long-lived workers, which would need a Close and would meet the same
// effect in the runtime's per-P caches of channel waiters.
type team struct {
	size   int
	helper func()

	wg     sync.WaitGroup
	next   atomic.Int64 // next item to claim
	nextID atomic.Int64 // next helper's worker number
	items  int
	cur    task
}

func newTeam(size int) *team {
	t := &team{size: max(size, 1)}
	t.helper = t.work
	return t
}

// run calls tk.do for every item in [0, items) and returns when all are done.
// Items are claimed dynamically, which balances uneven items; the caller must
// serialise calls to run.
func (t *team) run(tk task, items int) {
	helpers := min(t.size, items) - 1
	if helpers <= 0 {
		for i := 0; i < items; i++ {
			tk.do(i, 0)
		}
		return
	}
	t.cur, t.items = tk, items
	t.next.Store(0)
	t.nextID.Store(1)
	t.wg.Add(helpers)
	for range helpers {
		go t.helper()
	}
	t.drain(0)
	t.wg.Wait()
	t.cur = nil // do not keep the caller's buffers reachable
}

func (t *team) work() {
	t.drain(int(t.nextID.Add(1) - 1))
	t.wg.Done()
}

func (t *team) drain(worker int) {
	for {
		i := int(t.next.Add(1) - 1)
		if i >= t.items {
			return
		}
		t.cur.do(i, worker)
	}
}
