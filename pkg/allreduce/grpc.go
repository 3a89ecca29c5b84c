package allreduce

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unsafe"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/ringmaster/ringmaster/pkg/allreduce/ringpb"
)

// Hub is the gRPC side of the ring on one worker: it serves the Ring service
// and routes each inbound stream to the transport of the ring generation it
// belongs to. One Hub serves every generation and job the worker takes part
// in; a stream for a generation older than the newest one the hub has seen
// for that job is refused.
type Hub struct {
	ringpb.UnimplementedRingServer
	log *zap.Logger

	mu        sync.Mutex
	endpoints map[endpointKey]*grpcTransport
	newest    map[string]uint64 // job -> newest generation registered
	changed   chan struct{}     // closed and replaced on every registration
}

type endpointKey struct {
	job  string
	gen  uint64
	rank int
}

// AcceptWait bounds how long an inbound stream waits for its rank to set up
// its side of the same generation.
const AcceptWait = 30 * time.Second

// NewHub returns a hub; register it on a gRPC server with Register.
func NewHub(log *zap.Logger) *Hub {
	return &Hub{
		log:       log,
		endpoints: map[endpointKey]*grpcTransport{},
		newest:    map[string]uint64{},
		changed:   make(chan struct{}),
	}
}

// Register adds the Ring service to s.
func (h *Hub) Register(s *grpc.Server) { ringpb.RegisterRingServer(s, h) }

// ServerOptions are the gRPC server options the ring needs: messages as
// large as a chunk, and flow-control windows sized for bulk transfer.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.MaxRecvMsgSize(1 << 30),
		grpc.InitialWindowSize(8 << 20),
		grpc.InitialConnWindowSize(16 << 20),
	}
}

// Peering describes one rank's place in a ring generation.
type Peering struct {
	Job        string
	Generation uint64
	Rank       int
	World      int
	// Left and Right are the ring addresses of the neighbours; Left is
	// used in messages only.
	Left, Right string
}

// Dial sets up rank's transport: it registers to accept the left
// neighbour's stream and opens a stream to the right neighbour, waiting for
// it (bounded by ctx) if the neighbour is not up yet.
func (h *Hub) Dial(ctx context.Context, p Peering) (Transport, error) {
	if p.World < 1 || p.Rank < 0 || p.Rank >= p.World {
		return nil, fmt.Errorf("allreduce: rank %d is outside a world of %d", p.Rank, p.World)
	}
	t := &grpcTransport{
		hub: h, p: p,
		inbox:  make(chan *ringpb.Frame, 2),
		inErr:  make(chan error, 1),
		outErr: make(chan error, 1),
		closed: make(chan struct{}),
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

	if err := t.connect(ctx); err != nil {
		t.Close()
		return nil, err
	}
	return t, nil
}

// Stream implements ringpb.RingServer: it receives a left neighbour's frames
// and hands them to the matching transport.
func (h *Hub) Stream(stream ringpb.Ring_StreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	hello := first.GetHello()
	if hello == nil || hello.World < 1 {
		return status.Error(codes.InvalidArgument, "ring stream must start with a hello")
	}
	rank := int(hello.FromRank+1) % int(hello.World)
	key := endpointKey{hello.Job, hello.Generation, rank}
	t, err := h.await(stream.Context(), key)
	if err != nil {
		return err
	}
	if int(hello.World) != t.p.World {
		return status.Errorf(codes.FailedPrecondition, "rank %d of job %s generation %d has a world of %d, the stream's sender says %d",
			rank, key.job, key.gen, t.p.World, hello.World)
	}
	if !t.attach() {
		return status.Errorf(codes.AlreadyExists, "rank %d of job %s generation %d already has a left neighbour", rank, key.job, key.gen)
	}
	for {
		f, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("rank %d (%s) closed its stream", mod(rank-1, t.p.World), t.p.Left)
			}
			t.inboundFailed(err)
			return nil
		}
		select {
		case t.inbox <- f:
		case <-t.closed:
			return status.Error(codes.Canceled, "ring transport closed")
		case <-stream.Context().Done():
			t.inboundFailed(stream.Context().Err())
			return stream.Context().Err()
		}
	}
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

type grpcTransport struct {
	hub *Hub
	p   Peering

	conn     *grpc.ClientConn
	stream   ringpb.Ring_StreamClient
	cancel   context.CancelFunc
	inbox    chan *ringpb.Frame
	inErr    chan error
	outErr   chan error // the outbound stream ended
	attached bool
	mu       sync.Mutex
	closed   chan struct{}
	once     sync.Once
}

