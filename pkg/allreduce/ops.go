package allreduce

import (
	"context"
	"fmt"
)

// AllReduce replaces buf on every rank with the reduction over all ranks.
// Every rank must call it with a buffer of the same length. The result is
// bit-identical on every rank and depends only on the world size and the
// inputs (see BlockElems for the order of the sums).
func (c *Comm) AllReduce(ctx context.Context, buf []float32, op Op) error {
	c.subs = append(c.subs[:0], span{0, len(buf)})
	return c.allReduceSpans(ctx, buf, c.subs[:1:1], op)
}

// allReduceSpans reduces the parts of buf in spans (which must not
// overlap); elements keep their index in buf for the order of the sums.
func (c *Comm) allReduceSpans(ctx context.Context, buf []float32, spans []span, op Op) error {
	if op > Avg {
		return fmt.Errorf("allreduce: unknown op %d", op)
	}
	n := spansLen(spans)
	d := Desc{Coll: CollAllReduce, Op: op, Type: Float32, Count: int64(n), Shape: shapeHash(spans)}
	spans = append([]span(nil), spans...)
	return c.run(ctx, d, func(ctx context.Context) error {
		if c.direct(n) {
			return c.directReduce(ctx, buf, spans, d, op, false)
		}
		w := c.cfg.World
		c.regions = growRegions(c.regions, w)
		for o := range w {
			c.regions[o] = classRegion(c.regions[o][:0], spans, w, (o+1)%w)
		}
		return c.ring(ctx, buf, d, true, true, op)
	})
}

// ReduceScatter reduces buf over all ranks but leaves on each rank r only
// its shard, buf[lo:hi] with lo, hi = Shard(len(buf), r), fully reduced;
// the rest of buf is scratch. The sum for rank r's shard is formed in the
// order r+1, r+2, ..., r.
func (c *Comm) ReduceScatter(ctx context.Context, buf []float32, op Op) error {
	if op > Avg {
		return fmt.Errorf("allreduce: unknown op %d", op)
	}
	n := len(buf)
	d := Desc{Coll: CollReduceScatter, Op: op, Type: Float32, Count: int64(n)}
	return c.run(ctx, d, func(ctx context.Context) error {
		if c.direct(n) {
			return c.directReduce(ctx, buf, nil, d, op, true)
		}
		c.shardRegions(n)
		return c.ring(ctx, buf, d, true, false, op)
	})
}

// AllGather fills buf on every rank from the shards of all ranks: rank r
// contributes buf[Shard(len(buf), r)].
func (c *Comm) AllGather(ctx context.Context, buf []float32) error {
	n := len(buf)
	d := Desc{Coll: CollAllGather, Type: Float32, Count: int64(n)}
	return c.run(ctx, d, func(ctx context.Context) error {
		if c.cfg.Wire == WireBF16 {
			// Peers decode this rank's shard rounded; keep the same.
			lo, hi := shard(n, c.cfg.World, c.cfg.Rank)
			roundBF16(buf[lo:hi])
		}
		if c.direct(n) {
			return c.directGather(ctx, buf, d)
		}
		c.shardRegions(n)
		return c.ring(ctx, buf, d, false, true, Sum)
	})
}

// Broadcast copies root's buf to every rank.
func (c *Comm) Broadcast(ctx context.Context, buf []float32, root int) error {
	if root < 0 || root >= c.cfg.World {
		return fmt.Errorf("allreduce: broadcast root %d is outside a world of %d", root, c.cfg.World)
	}
	n := len(buf)
	d := Desc{Coll: CollBroadcast, Type: Float32, Count: int64(n), Root: int32(root)}
	return c.run(ctx, d, func(ctx context.Context) error {
		if c.direct(n) {
			return c.directBroadcast(ctx, buf, d, root)
		}
		return c.chainBroadcast(ctx, buf, d, root)
	})
}

