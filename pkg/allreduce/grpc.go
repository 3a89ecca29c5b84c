package allreduce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/experimental"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ringmaster/ringmaster/pkg/allreduce/ringpb"
)

// Tuning of the gRPC transport for bulk transfer on one connection per
// ordered pair of ranks. Static windows larger than a ring chunk mean a
// sender never waits for a window update in the middle of a step.
//
// The read and write buffers are 64 KiB, shared (a connection holds its
// write buffer only while it writes): with 512 KiB private buffers a rank
// held 4.5 to 4.9x a 1 MiB buffer in extra memory during an all-reduce,
// with these 2.1 to 2.2x, at the same or less CPU time per call
// (ringbench --cpu, all ranks together, 4 alternating runs: 1 MiB 11.0 to
// 12.2 ms against 12.3 to 13.0; 16 MiB 145 to 148 against 150 to 163; 64
// MiB 583 to 602 against 548 to 620). The loopback socket hands over
// about 64 KiB per read anyway.
const (
	streamWindow = 32 << 20
	connWindow   = 64 << 20 // above the stream window: aborts never wait behind data
	ioBufferSize = 64 << 10
	inboundDepth = 64 // frames queued per peer before gRPC's flow control applies
)

const (
	methodStream = "/ringmaster.ring.v2.Ring/Stream"
	methodAbort  = "/ringmaster.ring.v2.Ring/Abort"
)

type ringServer interface {
	serveStream(grpc.ServerStream) error
	serveAbort(context.Context, func(any) error) (any, error)
}

var ringServiceDesc = grpc.ServiceDesc{
	ServiceName: "ringmaster.ring.v2.Ring",
	HandlerType: (*ringServer)(nil),
	Streams: []grpc.StreamDesc{{
		StreamName:    "Stream",
		ServerStreams: true,
		ClientStreams: true,
		Handler:       func(srv any, ss grpc.ServerStream) error { return srv.(ringServer).serveStream(ss) },
	}},
	Methods: []grpc.MethodDesc{{
		MethodName: "Abort",
		Handler: func(srv any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			return srv.(ringServer).serveAbort(ctx, dec)
		},
	}},
	Metadata: "ring.proto",
}

var streamDesc = grpc.StreamDesc{StreamName: "Stream", ServerStreams: true, ClientStreams: true}

// Hub is the gRPC side of the ring on one worker: it serves the Ring
// service and routes each inbound stream to the transport of the ring
// generation it belongs to. One Hub serves every generation and job the
// worker takes part in; a stream or abort for a generation older than the
// newest one the hub has set up for that job is refused.
type Hub struct {
	log *zap.Logger

	mu        sync.Mutex
	endpoints map[endpointKey]*grpcTransport
	newest    map[string]uint64 // job -> newest generation registered
	changed   chan struct{}     // closed and replaced on every registration

	// sec, if set, makes every ring connection mutual TLS and checks
	// that each stream and abort comes from the worker assigned to the
	// rank it speaks for.
	sec *Security

	// dial, when set (by tests), makes the ring's outbound connections.
	dial func(ctx context.Context, addr string) (net.Conn, error)
}

// Security authenticates a ring: the server's and the dialers' transport
// credentials, and how to tell which worker a call comes from. With it,
// only the workers named in a generation's Peering.Identities take part
// in it: a stream's hello and an abort must come from the identity
// assigned to the rank they claim.
type Security struct {
	// Server are the credentials of the hub's gRPC server (give them to
	// ServerOptions).
	Server credentials.TransportCredentials
	// Client returns the credentials for dialing the worker that must
	// prove the identity peer.
	Client func(peer string) credentials.TransportCredentials
	// Peer returns the identity a call's peer proved (ok false: none).
	Peer func(ctx context.Context) (string, bool)
}

type endpointKey struct {
	job  string
	gen  uint64
	rank int
}

// AcceptWait bounds how long an inbound stream waits for its rank to set up
// its side of the same generation.
const AcceptWait = 30 * time.Second

// NewHub returns a hub; register it on a gRPC server with Register. sec
// nil leaves the ring unauthenticated (plain text).
func NewHub(log *zap.Logger, sec *Security) *Hub {
	return &Hub{
		log:       log,
		sec:       sec,
		endpoints: map[endpointKey]*grpcTransport{},
		newest:    map[string]uint64{},
		changed:   make(chan struct{}),
	}
}

