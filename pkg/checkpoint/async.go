package checkpoint

import (
	"context"
	"errors"
	"maps"
	"sync"
	"sync/atomic"
	"time"
)

// BusyPolicy says what an AsyncSaver does with a save requested while the
// previous one is still uploading.
type BusyPolicy int

const (
	// WaitIfBusy blocks the new save until the previous upload ends.
	WaitIfBusy BusyPolicy = iota
	// SkipIfBusy drops the new save (Save and Begin return ErrBusy).
	SkipIfBusy
)

// ErrBusy is returned by AsyncSaver.Save and Begin under SkipIfBusy when
// a save is in flight.
var ErrBusy = errors.New("checkpoint: a save is already in flight")

// errClosed is returned for saves requested of, or cut short by, a closed
// saver.
var errClosed = errors.New("checkpoint: the saver is closed")

// errAbandoned is the result of a save whose snapshot was given up
// because Pending.Wait's context ended first.
var errAbandoned = errors.New("checkpoint: the snapshot was abandoned (Wait's context ended)")

// Result is the outcome of one asynchronous save.
type Result struct {
	Step int64
	Info Info
	Err  error
	// Stall is how long the caller was blocked: all of Save, or Begin
	// plus the first Pending.Wait (when that Wait returned before the
	// upload ended, as it does in a training loop; else Begin alone).
	Stall  time.Duration
	Upload time.Duration // how long the background upload took
}

// copyChunk is how many float32s one step of the snapshot copies (1 MiB):
// small enough that a helper joins or a cancellation lands quickly, large
// enough that claiming chunks costs nothing next to copying them.
const copyChunk = 1 << 18

// AsyncSaver takes checkpoints without holding up training. The state is
// copied into a host buffer that is reused from save to save and the copy
// is uploaded in the background; at most one save is in flight. Save
// returns once the copy is taken; Begin returns at once and the copy runs
// in the background too, until Pending.Wait (see Begin). A failed upload is
// reported through the done callback and changes nothing else; the next
// save tries again.
type AsyncSaver struct {
	m      *Manager
	policy BusyPolicy
	done   func(Result)

	ctx    context.Context // cancelled by Close; bounds every snapshot and upload
	cancel context.CancelFunc
	wg     sync.WaitGroup
	token  chan struct{} // holds one value while no save is in flight

	buf []float32 // the host buffer; only touched while holding the token
}

// NewAsyncSaver returns a saver that writes through m. done, if set, is
// called from the upload goroutine after each save, successful or not,
// before the next save may start (so it must not call Save or Begin).
func NewAsyncSaver(m *Manager, policy BusyPolicy, done func(Result)) *AsyncSaver {
	ctx, cancel := context.WithCancel(context.Background())
	a := &AsyncSaver{m: m, policy: policy, done: done, ctx: ctx, cancel: cancel, token: make(chan struct{}, 1)}
	a.token <- struct{}{}
	return a
}

// Save snapshots st into the host buffer and starts uploading it; it
// returns once the snapshot is taken (st may change right after). Under
// WaitIfBusy it first waits for a save in flight; under SkipIfBusy it
// returns ErrBusy instead. It returns how long it blocked. Save is Begin
// followed at once by Wait, so the caller helps with the copy.
func (a *AsyncSaver) Save(ctx context.Context, st *State) (time.Duration, error) {
	start := time.Now()
	p, err := a.Begin(ctx, st)
	if err != nil {
		return time.Since(start), err
	}
	_, err = p.Wait(ctx)
	return time.Since(start), err
}

// Pending is a save whose snapshot may still be under way (see Begin).
type Pending struct {
	a      *AsyncSaver
	chunks []span
	next   atomic.Int64  // the next chunk to claim
	left   atomic.Int64  // chunks not yet copied
	copied chan struct{} // closed when every chunk is copied

	abortOnce sync.Once
	aborted   chan struct{} // closed when a Wait gives the snapshot up
	stopped   chan struct{} // closed when the snapshot is taken or given up
	err       error         // why it was given up; set before stopped closes

	begin  time.Duration // how long Begin blocked
	waited atomic.Int64  // how long the first Wait blocked, in ns, +1; 0 before
}

// span is one piece of the copy: dst and src have the same length.
type span struct{ dst, src []float32 }

// Begin starts a save of st without waiting for the snapshot: the copy of
// st's tensors into the host buffer runs in the background, then the
// upload, as with Save. The caller must not modify the memory of st's
// tensors until the returned Pending's Wait has returned (the trainer
// calls Wait just before its next optimizer step, so the copy overlaps
// the next forward and backward pass, which only read the parameters).
// Everything else in st (shapes, metadata, RNG state) is copied before
// Begin returns. Busy policy as Save: under SkipIfBusy it returns ErrBusy
// at once.
func (a *AsyncSaver) Begin(ctx context.Context, st *State) (*Pending, error) {
	start := time.Now()
	if err := st.validate(); err != nil {
		return nil, err
	}
	switch a.policy {
	case SkipIfBusy:
		select {
		case <-a.token:
		default:
			return nil, ErrBusy
		}
	default:
		select {
		case <-a.token:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-a.ctx.Done():
			return nil, errClosed
		}
	}
	if a.ctx.Err() != nil {
		a.token <- struct{}{}
		return nil, errClosed
	}
	snap, chunks := a.prepare(st)
	p := &Pending{a: a, chunks: chunks, copied: make(chan struct{}), aborted: make(chan struct{}), stopped: make(chan struct{})}
	p.left.Store(int64(len(chunks)))
	if len(chunks) == 0 {
		close(p.copied)
	}
	p.begin = time.Since(start)
	a.wg.Add(1)
	go p.run(snap)
	return p, nil
}