// Barrier returns once every rank has entered it.
func (c *Comm) Barrier(ctx context.Context) error {
	d := Desc{Coll: CollBarrier}
	return c.run(ctx, d, func(ctx context.Context) error {
		return c.exchange(ctx, d, func(p int) [][]byte { return nil }, func(p int, f *Frame) error {
			if err := c.checkFrame(f, p, d, 0, 0); err != nil {
				return err
			}
			f.Release()
			return nil
		})
	})
}

func (c *Comm) direct(n int) bool {
	return c.cfg.DirectMaxBytes >= 0 && n*4 <= c.cfg.DirectMaxBytes
}

func growRegions(r [][]span, n int) [][]span {
	for len(r) < n {
		r = append(r, nil)
	}
	return r[:n]
}

func (c *Comm) shardRegions(n int) {
	w := c.cfg.World
	c.regions = growRegions(c.regions, w)
	for o := range w {
		lo, hi := shard(n, w, o)
		c.regions[o] = append(c.regions[o][:0], span{lo, hi})
	}
}

// payload returns the frame pieces for buf's spans in the comm's wire
// encoding; bf16 encodes into c.wireBuf, which must not be reallocated
// while frames using it are in flight (callers size it first).
func (c *Comm) payload(dst [][]byte, buf []float32, spans []span) [][]byte {
	if c.cfg.Wire == WireBF16 {
		n := spansLen(spans)
		if n == 0 {
			return dst
		}
		off := len(c.wireBuf)
		c.wireBuf = c.wireBuf[:off+2*n]
		out := c.wireBuf[off : off+2*n]
		p := 0
		for _, s := range spans {
			encodeBF16(out[p:], buf[s.lo:s.hi])
			p += 2 * s.len()
		}
		return append(dst, out)
	}
	for _, s := range spans {
		if s.len() > 0 {
			dst = append(dst, floatBytes(buf[s.lo:s.hi]))
		}
	}
	return dst
}

// reserveWire makes room for n encoded elements without reallocating.
func (c *Comm) reserveWire(n int) {
	c.wireBuf = c.wireBuf[:0]
	if c.cfg.Wire == WireBF16 && cap(c.wireBuf) < 2*n {
		c.wireBuf = make([]byte, 0, 2*n)
	}
}

// cursor walks a frame's pieces.
type cursor struct {
	data [][]byte
	i    int
	off  int
}

// apply adds (or copies) the next len(dst) elements of the cursor into dst.
func (cu *cursor) apply(dst []float32, w Wire, add bool) {
	es := w.elemBytes()
	for len(dst) > 0 {
		for cu.off == len(cu.data[cu.i]) {
			cu.i++
			cu.off = 0
		}
		run := cu.data[cu.i][cu.off:]
		k := min(len(run)/es, len(dst))
		if k == 0 { // an element split between pieces
			var tmp [4]byte
			for b := 0; b < es; b++ {
				for cu.off == len(cu.data[cu.i]) {
					cu.i++
					cu.off = 0
				}
				tmp[b] = cu.data[cu.i][cu.off]
				cu.off++
			}
			applyRun(dst[:1], tmp[:es], w, add)
			dst = dst[1:]
			continue
		}
		applyRun(dst[:k], run[:k*es], w, add)
		dst = dst[k:]
		cu.off += k * es
	}
}

func applyRun(dst []float32, src []byte, w Wire, add bool) {
	switch {
	case w == WireBF16 && add:
		addBF16(dst, src)
	case w == WireBF16:
		copyBF16(dst, src)
	case add:
		addF32(dst, src)
	default:
		copy(floatBytes(dst), src)
	}
}

type ringStep struct {
	send, recv int // owners
	reduce     bool
}

