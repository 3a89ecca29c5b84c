package allreduce

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// The raw codec. A frame on the wire is a 40-byte little-endian header
// followed by the payload:
//
//	0  kind   u8   1 data, 2 hello, 3 welcome, 4 abort, 5 ack
//	1  wire   u8   0 float32, 1 bf16
//	2  coll   u8
//	3  op     u8
//	4  part   u32
//	8  seq    u64
//	16 count  i64
//	24 root   i32
//	28 dtype  u8 (3 bytes padding)
//	32 shape  u64
//
// Data payloads are the elements' bytes; control payloads (hello, welcome,
// abort) are ringpb messages. Marshal hands gRPC the caller's float32
// memory without copying it (pieces of 1 KiB or less are copied into the
// header buffer) and reports, through Frame.Release, when gRPC has written
// it out; Unmarshal keeps gRPC's receive buffers and lets the ring add
// straight out of them. Other messages (protobuf) pass through to the
// protobuf codec, so the codec can be forced on a whole server.

const (
	kindData    = 1
	kindHello   = 2
	kindWelcome = 3
	kindAbort   = 4
	kindAck     = 5

	headerBytes = 40
	hdrBufBytes = 4096
)

type rawCodec struct{}

func (rawCodec) Name() string { return "ringraw" }

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	switch m := v.(type) {
	case *outFrame:
		return m.marshal(), nil
	case proto.Message:
		return encoding.GetCodecV2("proto").Marshal(m)
	}
	return nil, fmt.Errorf("allreduce: cannot marshal %T", v)
}

func (rawCodec) Unmarshal(data mem.BufferSlice, v any) error {
	switch m := v.(type) {
	case *inFrame:
		return m.unmarshal(data)
	case proto.Message:
		return encoding.GetCodecV2("proto").Unmarshal(data, m)
	}
	return fmt.Errorf("allreduce: cannot unmarshal into %T", v)
}

// outFrame is one frame being sent. It is its own mem.BufferPool: gRPC
// "returns" each piece when it has written it, and the last return
// releases the frame.
type outFrame struct {
	kind uint8
	f    Frame
	ctl  []byte
	hdr  []byte
	ptrs [][]byte
	// refs counts the pieces gRPC holds plus one for a sender that has
	// not yet seen SendMsg return (see send); the frame is released when
	// it drops to zero.
	refs atomic.Int32
}

var outFrames = sync.Pool{New: func() any { return &outFrame{hdr: make([]byte, 0, hdrBufBytes)} }}

func getOutFrame() *outFrame { return outFrames.Get().(*outFrame) }

// send calls sendMsg(o) holding a reference, so that o is released
// exactly once whether or not gRPC marshaled it.
func (o *outFrame) send(sendMsg func(any) error) error {
	o.refs.Store(1)
	err := sendMsg(o)
	o.Put(nil)
	return err
}

func (o *outFrame) Get(n int) *[]byte { b := make([]byte, n); return &b }

func (o *outFrame) Put(*[]byte) {
	if o.refs.Add(-1) == 0 {
		o.finish()
	}
}

// finish releases the caller's frame and recycles o.
func (o *outFrame) finish() {
	rel := o.f.Release
	o.f = Frame{}
	o.ctl = nil
	clear(o.ptrs)
	o.ptrs = o.ptrs[:0]
	outFrames.Put(o)
	if rel != nil {
		rel()
	}
}

func putHeader(b []byte, kind uint8, f *Frame) {
	b[0] = kind
	b[1] = byte(f.Wire)
	b[2] = byte(f.Desc.Coll)
	b[3] = byte(f.Desc.Op)
	binary.LittleEndian.PutUint32(b[4:], f.Part)
	binary.LittleEndian.PutUint64(b[8:], f.Seq)
	binary.LittleEndian.PutUint64(b[16:], uint64(f.Desc.Count))
	binary.LittleEndian.PutUint32(b[24:], uint32(f.Desc.Root))
	b[28], b[29], b[30], b[31] = byte(f.Desc.Type), 0, 0, 0
	binary.LittleEndian.PutUint64(b[32:], f.Desc.Shape)
}