// Register adds the Ring service to s, which must have been made with
// ServerOptions.
func (h *Hub) Register(s *grpc.Server) { s.RegisterService(&ringServiceDesc, h) }

// ServerOptions are the gRPC server options the ring needs: the raw codec
// (which passes protobuf messages of other services through), large
// messages, static flow-control windows and buffers sized for bulk data,
// and sec's server credentials (nil: plain text).
func ServerOptions(sec *Security) []grpc.ServerOption {
	var creds []grpc.ServerOption
	if sec != nil {
		creds = append(creds, grpc.Creds(sec.Server))
	}
	return append(creds,
		grpc.ForceServerCodecV2(rawCodec{}),
		grpc.MaxRecvMsgSize(1<<30),
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ReadBufferSize(ioBufferSize),
		grpc.WriteBufferSize(ioBufferSize),
		grpc.SharedWriteBuffer(true),
		experimental.BufferPool(newDirtyPool()),
		// A peer whose host vanished without a TCP reset (power loss, a
		// partition between workers that etcd does not see) is noticed
		// when a ping goes unanswered: the stream fails and the
		// collective blames that peer. Busy connections are not pinged
		// (gRPC pings only when nothing was read); the timeout is wide
		// enough that a loaded machine answers in time.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: KeepaliveTime, Timeout: KeepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
	)
}

// maxMessageBytes is the largest gRPC message of the ring: a frame's data
// and room for its header and control part.
const maxMessageBytes = MaxFrameBytes + 1<<20

// KeepaliveTime and KeepaliveTimeout bound how long a ring connection to a
// silent peer lives: after KeepaliveTime without reading anything the
// server pings, and closes the connection when no answer comes within
// KeepaliveTimeout. (gRPC clients may not ping more often than every 10 s,
// so the receiving side of each connection does the watching.)
const (
	KeepaliveTime    = 2 * time.Second
	KeepaliveTimeout = 4 * time.Second
)

func dialOptions(pool mem.BufferPool, creds credentials.TransportCredentials) []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithInitialWindowSize(streamWindow),
		grpc.WithInitialConnWindowSize(connWindow),
		grpc.WithReadBufferSize(ioBufferSize),
		grpc.WithWriteBufferSize(ioBufferSize),
		grpc.WithSharedWriteBuffer(true),
		experimental.WithBufferPool(pool),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(maxMessageBytes), grpc.MaxCallRecvMsgSize(maxMessageBytes), grpc.ForceCodecV2(rawCodec{})),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 10 * time.Second, Timeout: KeepaliveTimeout, PermitWithoutStream: true}),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
}

// Peering describes one rank's place in a ring generation.
type Peering struct {
	Job        string
	Generation uint64
	Rank       int
	World      int
	// Addrs are the ring addresses of all ranks, by rank.
	Addrs []string
	// Identities are the identities the ranks' workers prove, by rank;
	// required when the hub has Security.
	Identities []string
}