// ring runs the reduce-scatter (rs) and/or all-gather (ag) over
// c.regions. A sender goroutine sends each slice as soon as the receiving
// side (this goroutine) has finished the slice it forwards, so every hop
// is pipelined; the receiving side never blocks on sending, so the ring
// cannot deadlock on flow control.
func (c *Comm) ring(ctx context.Context, buf []float32, d Desc, rs, ag bool, op Op) error {
	w, r := c.cfg.World, c.cfg.Rank
	left, right := mod(r-1, w), mod(r+1, w)
	per := c.cfg.SliceBytes / c.cfg.Wire.elemBytes()
	c.bounds = c.bounds[:0]
	for o := range w {
		var b []int
		if o < cap(c.bounds) {
			b = c.bounds[:o+1][o][:0]
		}
		c.bounds = append(c.bounds, sliceBounds(b, spansLen(c.regions[o]), per))
	}
	c.steps = c.steps[:0]
	if rs {
		for s := 0; s < w-1; s++ {
			c.steps = append(c.steps, ringStep{rsSendOwner(r, s, w), rsRecvOwner(r, s, w), true})
		}
	}
	if ag {
		for s := 0; s < w-1; s++ {
			c.steps = append(c.steps, ringStep{agSendOwner(r, s, w), agRecvOwner(r, s, w), false})
		}
	}
	steps := c.steps
	nslices := func(o int) int { return len(c.bounds[o]) - 1 }
	sendElems := 0
	for _, st := range steps {
		sendElems += spansLen(c.regions[st.send])
	}
	c.reserveWire(sendElems)
	c.pieces = c.pieces[:0]

	relBase := c.sent[right].n.Load()
	progBase := c.progress.n.Load()
	bctx, bcancel := context.WithCancel(ctx)
	defer bcancel()
	sendErr := make(chan error, 1)
	totalSent := 0
	for _, st := range steps {
		totalSent += nslices(st.send)
	}
	// The sender is stopped by a channel, not by cancelling its context:
	// cancelling a send in progress breaks the stream, and a peer that
	// sees it break before it hears why would blame this rank.
	stop := make(chan struct{})
	go func() {
		sendErr <- c.ringSend(c.hard, stop, buf, d, steps, right, progBase, nslices)
	}()
	err := c.ringRecv(bctx, buf, d, steps, left, right, rs && ag, op, relBase, progBase, nslices)
	if err != nil {
		if len(c.takeNotices()) == 0 {
			c.notifyLocal(err)
		}
		close(stop)
	}
	if serr := <-sendErr; err == nil {
		err = serr
	}
	if err != nil {
		return err
	}
	return c.waitSent(ctx, right, relBase+int64(totalSent))
}

func (c *Comm) ringSend(ctx context.Context, stop <-chan struct{}, buf []float32, d Desc, steps []ringStep, right int, progBase int64, nslices func(int) int) error {
	part := 0
	recvBefore := 0 // frames received in the steps before t-1
	var subs []span
	for t, st := range steps {
		region, b := c.regions[st.send], c.bounds[st.send]
		for j := 0; j < nslices(st.send); j++ {
			if t > 0 {
				if err := c.progress.wait(ctx, stop, progBase+int64(recvBefore+j+1)); err != nil {
					return err
				}
			}
			subs = subSpans(subs[:0], region, b[j], b[j+1])
			start := len(c.pieces)
			c.pieces = c.payload(c.pieces, buf, subs)
			f := Frame{Seq: c.seq, Part: uint32(part), Desc: d, Wire: c.cfg.Wire,
				Data: c.pieces[start:len(c.pieces):len(c.pieces)], Release: c.relFns[right]}
			select {
			case <-stop:
				return errStopped
			default:
			}
			if err := c.t.Send(ctx, right, f); err != nil {
				return c.transportError("sending to", right, err)
			}
			part++
		}
		if t > 0 {
			recvBefore += nslices(steps[t-1].recv)
		}
	}
	return nil
}