func (o *outFrame) marshal() mem.BufferSlice {
	hdr := o.hdr[:headerBytes]
	putHeader(hdr, o.kind, &o.f)
	hdr = append(hdr, o.ctl...)
	pieces := o.f.Data
	// Small leading pieces ride in the header buffer.
	for len(pieces) > 0 && len(hdr)+len(pieces[0]) <= cap(hdr) {
		hdr = append(hdr, pieces[0]...)
		pieces = pieces[1:]
	}
	o.hdr = hdr
	bs := make(mem.BufferSlice, 0, 1+len(pieces))
	o.refs.Add(1 + int32(len(pieces)))
	bs = append(bs, mem.NewBuffer(&o.hdr, o))
	for _, p := range pieces {
		if mem.IsBelowBufferPoolingThreshold(len(p)) {
			// gRPC does not pool (nor return) buffers this small: copy.
			bs = append(bs, mem.Copy(p, mem.DefaultBufferPool()))
			o.refs.Add(-1)
			continue
		}
		o.ptrs = append(o.ptrs, p)
	}
	for i := range o.ptrs {
		bs = append(bs, mem.NewBuffer(&o.ptrs[i], o))
	}
	// Keep the order of the pieces: the copies above were appended in
	// place only if no pooled piece preceded them.
	if len(o.ptrs) > 0 && len(o.ptrs) != len(pieces) {
		return o.reorder(bs, pieces)
	}
	return bs
}

// reorder rebuilds bs in the order of pieces when small and large pieces
// are mixed (rare: a small piece at the edge of a span).
func (o *outFrame) reorder(bs mem.BufferSlice, pieces [][]byte) mem.BufferSlice {
	out := make(mem.BufferSlice, 0, len(bs))
	out = append(out, bs[0])
	small := bs[1 : 1+len(pieces)-len(o.ptrs)]
	large := bs[1+len(small):]
	for _, p := range pieces {
		if mem.IsBelowBufferPoolingThreshold(len(p)) {
			out = append(out, small[0])
			small = small[1:]
		} else {
			out = append(out, large[0])
			large = large[1:]
		}
	}
	return out
}

// inFrame is one received frame; for data it keeps gRPC's buffers until
// the ring releases it.
type inFrame struct {
	kind uint8
	f    Frame
	ctl  []byte
	bufs []mem.Buffer
	data [][]byte
	rel  func()
}

var inFrames = sync.Pool{New: func() any { return &inFrame{} }}

func getInFrame() *inFrame {
	o := inFrames.Get().(*inFrame)
	if o.rel == nil {
		o.rel = o.release
	}
	return o
}

func (o *inFrame) release() {
	for _, b := range o.bufs {
		b.Free()
	}
	clear(o.bufs)
	o.bufs = o.bufs[:0]
	clear(o.data)
	o.data = o.data[:0]
	o.f = Frame{}
	o.ctl = o.ctl[:0]
	inFrames.Put(o)
}

var errShortFrame = errors.New("allreduce: frame shorter than its header")

func (o *inFrame) unmarshal(bs mem.BufferSlice) error {
	if bs.Len() < headerBytes {
		return errShortFrame
	}
	var h [headerBytes]byte
	n, skip := 0, 0
	for _, b := range bs {
		d := b.ReadOnlyData()
		c := copy(h[n:], d)
		n += c
		if n == headerBytes {
			break
		}
	}
	skip = headerBytes
	o.kind = h[0]
	o.f = Frame{
		Wire: Wire(h[1]),
		Part: binary.LittleEndian.Uint32(h[4:]),
		Seq:  binary.LittleEndian.Uint64(h[8:]),
		Desc: Desc{
			Coll:  Coll(h[2]),
			Op:    Op(h[3]),
			Count: int64(binary.LittleEndian.Uint64(h[16:])),
			Root:  int32(binary.LittleEndian.Uint32(h[24:])),
			Type:  DType(h[28]),
			Shape: binary.LittleEndian.Uint64(h[32:]),
		},
	}
	if o.kind != kindData {
		o.ctl = o.ctl[:0]
		for _, b := range bs {
			d := b.ReadOnlyData()
			if skip >= len(d) {
				skip -= len(d)
				continue
			}
			o.ctl = append(o.ctl, d[skip:]...)
			skip = 0
		}
		return nil
	}
	for _, b := range bs {
		d := b.ReadOnlyData()
		if skip >= len(d) {
			skip -= len(d)
			continue
		}
		b.Ref()
		o.bufs = append(o.bufs, b)
		o.data = append(o.data, d[skip:])
		skip = 0
	}
	o.f.Data = o.data
	o.f.Release = o.rel
	return nil
}
