package allreduce

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"testing"
)

// What one hop costs: rank 0 streams 256 KiB frames to rank 1, which adds
// each into a buffer, as a reduce-scatter hop does. The gRPC transport
// (the real one) against the floor for any transport over TCP: a raw
// loopback socket, writing the caller's memory (net.Buffers, writev) and
// reading straight into one reused buffer, which is what gloo does. Both
// ends run in this process, so MB/s is inversely the CPU time per byte of
// sender and receiver together.
//
//	go test -run '^$' -bench BenchmarkHop -count 6 ./pkg/allreduce/

const hopFrameBytes = DefaultSliceBytes

func BenchmarkHopGRPC(b *testing.B) {
	nodes := startNodes(b, 2)
	r := dialRing(b, nodes, "bench", 1, Config{})
	defer r.close()
	src := make([]float32, hopFrameBytes/4)
	dst := make([]float32, hopFrameBytes/4)
	tx, rx := r.comms[0].t, r.comms[1].t
	ctx := context.Background()
	sent := make(chan struct{}, 64)
	b.SetBytes(hopFrameBytes)
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		for i := 0; i < b.N; i++ {
			f := Frame{Seq: 1, Desc: Desc{Coll: CollAllReduce}, Data: [][]byte{floatBytes(src)}, Release: func() { sent <- struct{}{} }}
			if err := tx.Send(ctx, 1, f); err != nil {
				errc <- err
				return
			}
			if i >= 32 {
				<-sent // keep at most 32 frames in flight
			}
		}
		errc <- nil
	}()
	for i := 0; i < b.N; i++ {
		f, err := rx.Recv(ctx, 0)
		if err != nil {
			b.Fatal(err)
		}
		cu := cursor{data: f.Data}
		cu.apply(dst, WireF32, true)
		f.Release()
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkHopRawTCP(b *testing.B) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := lis.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	out, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		b.Fatal(err)
	}
	defer out.Close()
	in, ok := <-accepted
	if !ok {
		b.Fatal("accept failed")
	}
	defer in.Close()
	src := make([]float32, hopFrameBytes/4)
	dst := make([]float32, hopFrameBytes/4)
	rbuf := make([]byte, hopFrameBytes)
	b.SetBytes(hopFrameBytes)
	b.ResetTimer()
	errc := make(chan error, 1)
	go func() {
		var hdr [headerBytes]byte
		for i := 0; i < b.N; i++ {
			binary.LittleEndian.PutUint64(hdr[16:], hopFrameBytes/4)
			bufs := net.Buffers{hdr[:], floatBytes(src)}
			if _, err := bufs.WriteTo(out); err != nil {
				errc <- err
				return
			}
		}
		errc <- nil
	}()
	var hdr [headerBytes]byte
	for i := 0; i < b.N; i++ {
		if _, err := io.ReadFull(in, hdr[:]); err != nil {
			b.Fatal(err)
		}
		n := int(binary.LittleEndian.Uint64(hdr[16:]))
		if n != len(dst) {
			b.Fatal(fmt.Errorf("frame of %d elements", n))
		}
		if _, err := io.ReadFull(in, rbuf); err != nil {
			b.Fatal(err)
		}
		addF32(dst, rbuf)
	}
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
}
