package allreduce

import "fmt"

// Op is the reduction applied by AllReduce and ReduceScatter.
type Op uint8

const (
	// Sum adds the buffers of all ranks.
	Sum Op = iota
	// Avg adds the buffers and divides by the world size.
	Avg
)

func (o Op) String() string {
	switch o {
	case Sum:
		return "sum"
	case Avg:
		return "avg"
	}
	return fmt.Sprintf("op(%d)", int(o))
}

// Coll names a collective.
type Coll uint8

const (
	CollAllReduce Coll = iota + 1
	CollReduceScatter
	CollAllGather
	CollBroadcast
	CollBarrier
)

func (c Coll) String() string {
	switch c {
	case CollAllReduce:
		return "all-reduce"
	case CollReduceScatter:
		return "reduce-scatter"
	case CollAllGather:
		return "all-gather"
	case CollBroadcast:
		return "broadcast"
	case CollBarrier:
		return "barrier"
	}
	return fmt.Sprintf("collective(%d)", int(c))
}

// DType is an element type; float32 is the only one so far.
type DType uint8

// Float32 is the element type of every buffer today.
const Float32 DType = 1

// Desc is what a rank says it is doing in a collective. Every frame
// carries it, and a receiver checks it against its own before it touches
// the frame's data: ranks that disagree get an error naming both, never a
// wrong result.
type Desc struct {
	Coll  Coll
	Op    Op
	Type  DType
	Count int64  // elements
	Root  int32  // Broadcast only
	Shape uint64 // which parts of the buffer (bucketed reductions); 0 = all
}

func (d Desc) String() string {
	switch d.Coll {
	case CollBarrier:
		return "a barrier"
	case CollBroadcast:
		return fmt.Sprintf("a broadcast of %d float32 from rank %d", d.Count, d.Root)
	case CollAllGather:
		return fmt.Sprintf("an all-gather of %d float32", d.Count)
	}
	s := fmt.Sprintf("%s (%s) of %d float32", d.Coll, d.Op, d.Count)
	if d.Shape != 0 {
		s += fmt.Sprintf(" in buckets of shape %016x", d.Shape)
	}
	return s
}
