package tokens

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// FuzzOpenShard: no file makes OpenShard panic or read past the file; a
// shard it accepts has exactly the tokens its header and size agree on.
func FuzzOpenShard(f *testing.F) {
	var good bytes.Buffer
	if err := WriteShard(&good, []uint16{1, 2, 3, EOT}); err != nil {
		f.Fatal(err)
	}
	f.Add(good.Bytes())
	lie := bytes.Clone(good.Bytes())
	lie[8], lie[9], lie[10], lie[11] = 0xff, 0xff, 0xff, 0x7f // claims 2^31-1 tokens
	f.Add(lie)
	f.Add(good.Bytes()[:HeaderBytes-1])
	f.Add([]byte{})
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "shard.bin")
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := OpenShard(path)
		if err != nil {
			return
		}
		defer s.Close()
		if want := (len(data) - HeaderBytes) / 2; s.Len() != want || HeaderBytes+2*s.Len() != len(data) {
			t.Fatalf("a %d-byte shard opened with %d tokens", len(data), s.Len())
		}
		for i, tok := range s.Tokens() {
			if want := uint16(data[HeaderBytes+2*i]) | uint16(data[HeaderBytes+2*i+1])<<8; tok != want {
				t.Fatalf("token %d is %d, the file says %d", i, tok, want)
			}
		}
	})
}