func (c *Comm) ringRecv(ctx context.Context, buf []float32, d Desc, steps []ringStep, left, right int, allReduce bool, op Op, relBase, progBase int64, nslices func(int) int) error {
	w := c.cfg.World
	part := 0
	sentBefore := make([]int, len(steps)+1) // frames sent before step t
	for t, st := range steps {
		sentBefore[t+1] = sentBefore[t] + nslices(st.send)
	}
	es := c.cfg.Wire.elemBytes()
	var subs []span
	for t, st := range steps {
		region, b := c.regions[st.recv], c.bounds[st.recv]
		for j := 0; j < nslices(st.recv); j++ {
			c.waitingOn.Store(int32(left))
			f, err := c.t.Recv(ctx, left)
			if err != nil {
				return c.transportError("receiving from", left, err)
			}
			if err := c.checkFrame(&f, left, d, part, es*(b[j+1]-b[j])); err != nil {
				f.Release()
				return err
			}
			subs = subSpans(subs[:0], region, b[j], b[j+1])
			if allReduce && !st.reduce {
				// This slice overwrites one this rank sent in the
				// reduce-scatter; the transport must be done reading it.
				rsStep := t - (w - 1)
				if err := c.waitSent(ctx, right, relBase+int64(sentBefore[rsStep]+j+1)); err != nil {
					f.Release()
					return err
				}
			}
			cu := cursor{data: f.Data}
			for _, s := range subs {
				cu.apply(buf[s.lo:s.hi], f.Wire, st.reduce)
			}
			f.Release()
			if st.reduce && t == w-2 {
				// The last reduce-scatter step: this rank now owns the
				// final values of the slice.
				for _, s := range subs {
					if op == Avg {
						divF32(buf[s.lo:s.hi], float32(w))
					}
					if allReduce && c.cfg.Wire == WireBF16 {
						roundBF16(buf[s.lo:s.hi])
					}
				}
			}
			part++
			c.progress.advance()
		}
	}
	return nil
}

// exchange sends every peer the pieces out(p) and hands every peer's frame
// to in; frames go to r+1, r+2, ... and come from r-1, r-2, ... so that
// the ring's load is spread. It returns once the transport is done with
// what was sent.
func (c *Comm) exchange(ctx context.Context, d Desc, out func(p int) [][]byte, in func(p int, f *Frame) error) error {
	base, err := c.exchangeNoWait(ctx, d, out, in)
	if err != nil {
		return err
	}
	return c.waitExchanged(ctx, base)
}

// waitExchanged waits until the transport is done with one frame sent to
// every peer after the release counts in base.
func (c *Comm) waitExchanged(ctx context.Context, base []int64) error {
	w, r := c.cfg.World, c.cfg.Rank
	for k := 1; k < w; k++ {
		p := (r + k) % w
		if err := c.waitSent(ctx, p, base[p]+1); err != nil {
			return err
		}
	}
	return nil
}

// exchangeNoWait is exchange without the final wait; it returns the
// release counts to wait for.
func (c *Comm) exchangeNoWait(ctx context.Context, d Desc, out func(p int) [][]byte, in func(p int, f *Frame) error) ([]int64, error) {
	w, r := c.cfg.World, c.cfg.Rank
	var bases [64]int64
	base := bases[:0]
	for p := range w {
		base = append(base, c.sent[p].n.Load())
	}
	for k := 1; k < w; k++ {
		p := (r + k) % w
		f := Frame{Seq: c.seq, Desc: d, Wire: c.cfg.Wire, Data: out(p), Release: c.relFns[p]}
		if err := c.t.Send(ctx, p, f); err != nil {
			return nil, c.transportError("sending to", p, err)
		}
	}
	for k := 1; k < w; k++ {
		p := mod(r-k, w)
		c.waitingOn.Store(int32(p))
		f, err := c.t.Recv(ctx, p)
		if err != nil {
			return nil, c.transportError("receiving from", p, err)
		}
		if err := in(p, &f); err != nil {
			f.Release()
			return nil, err
		}
	}
	return base, nil
}

