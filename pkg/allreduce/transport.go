package allreduce

import (
	"context"
	"errors"
)

// Wire is how a frame's elements are encoded.
type Wire uint8

const (
	// WireF32 sends float32 elements as their 4 little-endian bytes.
	WireF32 Wire = iota
	// WireBF16 sends the top 16 bits of each float32, rounded to nearest
	// even (bfloat16): half the bytes, about 3 significant decimal digits.
	WireBF16
)

func (w Wire) elemBytes() int {
	if w == WireBF16 {
		return 2
	}
	return 4
}

func (w Wire) String() string {
	if w == WireBF16 {
		return "bf16"
	}
	return "f32"
}

// Frame is one message from one rank to another within a collective.
type Frame struct {
	Seq  uint64 // collective sequence number on the communicator
	Part uint32 // index of the frame among those the sender sends this receiver in the collective
	Desc Desc   // what the sender is doing; checked by the receiver before it uses Data
	Wire Wire   // encoding of Data
	// Data is the payload as pieces of bytes that follow each other; a
	// piece may end in the middle of an element.
	Data [][]byte
	// Release: on Send, the transport calls it (once) when it no longer
	// reads Data, which the caller keeps unchanged until then; calls for
	// the frames sent to one peer happen in the order they were sent. On
	// Recv, the caller calls it when it is done with Data.
	Release func()
}

// Bytes is the payload length.
func (f *Frame) Bytes() int {
	n := 0
	for _, d := range f.Data {
		n += len(d)
	}
	return n
}

// NoticeKind says why a rank gave up a collective.
type NoticeKind int32

const (
	// NoticeGone: a peer's connection broke or it closed its side.
	NoticeGone NoticeKind = 1
	// NoticeMismatch: two ranks disagree on the collective.
	NoticeMismatch NoticeKind = 2
	// NoticeTimeout: the sender reached its deadline waiting on WaitingOn.
	NoticeTimeout NoticeKind = 3
	// NoticeCancelled: the sender's caller cancelled the collective.
	NoticeCancelled NoticeKind = 4
	// NoticeFailed: anything else.
	NoticeFailed NoticeKind = 5
)

func (k NoticeKind) String() string {
	switch k {
	case NoticeGone:
		return "peer gone"
	case NoticeMismatch:
		return "mismatch"
	case NoticeTimeout:
		return "timeout"
	case NoticeCancelled:
		return "cancelled"
	}
	return "failed"
}

// Notice is what a rank that gives up a collective tells its peers, so that
// they stop at once and name the same cause.
type Notice struct {
	From      int    // the rank that gave up
	Seq       uint64 // its collective
	Kind      NoticeKind
	Culprit   int // the rank it blames, or -1
	WaitingOn int // for NoticeTimeout: the rank it was waiting on, or -1
	Reason    string
}

// Transport moves frames between the ranks of one ring generation. The
// ring uses the neighbours; small collectives talk to every peer.
// Implementations: the gRPC one (Hub.Dial) and an in-memory one for tests
// (NewInmemNetwork). Frames between one pair of ranks arrive in order.
type Transport interface {
	// Send queues f for rank to. It may return before f is delivered (see
	// Frame.Release). It may block on flow control; if ctx ends meanwhile
	// it returns ctx's error and the transport may stop working.
	Send(ctx context.Context, to int, f Frame) error
	// Recv returns the next frame from rank from. Once from's side is gone
	// (closed or broken), Recv returns the frames it had sent and then an
	// error saying what happened.
	Recv(ctx context.Context, from int) (Frame, error)
	// Notify sends n to every peer, best effort, within ctx.
	Notify(ctx context.Context, n Notice)
	// Notices delivers the notices peers send.
	Notices() <-chan Notice
	// Addr names rank's address, for messages.
	Addr(rank int) string
	// Close releases the transport. It waits, within ctx, until what was
	// sent has been delivered; with a done ctx it drops everything at once.
	Close(ctx context.Context) error
}

// ErrClosed is returned by a transport that has been closed.
var ErrClosed = errors.New("allreduce: transport closed")

// PeerGoneError is a transport's error for a peer whose side ended.
type PeerGoneError struct {
	Rank int
	Addr string
	Err  error
}

func (e *PeerGoneError) Error() string {
	return "rank " + itoa(e.Rank) + " (" + e.Addr + ") is gone: " + e.Err.Error()
}

func (e *PeerGoneError) Unwrap() error { return e.Err }