// Dial sets up rank's transport: it registers to accept the peers'
// streams and opens a stream to every peer, waiting (bounded by ctx) until
// each has accepted it for this generation.
func (h *Hub) Dial(ctx context.Context, p Peering) (Transport, error) {
	if p.World < 1 || p.Rank < 0 || p.Rank >= p.World {
		return nil, fmt.Errorf("allreduce: rank %d is outside a world of %d", p.Rank, p.World)
	}
	if len(p.Addrs) != p.World {
		return nil, fmt.Errorf("allreduce: %d addresses for a world of %d", len(p.Addrs), p.World)
	}
	if h.sec != nil && len(p.Identities) != p.World {
		return nil, fmt.Errorf("allreduce: %d identities for a world of %d (a secured ring checks every peer)", len(p.Identities), p.World)
	}
	t := &grpcTransport{hub: h, p: p, closed: make(chan struct{}), pool: newDirtyPool(),
		notices: make(chan Notice, 4*p.World),
		in:      make([]*inLink, p.World), out: make([]*outLink, p.World)}
	for i := range p.World {
		t.in[i] = &inLink{q: make(chan Frame, inboundDepth), done: make(chan struct{})}
	}
	if p.World == 1 {
		return t, nil
	}
	key := endpointKey{p.Job, p.Generation, p.Rank}
	h.mu.Lock()
	if g := h.newest[p.Job]; g > p.Generation {
		h.mu.Unlock()
		return nil, fmt.Errorf("allreduce: generation %d of job %s is older than generation %d already set up here", p.Generation, p.Job, g)
	}
	if _, dup := h.endpoints[key]; dup {
		h.mu.Unlock()
		return nil, fmt.Errorf("allreduce: rank %d of generation %d of job %s is already set up here", p.Rank, p.Generation, p.Job)
	}
	h.endpoints[key] = t
	h.newest[p.Job] = p.Generation
	close(h.changed)
	h.changed = make(chan struct{})
	h.mu.Unlock()

	errs := make([]error, p.World)
	var wg sync.WaitGroup
	for peer := range p.World {
		if peer == p.Rank {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[peer] = t.connect(ctx, peer)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		cctx, cancel := context.WithCancel(context.Background())
		cancel()
		t.Close(cctx)
		de := &DialError{err: err}
		for peer, e := range errs {
			if e != nil {
				de.Ranks = append(de.Ranks, peer)
			}
		}
		return nil, de
	}
	return t, nil
}

// DialError is Dial's failure to connect some peers of a ring generation.
type DialError struct {
	// Ranks are the peers that could not be connected.
	Ranks []int
	err   error
}

func (e *DialError) Error() string { return e.err.Error() }
func (e *DialError) Unwrap() error { return e.err }

// serveStream receives one peer's frames for one rank.
func (h *Hub) serveStream(ss grpc.ServerStream) error {
	first := getInFrame()
	if err := ss.RecvMsg(first); err != nil {
		return err
	}
	hello := &ringpb.Hello{}
	err := proto.Unmarshal(first.ctl, hello)
	kind := first.kind
	first.release()
	if err != nil || kind != kindHello || hello.World < 1 {
		return status.Error(codes.InvalidArgument, "ring stream must start with a hello")
	}
	from, to := int(hello.FromRank), int(hello.ToRank)
	if h.sec != nil {
		// Refuse at once a caller that no generation here could have:
		// a stranger must not hold a stream open while await waits.
		if _, ok := h.sec.Peer(ss.Context()); !ok {
			return status.Error(codes.Unauthenticated, "ring streams need a worker certificate")
		}
	}
	t, err := h.await(ss.Context(), endpointKey{hello.Job, hello.Generation, to})
	if err != nil {
		return err
	}
	if int(hello.World) != t.p.World || from < 0 || from >= t.p.World || from == to {
		return status.Errorf(codes.FailedPrecondition, "rank %d of job %s generation %d has a world of %d; the stream from rank %d says %d",
			to, hello.Job, hello.Generation, t.p.World, from, hello.World)
	}
	if err := h.checkPeer(ss.Context(), t, from); err != nil {
		return err
	}
	l := t.in[from]
	l.mu.Lock()
	attached := l.attached
	l.attached = true
	l.mu.Unlock()
	if attached {
		return status.Errorf(codes.AlreadyExists, "rank %d of job %s generation %d already has a stream from rank %d", to, hello.Job, hello.Generation, from)
	}
	ctl, _ := proto.Marshal(&ringpb.Welcome{Generation: hello.Generation})
	o := getOutFrame()
	o.kind, o.ctl = kindWelcome, ctl
	if err := o.send(ss.SendMsg); err != nil {
		l.end(&PeerGoneError{Rank: from, Addr: t.p.Addrs[from], Err: err})
		return err
	}
	// Receive in a goroutine so that closing the transport ends the
	// stream (returning from the handler cancels it) even while RecvMsg
	// waits.
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			in := getInFrame()
			if err := ss.RecvMsg(in); err != nil {
				in.release()
				if errors.Is(err, io.EOF) {
					err = errors.New("it closed its side of the ring")
				}
				l.end(&PeerGoneError{Rank: from, Addr: t.p.Addrs[from], Err: err})
				return
			}
			if in.kind != kindData {
				in.release()
				continue
			}
			select {
			case l.q <- in.f:
			case <-t.closed:
				in.release()
				return
			}
		}
	}()
	select {
	case <-recvDone:
		return nil
	case <-t.closed:
		return status.Error(codes.Unavailable, "the ring transport closed")
	}
}