// directReduce is the small-message all-reduce (spans != nil) or
// reduce-scatter (scatter): every rank sends its data to every peer in
// one round, and each rank adds in the same order the ring would.
func (c *Comm) directReduce(ctx context.Context, buf []float32, spans []span, d Desc, op Op, scatter bool) error {
	w, r := c.cfg.World, c.cfg.Rank
	es := c.cfg.Wire.elemBytes()
	if scatter {
		c.shardRegions(len(buf))
	}
	c.reserveWire(spansLen(spans) + len(buf))
	c.pieces = c.pieces[:0]
	var all [][]byte
	if !scatter {
		all = c.payload(nil, buf, spans)
	}
	c.rx = append(c.rx[:0], make([]Frame, w)...)
	want := spansLen(spans)
	if scatter {
		want = spansLen(c.regions[r])
	}
	base, err := c.exchangeNoWait(ctx, d, func(p int) [][]byte {
		if !scatter {
			return all
		}
		start := len(c.pieces)
		c.pieces = c.payload(c.pieces, buf, c.regions[p])
		return c.pieces[start:len(c.pieces):len(c.pieces)]
	}, func(p int, f *Frame) error {
		if err := c.checkFrame(f, p, d, 0, es*want); err != nil {
			return err
		}
		c.rx[p] = *f
		return nil
	})
	releaseRx := func() {
		for p := range c.rx {
			if c.rx[p].Release != nil {
				c.rx[p].Release()
			}
			c.rx[p] = Frame{}
		}
	}
	if err != nil {
		releaseRx()
		return err
	}
	var cursors [64]cursor
	cus := cursors[:0]
	for p := range w {
		cus = append(cus, cursor{data: c.rx[p].Data})
	}
	mine := spans
	if scatter {
		mine = c.regions[r]
	}
	// The sums go to a scratch buffer first: the peers may still be
	// reading this rank's buffer (the in-memory transport shares it).
	if cap(c.tmp) < want+BlockElems {
		c.tmp = make([]float32, want+BlockElems)
	}
	out, own := c.tmp[:want], c.tmp[want:want+BlockElems]
	pos := 0
	for _, s := range mine {
		for lo := s.lo; lo < s.hi; {
			hi := min(s.hi, (lo/BlockElems+1)*BlockElems)
			first := blockClass(lo, w)
			if scatter {
				first = (r + 1) % w
			}
			acc := out[pos : pos+hi-lo]
			x := buf[lo:hi]
			if c.cfg.Wire == WireBF16 && !scatter {
				// Peers see this rank's values rounded: use the same.
				x = own[:hi-lo]
				copy(x, buf[lo:hi])
				roundBF16(x)
			}
			for k := range w {
				q := (first + k) % w
				switch {
				case q == r && k == 0:
					copy(acc, x)
				case q == r:
					addF32(acc, floatBytes(x))
				default:
					cus[q].apply(acc, c.cfg.Wire, k > 0)
				}
			}
			pos += hi - lo
			lo = hi
		}
	}
	releaseRx()
	if err := c.waitExchanged(ctx, base); err != nil {
		return err
	}
	pos = 0
	for _, s := range mine {
		copy(buf[s.lo:s.hi], out[pos:pos+s.len()])
		if op == Avg {
			divF32(buf[s.lo:s.hi], float32(w))
		}
		pos += s.len()
	}
	return nil
}

func (c *Comm) directGather(ctx context.Context, buf []float32, d Desc) error {
	w, r := c.cfg.World, c.cfg.Rank
	c.shardRegions(len(buf))
	lo, hi := shard(len(buf), w, r)
	c.reserveWire(hi - lo)
	mine := c.payload(nil, buf, c.regions[r])
	es := c.cfg.Wire.elemBytes()
	err := c.exchange(ctx, d, func(int) [][]byte { return mine }, func(p int, f *Frame) error {
		s := c.regions[p][0]
		if err := c.checkFrame(f, p, d, 0, es*s.len()); err != nil {
			return err
		}
		cu := cursor{data: f.Data}
		cu.apply(buf[s.lo:s.hi], f.Wire, false)
		f.Release()
		return nil
	})
	return err
}

