package export_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/ringmaster/ringmaster/pkg/export"
)

// FuzzReadSafetensors: a safetensors file is outside input (a user's
// weights, a file copied from elsewhere); whatever its bytes, reading it
// returns tensors whose data agree with their shapes, or an error, and
// never allocates more than the file holds.
func FuzzReadSafetensors(f *testing.F) {
	var buf bytes.Buffer
	w := &export.Weights{Tensors: []export.Tensor{{Name: "a", Shape: []int{2, 3}, Data: []float32{1, 2, 3, 4, 5, 6}}, {Name: "b", Shape: []int{1}, Data: []float32{7}}},
		Job: "j", Step: 3}
	if err := w.WriteSafetensors(&buf); err != nil {
		f.Fatal(err)
	}
	valid := buf.Bytes()
	f.Add(valid)
	f.Add(valid[:len(valid)-3])
	huge := append([]byte(nil), valid...)
	binary.LittleEndian.PutUint64(huge, 1<<62)
	f.Add(huge)
	f.Add([]byte(`{"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		tensors, _, err := export.ReadSafetensors(b)
		if err != nil {
			return
		}
		total := 0
		for _, tn := range tensors {
			n := 1
			for _, d := range tn.Shape {
				if d < 0 {
					t.Fatalf("tensor %s has shape %v", tn.Name, tn.Shape)
				}
				n *= d
			}
			if n != len(tn.Data) {
				t.Fatalf("tensor %s: shape %v holds %d values, data %d", tn.Name, tn.Shape, n, len(tn.Data))
			}
			total += 4 * n
		}
		if total > len(b) {
			t.Fatalf("%d bytes of tensors from a file of %d", total, len(b))
		}
	})
}