// serveAbort delivers a peer's notice.
func (h *Hub) serveAbort(ctx context.Context, dec func(any) error) (any, error) {
	in := getInFrame()
	defer in.release()
	if err := dec(in); err != nil {
		return nil, err
	}
	a := &ringpb.Abort{}
	if err := proto.Unmarshal(in.ctl, a); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "bad abort: %v", err)
	}
	h.mu.Lock()
	t := h.endpoints[endpointKey{a.Job, a.Generation, int(a.ToRank)}]
	h.mu.Unlock()
	if h.sec != nil {
		if _, ok := h.sec.Peer(ctx); !ok {
			return nil, status.Error(codes.Unauthenticated, "ring aborts need a worker certificate")
		}
		if t != nil {
			if from := int(a.FromRank); from < 0 || from >= t.p.World {
				return nil, status.Errorf(codes.InvalidArgument, "abort from rank %d of a world of %d", from, t.p.World)
			}
			if err := h.checkPeer(ctx, t, int(a.FromRank)); err != nil {
				return nil, err
			}
		}
	}
	if t != nil {
		select {
		case t.notices <- Notice{From: int(a.FromRank), Seq: a.Seq, Kind: NoticeKind(a.Kind), Culprit: int(a.Culprit), WaitingOn: int(a.WaitingOn), Reason: a.Reason}:
		default:
		}
	}
	o := getOutFrame()
	o.kind = kindAck
	o.refs.Store(0) // gRPC marshals it once and frees it
	return o, nil
}

// checkPeer refuses a call that does not come from the worker assigned to
// rank from in t's generation.
func (h *Hub) checkPeer(ctx context.Context, t *grpcTransport, from int) error {
	if h.sec == nil {
		return nil
	}
	got, _ := h.sec.Peer(ctx)
	if want := t.p.Identities[from]; got != want {
		return status.Errorf(codes.PermissionDenied, "rank %d of job %s generation %d is worker %q; the caller is %q, which is not assigned that rank",
			from, t.p.Job, t.p.Generation, want, got)
	}
	return nil
}

// await waits until the transport for key is registered, refusing streams
// of stale generations.
func (h *Hub) await(ctx context.Context, key endpointKey) (*grpcTransport, error) {
	timer := time.NewTimer(AcceptWait)
	defer timer.Stop()
	for {
		h.mu.Lock()
		t, ok := h.endpoints[key]
		newest := h.newest[key.job]
		changed := h.changed
		h.mu.Unlock()
		if ok {
			return t, nil
		}
		if newest > key.gen {
			return nil, status.Errorf(codes.FailedPrecondition, "stale ring generation %d for job %s: this worker is at generation %d", key.gen, key.job, newest)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-timer.C:
			return nil, status.Errorf(codes.NotFound, "no rank %d of job %s generation %d set up here within %s", key.rank, key.job, key.gen, AcceptWait)
		}
	}
}

func (h *Hub) remove(t *grpcTransport) {
	h.mu.Lock()
	defer h.mu.Unlock()
	key := endpointKey{t.p.Job, t.p.Generation, t.p.Rank}
	if h.endpoints[key] == t {
		delete(h.endpoints, key)
	}
}

type inLink struct {
	q        chan Frame
	mu       sync.Mutex
	attached bool
	once     sync.Once
	done     chan struct{} // closed when the stream ended; err says why
	err      error
}

func (l *inLink) end(err error) {
	l.once.Do(func() {
		l.err = err
		close(l.done)
	})
}

type outLink struct {
	conn   *grpc.ClientConn
	stream grpc.ClientStream
	cancel context.CancelFunc
	done   chan struct{} // closed when the receiver ended the stream
	err    error
}

type grpcTransport struct {
	hub     *Hub
	pool    *dirtyPool // for the frames of its outbound connections
	p       Peering
	in      []*inLink
	out     []*outLink
	notices chan Notice
	closed  chan struct{}
	once    sync.Once
	wg      sync.WaitGroup // stream watchers
}

