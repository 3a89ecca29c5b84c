package checkpoint

import (
	"context"
	"errors"
	"maps"
	"runtime"
	"sync"
	"time"
)

// BusyPolicy says what an AsyncSaver does with a save requested while the
// previous one is still uploading.
type BusyPolicy int

const (
	// WaitIfBusy blocks the new save until the previous upload ends.
	WaitIfBusy BusyPolicy = iota
	// SkipIfBusy drops the new save (Save returns ErrBusy).
	SkipIfBusy
)

// ErrBusy is returned by AsyncSaver.Save under SkipIfBusy when a save is
// in flight.
var ErrBusy = errors.New("checkpoint: a save is already in flight")

// Result is the outcome of one asynchronous save.
type Result struct {
	Step   int64
	Info   Info
	Err    error
	Stall  time.Duration // how long Save blocked its caller
	Upload time.Duration // how long the background upload took
}

// AsyncSaver takes checkpoints without holding up training: Save copies
// the state into a host buffer that is reused from save to save (the only
// time the caller waits) and uploads the copy in the background. At most
// one save is in flight. A failed upload is reported through the done
// callback and changes nothing else; the next Save tries again.
type AsyncSaver struct {
	m      *Manager
	policy BusyPolicy
	done   func(Result)

	ctx    context.Context // cancelled by Close; bounds every upload
	cancel context.CancelFunc
	wg     sync.WaitGroup
	token  chan struct{} // holds one value while no save is in flight

	buf []float32 // the host buffer; only touched while holding the token
}

// NewAsyncSaver returns a saver that writes through m. done, if set, is
// called from the upload goroutine after each save, successful or not,
// before the next save may start (so it must not call Save).
func NewAsyncSaver(m *Manager, policy BusyPolicy, done func(Result)) *AsyncSaver {
	ctx, cancel := context.WithCancel(context.Background())
	a := &AsyncSaver{m: m, policy: policy, done: done, ctx: ctx, cancel: cancel, token: make(chan struct{}, 1)}
	a.token <- struct{}{}
	return a
}

// Save snapshots st into the host buffer and starts uploading it; it
// returns once the snapshot is taken (st may change right after). Under
// WaitIfBusy it first waits for a save in flight; under SkipIfBusy it
// returns ErrBusy instead. It returns how long it blocked.
func (a *AsyncSaver) Save(ctx context.Context, st *State) (time.Duration, error) {
	start := time.Now()
	if err := st.validate(); err != nil {
		return 0, err
	}
	switch a.policy {
	case SkipIfBusy:
		select {
		case <-a.token:
		default:
			return time.Since(start), ErrBusy
		}
	default:
		select {
		case <-a.token:
		case <-ctx.Done():
			return time.Since(start), ctx.Err()
		case <-a.ctx.Done():
			return time.Since(start), errors.New("checkpoint: the saver is closed")
		}
	}
	if a.ctx.Err() != nil {
		a.token <- struct{}{}
		return time.Since(start), errors.New("checkpoint: the saver is closed")
	}
	snap := a.snapshot(st)
	stall := time.Since(start)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		t0 := time.Now()
		info, err := a.m.Save(a.ctx, snap)
		res := Result{Step: snap.Step, Info: info, Err: err, Stall: stall, Upload: time.Since(t0)}
		// The result is out before the next save can start, so results
		// arrive in order and Wait covers them.
		if a.done != nil {
			a.done(res)
		}
		a.token <- struct{}{}
	}()
	return stall, nil
}

// snapshot copies st into the host buffer; the copy's tensors point into
// it. Small fields are copied too, so the caller may change st at once.
func (a *AsyncSaver) snapshot(st *State) *State {
	n := 0
	for _, t := range st.Tensors {
		n += len(t.Data)
	}
	if cap(a.buf) < n {
		a.buf = make([]float32, n)
	}
	a.buf = a.buf[:n]
	snap := *st
	snap.Meta = maps.Clone(st.Meta)
	snap.Spec = append([]byte(nil), st.Spec...)
	snap.RNG = make([]RNGState, len(st.RNG))
	for i, r := range st.RNG {
		snap.RNG[i] = r
		snap.RNG[i].State = append([]byte(nil), r.State...)
	}
	snap.Tensors = make([]Tensor, len(st.Tensors))
	type span struct{ dst, src []float32 }
	spans := make([]span, len(st.Tensors))
	off := 0
	for i, t := range st.Tensors {
		// Neighbours in the buffer, so that the upload needs no copies.
		dst := a.buf[off : off+len(t.Data)]
		snap.Tensors[i] = t
		snap.Tensors[i].Shape = append([]int(nil), t.Shape...)
		snap.Tensors[i].Data = dst
		spans[i] = span{dst, t.Data}
		off += len(t.Data)
	}
	// A big copy is memory-bound; a few goroutines move it faster than one.
	workers := min(runtime.GOMAXPROCS(0), max(n/(1<<20), 1))
	if workers == 1 {
		for _, s := range spans {
			copy(s.dst, s.src)
		}
		return &snap
	}
	var wg sync.WaitGroup
	chunk := (n + workers - 1) / workers
	for w := range workers {
		lo, hi := w*chunk, min((w+1)*chunk, n)
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Copy the elements [lo, hi) of the concatenated tensors.
			at := 0
			for _, s := range spans {
				x, y := max(lo, at), min(hi, at+len(s.src))
				if x < y {
					copy(s.dst[x-at:y-at], s.src[x-at:y-at])
				}
				at += len(s.src)
			}
		}()
	}
	wg.Wait()
	return &snap
}

// Wait blocks until no save is in flight and its result has been
// delivered (or ctx ends).
func (a *AsyncSaver) Wait(ctx context.Context) error {
	select {
	case <-a.token:
		a.token <- struct{}{}
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Close cancels an upload in flight (it leaves no checkpoint, only
// objects that retention removes later) and waits for it to stop.
func (a *AsyncSaver) Close() {
	a.cancel()
	a.wg.Wait()
}