func (c *Comm) directBroadcast(ctx context.Context, buf []float32, d Desc, root int) error {
	r := c.cfg.Rank
	es := c.cfg.Wire.elemBytes()
	if r == root {
		c.reserveWire(len(buf))
		all := c.payload(nil, buf, []span{{0, len(buf)}})
		base := make([]int64, c.cfg.World)
		for p := range base {
			base[p] = c.sent[p].n.Load()
		}
		for p := range c.cfg.World {
			if p == r {
				continue
			}
			f := Frame{Seq: c.seq, Desc: d, Wire: c.cfg.Wire, Data: all, Release: c.relFns[p]}
			if err := c.t.Send(ctx, p, f); err != nil {
				return c.transportError("sending to", p, err)
			}
		}
		for p := range c.cfg.World {
			if p != r {
				if err := c.waitSent(ctx, p, base[p]+1); err != nil {
					return err
				}
			}
		}
		if c.cfg.Wire == WireBF16 {
			roundBF16(buf)
		}
		return nil
	}
	c.waitingOn.Store(int32(root))
	f, err := c.t.Recv(ctx, root)
	if err != nil {
		return c.transportError("receiving from", root, err)
	}
	defer f.Release()
	if err := c.checkFrame(&f, root, d, 0, es*len(buf)); err != nil {
		return err
	}
	cu := cursor{data: f.Data}
	cu.apply(buf, f.Wire, false)
	return nil
}

// chainBroadcast pipelines buf from root around the ring: each rank copies
// a slice and forwards it at once.
func (c *Comm) chainBroadcast(ctx context.Context, buf []float32, d Desc, root int) error {
	w, r := c.cfg.World, c.cfg.Rank
	left, right := mod(r-1, w), mod(r+1, w)
	pos := mod(r-root, w)
	per := c.cfg.SliceBytes / c.cfg.Wire.elemBytes()
	bounds := sliceBounds(nil, len(buf), per)
	c.reserveWire(len(buf))
	c.pieces = c.pieces[:0]
	relBase := c.sent[right].n.Load()
	es := c.cfg.Wire.elemBytes()
	sent := 0
	for j := 0; j+1 < len(bounds); j++ {
		lo, hi := bounds[j], bounds[j+1]
		if pos > 0 {
			c.waitingOn.Store(int32(left))
			f, err := c.t.Recv(ctx, left)
			if err != nil {
				return c.transportError("receiving from", left, err)
			}
			if err := c.checkFrame(&f, left, d, j, es*(hi-lo)); err != nil {
				f.Release()
				return err
			}
			cu := cursor{data: f.Data}
			if pos < w-1 && c.cfg.Wire == WireBF16 {
				// Forward the received bytes as they are.
				off := len(c.wireBuf)
				c.wireBuf = c.wireBuf[:off+2*(hi-lo)]
				for _, p := range f.Data {
					off += copy(c.wireBuf[off:], p)
				}
			}
			cu.apply(buf[lo:hi], f.Wire, false)
			f.Release()
		}
		if pos < w-1 {
			var data [][]byte
			if c.cfg.Wire == WireBF16 && pos > 0 {
				end := len(c.wireBuf)
				data = [][]byte{c.wireBuf[end-2*(hi-lo) : end]}
			} else {
				start := len(c.pieces)
				c.pieces = c.payload(c.pieces, buf, []span{{lo, hi}})
				data = c.pieces[start:len(c.pieces):len(c.pieces)]
			}
			f := Frame{Seq: c.seq, Part: uint32(j), Desc: d, Wire: c.cfg.Wire, Data: data, Release: c.relFns[right]}
			if err := c.t.Send(ctx, right, f); err != nil {
				return c.transportError("sending to", right, err)
			}
			sent++
		}
	}
	if err := c.waitSent(ctx, right, relBase+int64(sent)); err != nil {
		return err
	}
	if pos == 0 && c.cfg.Wire == WireBF16 {
		roundBF16(buf)
	}
	return nil
}