// run is the save's goroutine: it copies chunks until none is left to
// claim, waits for chunks a helping Wait is finishing, then uploads.
func (p *Pending) run(snap *State) {
	a := p.a
	defer a.wg.Done()
	p.copyChunks(func() bool { return isDone(p.aborted) || a.ctx.Err() != nil })
	select {
	case <-p.copied:
	case <-p.aborted:
	case <-a.ctx.Done():
	}
	select {
	case <-p.copied:
		// Complete, even if it was given up at the last moment: the
		// caller's Wait sees stopped with no error and returns success.
	default:
		// A chunk a helper claimed is always finished by it, and a helper
		// only gives up between chunks, so nothing writes into the buffer
		// once the token is back, except a helper racing Close (and a
		// closed saver takes no more saves).
		p.err = errAbandoned
		if a.ctx.Err() != nil {
			p.err = errClosed
		}
	}
	close(p.stopped)
	res := Result{Step: snap.Step, Err: p.err, Stall: p.begin}
	if p.err == nil {
		t0 := time.Now()
		res.Info, res.Err = a.m.Save(a.ctx, snap)
		res.Upload = time.Since(t0)
	}
	if w := p.waited.Load(); w > 0 {
		res.Stall += time.Duration(w - 1)
	}
	// The result is out before the next save can start, so results
	// arrive in order and AsyncSaver.Wait covers them.
	if a.done != nil {
		a.done(res)
	}
	a.token <- struct{}{}
}

// copyChunks claims and copies chunks until none is left or stop says so
// (checked before each claim, so a claimed chunk is always finished).
func (p *Pending) copyChunks(stop func() bool) {
	n := int64(len(p.chunks))
	for !stop() {
		i := p.next.Add(1) - 1
		if i >= n {
			return
		}
		c := p.chunks[i]
		copy(c.dst, c.src)
		if p.left.Add(-1) == 0 {
			close(p.copied)
		}
	}
}

// Wait blocks until the snapshot is taken and returns how long it blocked.
// While the snapshot is still being copied the caller helps copy it. If
// ctx ends first, the save is given up (its result reports the error) and
// Wait returns ctx's error; either way, once Wait returns the saver no
// longer reads st's tensors. Wait may be called more than once.
func (p *Pending) Wait(ctx context.Context) (time.Duration, error) {
	start := time.Now()
	p.copyChunks(func() bool { return ctx.Err() != nil || isDone(p.aborted) || isDone(p.stopped) })
	var err error
	select {
	case <-p.copied:
	case <-p.stopped:
		err = p.err
	case <-ctx.Done():
		p.abortOnce.Do(func() { close(p.aborted) })
		<-p.stopped // at most the chunk the copier is on
		if err = p.err; err != nil {
			err = ctx.Err()
		}
	}
	d := time.Since(start)
	p.waited.CompareAndSwap(0, int64(d)+1)
	return d, err
}

func isDone(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}

// prepare returns the snapshot of st, whose tensors point into the host
// buffer (neighbours in it, so that the upload needs no copies), with its
// small fields already copied, and the chunks that fill the buffer from
// st's tensors.
func (a *AsyncSaver) prepare(st *State) (*State, []span) {
	n := 0
	for _, t := range st.Tensors {
		n += len(t.Data)
	}
	if cap(a.buf) < n {
		a.buf = nil // let the old buffer go before allocating the new one
		a.buf = make([]float32, n)
		adviseHuge(floatBytes(a.buf))
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
	chunks := make([]span, 0, n/copyChunk+len(st.Tensors))
	off := 0
	for i, t := range st.Tensors {
		dst := a.buf[off : off+len(t.Data)]
		snap.Tensors[i] = t
		snap.Tensors[i].Shape = append([]int(nil), t.Shape...)
		snap.Tensors[i].Data = dst
		for lo := 0; lo < len(dst); lo += copyChunk {
			hi := min(lo+copyChunk, len(dst))
			chunks = append(chunks, span{dst[lo:hi], t.Data[lo:hi]})
		}
		off += len(t.Data)
	}
	return &snap, chunks
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

// Close gives up a snapshot or upload in flight (it leaves no checkpoint,
// only objects that retention removes later) and waits for it to stop.
func (a *AsyncSaver) Close() {
	a.cancel()
	a.wg.Wait()
}
