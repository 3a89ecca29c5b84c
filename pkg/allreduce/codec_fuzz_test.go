package allreduce

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/mem"
)

// FuzzFrameDecode: any bytes, split into any pieces as gRPC may hand them
// over, decode without a panic into a frame whose header matches what an
// encoder would write and whose payload is exactly the bytes after it.
func FuzzFrameDecode(f *testing.F) {
	hdr := make([]byte, headerBytes)
	putHeader(hdr, kindData, &Frame{Part: 1, Seq: 9, Desc: Desc{Count: 4, Type: Float32}})
	f.Add(append(bytes.Clone(hdr), make([]byte, 16)...), uint8(7))
	putHeader(hdr, kindHello, &Frame{})
	f.Add(append(bytes.Clone(hdr), 0x08, 0x01), uint8(41))
	f.Add([]byte{kindAbort}, uint8(0))
	f.Add(make([]byte, headerBytes), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, cut uint8) {
		// Split the frame into pieces of cut+1 bytes.
		var bs mem.BufferSlice
		step := int(cut) + 1
		for i := 0; i < len(data); i += step {
			bs = append(bs, mem.SliceBuffer(data[i:min(i+step, len(data))]))
		}
		o := &inFrame{}
		o.rel = func() {}
		err := o.unmarshal(bs)
		if len(data) < headerBytes {
			if err == nil {
				t.Fatalf("a %d-byte frame decoded", len(data))
			}
			return
		}
		if err != nil {
			t.Fatalf("a frame with a full header refused: %v", err)
		}
		want := make([]byte, headerBytes)
		putHeader(want, o.kind, &o.f)
		// Padding bytes are not read back.
		got := bytes.Clone(data[:headerBytes])
		got[29], got[30], got[31] = 0, 0, 0
		if !bytes.Equal(want, got) {
			t.Fatalf("header %x decoded as %x", got, want)
		}
		var payload []byte
		if o.kind == kindData {
			for _, d := range o.f.Data {
				payload = append(payload, d...)
			}
		} else {
			payload = o.ctl
		}
		if !bytes.Equal(payload, data[headerBytes:]) && !(len(payload) == 0 && len(data) == headerBytes) {
			t.Fatalf("payload of %d bytes decoded as %d bytes", len(data)-headerBytes, len(payload))
		}
	})
}
