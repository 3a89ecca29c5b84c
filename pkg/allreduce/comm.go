package allreduce

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Config describes one rank of one ring generation. Every rank of a ring
// must use the same values (except Rank).
type Config struct {
	Rank, World int
	Generation  uint64
	// Timeout bounds each collective; zero means DefaultTimeout.
	Timeout time.Duration
	// SliceBytes is the largest frame the ring sends: each hop forwards a
	// slice as soon as it has it. Zero means DefaultSliceBytes.
	SliceBytes int
	// DirectMaxBytes: collectives of at most this many bytes (capped at
	// MaxFrameBytes, as SliceBytes is) exchange with
	// every peer in one round instead of running the ring. Zero means
	// DefaultDirectMaxBytes; negative disables the direct path.
	DirectMaxBytes int
	// Wire is the encoding of frames; WireBF16 halves the bytes sent at
	// the cost of precision (see doc.go). Default WireF32.
	Wire Wire
}

const (
	// DefaultTimeout bounds a collective when Config.Timeout is zero.
	DefaultTimeout = 5 * time.Second
	// DefaultSliceBytes is the ring's frame size when Config.SliceBytes is zero.
	DefaultSliceBytes = 256 << 10
	// DefaultDirectMaxBytes is Config.DirectMaxBytes when zero.
	DefaultDirectMaxBytes = 64 << 10
	// MaxFrameBytes bounds a frame's data: a ring slice or a direct
	// collective's whole buffer. The gRPC transport refuses larger
	// messages before reading them.
	MaxFrameBytes = 64 << 20
)

// ErrBroken is wrapped by every error from a Comm that an earlier error has
// broken.
var ErrBroken = errors.New("allreduce: communicator is broken by an earlier error; rebuild the ring")

// ErrBusy is returned when a Comm is used by two goroutines at once.
var ErrBusy = errors.New("allreduce: communicator is already running a collective (calls must not overlap; a Bucketer owns it until Wait returns)")

// Comm runs collectives for one rank of one ring generation. Its methods
// must not be called concurrently (ErrBusy).
type Comm struct {
	cfg Config
	t   Transport

	busy    atomic.Bool
	seq     uint64
	mu      sync.Mutex
	broken  error
	pending []Notice // notices taken off the transport but not yet used

	waitingOn atomic.Int32    // the peer the collective is blocked on, for blame
	notified  bool            // this collective's failure was already told to the peers
	hard      context.Context // the collective's deadline only: for sends, whose cancellation breaks streams
	sent      []tracker       // per peer: frames the transport has released
	relFns    []func()

	// Scratch reused across collectives.
	regions [][]span
	bounds  [][]int
	steps   []ringStep
	pieces  [][]byte
	subs    []span
	wireBuf []byte
	rx      []Frame
	tmp     []float32
	progress
}