func (t *grpcTransport) connect(ctx context.Context) error {
	conn, err := grpc.NewClient(t.p.Right,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(8<<20),
		grpc.WithInitialConnWindowSize(16<<20),
		grpc.WithDefaultCallOptions(grpc.MaxCallSendMsgSize(1<<30)),
	)
	if err != nil {
		return fmt.Errorf("allreduce: rank %d: connecting to rank %d at %s: %w", t.p.Rank, mod(t.p.Rank+1, t.p.World), t.p.Right, err)
	}
	t.conn = conn
	// The stream lives as long as the transport; ctx only bounds setup.
	sctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	stop := context.AfterFunc(ctx, cancel)
	defer stop()
	stream, err := ringpb.NewRingClient(conn).Stream(sctx, grpc.WaitForReady(true))
	if err == nil {
		err = stream.Send(&ringpb.Frame{Hello: &ringpb.Hello{
			Job: t.p.Job, Generation: t.p.Generation, FromRank: int32(t.p.Rank), World: int32(t.p.World),
		}})
	}
	if err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return fmt.Errorf("allreduce: rank %d: opening the ring stream to rank %d at %s: %w", t.p.Rank, mod(t.p.Rank+1, t.p.World), t.p.Right, err)
	}
	t.stream = stream
	// The receiver ends the stream only to refuse it (stale generation,
	// wrong world) or when it goes away. Watch for that so that our side
	// fails at once instead of at the collective's deadline. The goroutine
	// ends with the stream, which Close cancels.
	go func() {
		err := stream.RecvMsg(new(ringpb.StreamClosed))
		if err == nil || errors.Is(err, io.EOF) {
			err = fmt.Errorf("rank %d (%s) ended the ring stream", mod(t.p.Rank+1, t.p.World), t.p.Right)
		}
		select {
		case t.outErr <- err:
		default:
		}
	}()
	return nil
}

func (t *grpcTransport) attach() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.attached {
		return false
	}
	t.attached = true
	return true
}

func (t *grpcTransport) inboundFailed(err error) {
	select {
	case t.inErr <- err:
	default:
	}
}

func (t *grpcTransport) Send(ctx context.Context, f Frame) error {
	if t.stream == nil {
		return ErrClosed
	}
	// stream.Send blocks on flow control without looking at ctx; cancelling
	// the stream is the only way to unblock it, and it breaks the
	// transport, which a failed collective does anyway.
	stop := context.AfterFunc(ctx, t.cancel)
	defer stop()
	err := t.stream.Send(&ringpb.Frame{Seq: f.Seq, Part: f.Part, Data: floatBytes(f.Data)})
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if errors.Is(err, io.EOF) {
		// The receiver ended the stream; the watcher started in connect
		// holds its status, which says why.
		select {
		case oerr := <-t.outErr:
			t.outErr <- oerr
			err = oerr
		case <-ctx.Done():
		}
	}
	return err
}

func (t *grpcTransport) Recv(ctx context.Context, dst []float32) (Frame, error) {
	select {
	case f := <-t.inbox:
		return decodeFrame(f, dst)
	case err := <-t.inErr:
		t.inboundFailed(err) // keep it for later calls
		return Frame{}, err
	case err := <-t.outErr:
		t.outErr <- err
		return Frame{}, fmt.Errorf("outbound stream failed: %w", err)
	case <-t.closed:
		return Frame{}, ErrClosed
	case <-ctx.Done():
		return Frame{}, ctx.Err()
	}
}

func decodeFrame(f *ringpb.Frame, dst []float32) (Frame, error) {
	if len(f.Data)%4 != 0 {
		return Frame{}, fmt.Errorf("allreduce: frame payload of %d bytes is not a whole number of float32s", len(f.Data))
	}
	n := len(f.Data) / 4
	if n > len(dst) {
		return Frame{}, &FrameTooLargeError{Got: n, Room: len(dst)}
	}
	copy(floatBytes(dst[:n]), f.Data)
	return Frame{Seq: f.Seq, Part: f.Part, Data: dst[:n]}, nil
}

func (t *grpcTransport) Peers() (string, string) { return t.p.Left, t.p.Right }

func (t *grpcTransport) Close() error {
	t.once.Do(func() {
		close(t.closed)
		t.hub.remove(t)
		if t.stream != nil {
			_ = t.stream.CloseSend()
		}
		if t.cancel != nil {
			t.cancel()
		}
		if t.conn != nil {
			_ = t.conn.Close()
		}
	})
	return nil
}

// floatBytes views a float32 slice as its little-endian bytes (every
// platform Go supports for this project is little-endian).
func floatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}