func (t *grpcTransport) connect(ctx context.Context, peer int) error {
	addr := t.p.Addrs[peer]
	fail := func(err error) error {
		return fmt.Errorf("allreduce: rank %d: connecting to rank %d (%s) for job %s generation %d: %w",
			t.p.Rank, peer, addr, t.p.Job, t.p.Generation, err)
	}
	var creds credentials.TransportCredentials = insecure.NewCredentials()
	if s := t.hub.sec; s != nil {
		creds = s.Client(t.p.Identities[peer])
	}
	opts := dialOptions(t.pool, creds)
	if t.hub.dial != nil {
		opts = append(opts, grpc.WithContextDialer(t.hub.dial))
	}
	conn, err := grpc.NewClient(addr, opts...)
	if err != nil {
		return fail(err)
	}
	// The stream lives as long as the transport; ctx bounds setup only.
	sctx, cancel := context.WithCancel(context.Background())
	l := &outLink{conn: conn, cancel: cancel, done: make(chan struct{})}
	t.out[peer] = l
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	stream, err := conn.NewStream(sctx, &streamDesc, methodStream, grpc.WaitForReady(true))
	if err == nil {
		ctl, _ := proto.Marshal(&ringpb.Hello{Job: t.p.Job, Generation: t.p.Generation,
			FromRank: int32(t.p.Rank), ToRank: int32(peer), World: int32(t.p.World)})
		o := getOutFrame()
		o.kind, o.ctl = kindHello, ctl
		err = o.send(stream.SendMsg)
	}
	if err == nil {
		w := getInFrame()
		err = stream.RecvMsg(w)
		if err == nil && w.kind != kindWelcome {
			err = errors.New("the peer did not answer with a welcome")
		}
		w.release()
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		close(l.done)
		return fail(err)
	}
	l.stream = stream
	// The receiver ends the stream only when its side closes or breaks;
	// the watcher records why, for Send's errors.
	t.wg.Add(1)
	go func() {
		defer t.wg.Done()
		w := getInFrame()
		err := stream.RecvMsg(w)
		w.release()
		if err == nil || errors.Is(err, io.EOF) {
			err = errors.New("it ended the ring stream")
		}
		l.err = &PeerGoneError{Rank: peer, Addr: addr, Err: err}
		close(l.done)
	}()
	return nil
}

func (t *grpcTransport) Send(ctx context.Context, to int, f Frame) error {
	l := t.out[to]
	if l == nil || l.stream == nil {
		if f.Release != nil {
			f.Release()
		}
		return ErrClosed
	}
	o := getOutFrame()
	o.kind, o.f = kindData, f
	// SendMsg does not watch ctx; cancelling the stream is the only way to
	// unblock it, and it breaks the transport, which a failed collective
	// does anyway.
	stop := context.AfterFunc(ctx, l.cancel)
	err := o.send(l.stream.SendMsg)
	stop()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	select {
	case <-l.done:
		return l.err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.closed:
		return ErrClosed
	}
}

func (t *grpcTransport) Recv(ctx context.Context, from int) (Frame, error) {
	l := t.in[from]
	select {
	case f := <-l.q:
		return f, nil
	default:
	}
	select {
	case f := <-l.q:
		return f, nil
	case <-l.done:
		select {
		case f := <-l.q:
			return f, nil
		default:
		}
		return Frame{}, l.err
	case <-t.closed:
		return Frame{}, ErrClosed
	case <-ctx.Done():
		return Frame{}, ctx.Err()
	}
}

func (t *grpcTransport) Notify(ctx context.Context, n Notice) {
	var wg sync.WaitGroup
	for peer, l := range t.out {
		if l == nil || peer == t.p.Rank {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctl, _ := proto.Marshal(&ringpb.Abort{Job: t.p.Job, Generation: t.p.Generation,
				FromRank: int32(t.p.Rank), ToRank: int32(peer), Seq: n.Seq, Kind: int32(n.Kind),
				Culprit: int32(n.Culprit), WaitingOn: int32(n.WaitingOn), Reason: n.Reason})
			o := getOutFrame()
			o.kind, o.ctl = kindAbort, ctl
			ack := getInFrame()
			_ = o.send(func(m any) error { return l.conn.Invoke(ctx, methodAbort, m, ack) })
			ack.release()
		}()
	}
	wg.Wait()
}

func (t *grpcTransport) Notices() <-chan Notice { return t.notices }

func (t *grpcTransport) Addr(rank int) string {
	if rank < 0 || rank >= len(t.p.Addrs) {
		return "?"
	}
	return t.p.Addrs[rank]
}

func (t *grpcTransport) Close(ctx context.Context) error {
	t.once.Do(func() {
		if ctx.Err() == nil {
			// Half-close every stream and wait until the receivers have
			// read everything up to the end.
			for _, l := range t.out {
				if l != nil && l.stream != nil {
					_ = l.stream.CloseSend()
				}
			}
			for _, l := range t.out {
				if l == nil {
					continue
				}
				select {
				case <-l.done:
				case <-ctx.Done():
				}
			}
		}
		close(t.closed)
		t.hub.remove(t)
		for _, l := range t.out {
			if l != nil {
				l.cancel()
				_ = l.conn.Close()
			}
		}
		t.wg.Wait()
		for _, l := range t.in {
			drain(l.q)
		}
	})
	return nil
}