// New returns the communicator of rank cfg.Rank over t; it owns t.
func New(cfg Config, t Transport) (*Comm, error) {
	if cfg.World < 1 || cfg.Rank < 0 || cfg.Rank >= cfg.World {
		return nil, fmt.Errorf("allreduce: rank %d is outside a world of %d", cfg.Rank, cfg.World)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.SliceBytes <= 0 {
		cfg.SliceBytes = DefaultSliceBytes
	}
	cfg.SliceBytes = max(cfg.SliceBytes&^7, 8)
	if cfg.DirectMaxBytes == 0 {
		cfg.DirectMaxBytes = DefaultDirectMaxBytes
	}
	if cfg.Wire > WireBF16 {
		return nil, fmt.Errorf("allreduce: unknown wire encoding %d", cfg.Wire)
	}
	// A frame carries at most MaxFrameBytes: larger settings are capped
	// (a collective above the direct limit takes the ring).
	cfg.SliceBytes = min(cfg.SliceBytes, MaxFrameBytes)
	cfg.DirectMaxBytes = min(cfg.DirectMaxBytes, MaxFrameBytes)
	c := &Comm{cfg: cfg, t: t, sent: make([]tracker, cfg.World), relFns: make([]func(), cfg.World)}
	for p := range c.sent {
		tr := &c.sent[p]
		tr.ch = make(chan struct{}, 1)
		c.relFns[p] = tr.done
	}
	c.progress.ch = make(chan struct{}, 1)
	c.waitingOn.Store(-1)
	return c, nil
}

// Rank returns this communicator's rank.
func (c *Comm) Rank() int { return c.cfg.Rank }

// World returns the ring size.
func (c *Comm) World() int { return c.cfg.World }

// Generation returns the ring generation.
func (c *Comm) Generation() uint64 { return c.cfg.Generation }

// Shard returns the part [lo, hi) of a buffer of n elements that rank r
// holds after ReduceScatter, and contributes to AllGather.
func (c *Comm) Shard(n, r int) (lo, hi int) { return shard(n, c.cfg.World, r) }

// Close releases the transport: after a clean run it first waits (a
// bounded time) until what this rank sent has been delivered.
func (c *Comm) Close() error {
	if c.t == nil {
		return nil
	}
	c.mu.Lock()
	broken := c.broken != nil
	c.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if broken {
		cancel()
	}
	defer cancel()
	return c.t.Close(ctx)
}

// tracker counts frames released by the transport.
type tracker struct {
	n  atomic.Int64
	ch chan struct{}
}

func (t *tracker) done() {
	t.n.Add(1)
	select {
	case t.ch <- struct{}{}:
	default:
	}
}

// progress counts frames the receiving side has finished, for the sender.
type progress struct {
	n  atomic.Int64
	ch chan struct{}
}

func (p *progress) advance() {
	p.n.Add(1)
	select {
	case p.ch <- struct{}{}:
	default:
	}
}

func (p *progress) wait(ctx context.Context, stop <-chan struct{}, target int64) error {
	for p.n.Load() < target {
		select {
		case <-p.ch:
		case <-stop:
			return errStopped
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

var errStopped = errors.New("allreduce: stopped")

// waitSent waits until the transport has released target frames sent to
// peer (counted since the Comm was made).
func (c *Comm) waitSent(ctx context.Context, peer int, target int64) error {
	t := &c.sent[peer]
	if t.n.Load() >= target {
		return nil
	}
	prev := c.waitingOn.Swap(int32(peer))
	defer c.waitingOn.Store(prev)
	for t.n.Load() < target {
		select {
		case <-t.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// localError is a failure this rank saw first hand.
type localError struct {
	kind    NoticeKind
	culprit int
	err     error
}

func (e *localError) Error() string { return e.err.Error() }
func (e *localError) Unwrap() error { return e.err }

// noticeCause cancels a collective when a peer gives up.
type noticeCause struct{ n Notice }

func (e *noticeCause) Error() string { return "a peer gave up the collective" }

var errSuspect = errors.New("allreduce: deadline reached")

// run executes one collective: it takes the next sequence number, bounds
// body by the deadline and by peers' notices, and turns a failure into an
// error that names who is to blame, after telling the peers.
func (c *Comm) run(ctx context.Context, d Desc, body func(ctx context.Context) error) error {
	if err := c.begin(); err != nil {
		return err
	}
	defer c.busy.Store(false)
	c.seq++
	if c.cfg.World == 1 {
		return ctx.Err()
	}
	start := time.Now()
	deadline := start.Add(c.cfg.Timeout)
	if dl, ok := ctx.Deadline(); ok && dl.Before(deadline) {
		deadline = dl
	}
	grace := min(max(deadline.Sub(start)/10, 20*time.Millisecond), time.Second)
	hard, hardCancel := context.WithDeadline(ctx, deadline)
	defer hardCancel()
	c.hard = hard
	cctx, cancel := context.WithCancelCause(hard)
	defer cancel(nil)
	timer := time.AfterFunc(deadline.Sub(start)-grace, func() { cancel(errSuspect) })
	defer timer.Stop()

	// The watcher turns a peer's notice into a cancellation.
	watchDone := make(chan struct{})
	go func() {
		defer close(watchDone)
		select {
		case n := <-c.t.Notices():
			c.keepNotice(n)
			cancel(&noticeCause{n})
		case <-cctx.Done():
		}
	}()
	c.waitingOn.Store(-1)
	c.notified = false
	err := body(cctx)
	cause := context.Cause(cctx)
	cancel(nil)
	<-watchDone
	if err == nil {
		return nil
	}
	return c.fail(c.diagnose(ctx, d, err, cause, deadline.Sub(start), grace))
}

func (c *Comm) keepNotice(n Notice) {
	c.mu.Lock()
	c.pending = append(c.pending, n)
	c.mu.Unlock()
}

// takeNotices returns the notices received so far.
func (c *Comm) takeNotices() []Notice {
	for {
		select {
		case n := <-c.t.Notices():
			c.keepNotice(n)
			continue
		default:
		}
		break
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Notice(nil), c.pending...)
}

func (c *Comm) what(d Desc) string {
	return fmt.Sprintf("rank %d: collective %d, %s (generation %d)", c.cfg.Rank, c.seq, d, c.cfg.Generation)
}

func (c *Comm) peerName(p int) string {
	if p < 0 {
		return "no rank"
	}
	return fmt.Sprintf("rank %d (%s)", p, c.t.Addr(p))
}

// diagnose decides what went wrong, tells the peers, and returns the error.
func (c *Comm) diagnose(parent context.Context, d Desc, err error, cause error, timeout, grace time.Duration) error {
	notifyWithin := func(n Notice, wait time.Duration) {
		if c.notified {
			return
		}
		n.From, n.Seq = c.cfg.Rank, c.seq
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		c.t.Notify(ctx, n)
	}
	notify := func(n Notice) { notifyWithin(n, max(grace, 200*time.Millisecond)) }
	var le *localError
	var nc *noticeCause
	if !errors.As(cause, &nc) {
		// A peer that gives up tells everyone before it closes its
		// streams, so its notice is here before the broken stream it
		// leaves behind: prefer what it said.
		for _, n := range c.takeNotices() {
			if n.Kind != NoticeTimeout {
				cause = &noticeCause{n}
				break
			}
			if nc == nil {
				nc = &noticeCause{n}
			}
		}
		if nc != nil && cause == nil {
			cause = nc
		}
		if cause == nil && errors.As(err, &le) && le.kind == NoticeGone {
			// A peer that gives up cancels its streams while it tells
			// everyone why; give its notice a moment to arrive.
			t := time.NewTimer(min(grace, 250*time.Millisecond))
			select {
			case n := <-c.t.Notices():
				c.keepNotice(n)
				if n.Kind == NoticeTimeout {
					nc = &noticeCause{n}
				}
				cause = &noticeCause{n}
			case <-t.C:
			}
			t.Stop()
		}
	}
	switch {
	case errors.As(cause, &nc) && nc.n.Kind != NoticeTimeout:
		err := fmt.Errorf("allreduce: %s failed: rank %d gave up: %s", c.what(d), nc.n.From, nc.n.Reason)
		switch nc.n.Kind {
		case NoticeGone:
			return &RingError{Culprit: nc.n.Culprit, err: err}
		case NoticeCancelled:
			return &RingError{Culprit: -1, err: err}
		}
		return err
	case errors.As(err, &le) && cause == nil:
		notify(Notice{Kind: le.kind, Culprit: le.culprit, WaitingOn: -1, Reason: le.Error()})
		if le.kind == NoticeGone {
			return &RingError{Culprit: le.culprit, err: le}
		}
		return le
	case cause == errSuspect || nc != nil:
		return c.blame(d, timeout, grace, notify)
	case parent.Err() != nil:
		reason := fmt.Sprintf("rank %d's caller ended collective %d: %v", c.cfg.Rank, c.seq, context.Cause(parent))
		// The caller has moved on (a new ring generation, a shutdown):
		// tell the peers, but do not wait on one that hangs (a stopped
		// peer would hold the next generation back by the whole grace).
		notifyWithin(Notice{Kind: NoticeCancelled, Culprit: -1, WaitingOn: -1, Reason: reason}, cancelledNotifyWait)
		return fmt.Errorf("allreduce: %s: %w", c.what(d), parent.Err())
	}
	notify(Notice{Kind: NoticeFailed, Culprit: -1, WaitingOn: -1, Reason: err.Error()})
	return fmt.Errorf("allreduce: %s: %w", c.what(d), err)
}

// cancelledNotifyWait bounds how long a rank whose caller ended a
// collective waits for its peers to take the notice: enough for a healthy
// peer on a LAN.
const cancelledNotifyWait = 100 * time.Millisecond

// RingError is a collective's failure to communicate: a peer that is gone
// (its connection broke), silent past the deadline, or that gave up
// because its caller moved on. The ring is broken, but nothing says the
// job's state is: a caller keeps its state and rebuilds the ring without
// the culprit. Other errors (a mismatch between ranks, a bug) are not
// RingErrors.
type RingError struct {
	// Culprit is the rank this rank blames, or -1 when it cannot tell
	// (a peer gave up first, for its own reasons).
	Culprit int
	err     error
}

func (e *RingError) Error() string { return e.err.Error() }
func (e *RingError) Unwrap() error { return e.err }

// notifyLocal tells the peers about a failure this rank saw first hand,
// at once: before the rank cancels its own streams, so that the peers hear
// the cause before they see those streams break.
func (c *Comm) notifyLocal(err error) {
	var le *localError
	if c.notified || !errors.As(err, &le) || le.kind == NoticeGone {
		return // a broken stream may be a peer that is telling why: diagnose waits for it
	}
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	c.t.Notify(ctx, Notice{From: c.cfg.Rank, Seq: c.seq, Kind: le.kind, Culprit: le.culprit, WaitingOn: -1, Reason: le.Error()})
	c.notified = true
}

// blame runs when this rank reached its deadline or a peer reported that
// it did: each rank tells every other which peer it is waiting on, then
// follows the chain of waits to the rank that did not report. That rank
// is stopped, hung, partitioned or dead in a way TCP did not notice.
func (c *Comm) blame(d Desc, timeout, grace time.Duration, notify func(Notice)) error {
	me := c.cfg.Rank
	waiting := int(c.waitingOn.Load())
	notify(Notice{Kind: NoticeTimeout, Culprit: -1, WaitingOn: waiting,
		Reason: fmt.Sprintf("rank %d timed out waiting on %s", me, c.peerName(waiting))})
	end := time.NewTimer(grace)
	defer end.Stop()
	waits := map[int]int{me: waiting}
	var first *Notice
	collect := func(n Notice) {
		if n.Kind == NoticeTimeout {
			waits[n.From] = n.WaitingOn
		} else if first == nil {
			first = &n
		}
	}
	for _, n := range c.takeNotices() {
		collect(n)
	}
loop:
	for first == nil {
		select {
		case n := <-c.t.Notices():
			c.keepNotice(n)
			collect(n)
		case <-end.C:
			break loop
		}
	}
	if first != nil {
		err := fmt.Errorf("allreduce: %s failed: rank %d gave up: %s", c.what(d), first.From, first.Reason)
		if first.Kind == NoticeGone || first.Kind == NoticeCancelled {
			return &RingError{Culprit: first.Culprit, err: err}
		}
		return err
	}
	chain := []string{itoa(me)}
	x := waiting
	seen := map[int]bool{me: true}
	for x >= 0 && !seen[x] {
		seen[x] = true
		chain = append(chain, itoa(x))
		next, ok := waits[x]
		if !ok {
			break
		}
		x = next
	}
	return &RingError{Culprit: x, err: fmt.Errorf("allreduce: %s timed out after %s: %s did not answer (waits: %s)",
		c.what(d), timeout, c.peerName(x), strings.Join(chain, " -> "))}
}

func (c *Comm) begin() error {
	if !c.busy.CompareAndSwap(false, true) {
		return ErrBusy
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.broken != nil {
		c.busy.Store(false)
		return fmt.Errorf("%w (first error: %v)", ErrBroken, c.broken)
	}
	return nil
}

// fail breaks the communicator: the state of the streams between ranks is
// unknown, so the transport is torn down at once (which also stops it
// reading the caller's buffer) and the caller builds a new ring.
func (c *Comm) fail(err error) error {
	c.mu.Lock()
	if c.broken == nil {
		c.broken = err
	}
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = c.t.Close(ctx)
	return err
}

// recvError wraps a transport error from peer p.
func (c *Comm) transportError(what string, p int, err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var pg *PeerGoneError
	reason := err
	if !errors.As(err, &pg) {
		reason = fmt.Errorf("%s %s: %w", what, c.peerName(p), err)
	}
	return &localError{kind: NoticeGone, culprit: p,
		err: fmt.Errorf("allreduce: rank %d: collective %d (generation %d): %w", c.cfg.Rank, c.seq, c.cfg.Generation, reason)}
}

// checkFrame verifies that f belongs to the collective this rank runs.
func (c *Comm) checkFrame(f *Frame, from int, d Desc, part int, wantBytes int) error {
	mismatch := func(format string, args ...any) error {
		return &localError{kind: NoticeMismatch, culprit: from, err: fmt.Errorf(format, args...)}
	}
	if f.Seq == c.seq && f.Desc == d && f.Wire == c.cfg.Wire && int(f.Part) == part && f.Bytes() == wantBytes {
		return nil
	}
	me, them := c.peerName(c.cfg.Rank), c.peerName(from)
	if f.Seq != c.seq {
		return mismatch("allreduce: %s and %s are out of step (generation %d): %s is at collective %d (%s), %s at collective %d (%s)",
			them, me, c.cfg.Generation, them, f.Seq, f.Desc, me, c.seq, d)
	}
	if f.Desc != d {
		return mismatch("allreduce: %s and %s disagree on collective %d (generation %d): %s runs %s, %s runs %s",
			them, me, c.seq, c.cfg.Generation, them, f.Desc, me, d)
	}
	if f.Wire != c.cfg.Wire {
		return mismatch("allreduce: %s and %s disagree on the wire encoding: %s sends %s, %s expects %s",
			them, me, them, f.Wire, me, c.cfg.Wire)
	}
	if int(f.Part) != part || f.Bytes() != wantBytes {
		return mismatch("allreduce: %s sent %s frame %d of %d bytes in collective %d; it expected frame %d of %d bytes",
			them, me, f.Part, f.Bytes(), c.seq, part, wantBytes)
	}
	return nil
}
