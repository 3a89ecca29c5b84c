package tokens

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestShardRoundTripAndHeader(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.bin")
	toks := []uint16{1, 2, 300, 65535, 0}
	if err := WriteShardFile(p, toks); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	if len(b) != HeaderBytes+2*len(toks) {
		t.Fatalf("file is %d bytes", len(b))
	}
	// llm.c's header: magic, version, count as little-endian int32.
	if !bytes.Equal(b[:12], []byte{0x88, 0xd8, 0x34, 0x01, 1, 0, 0, 0, 5, 0, 0, 0}) {
		t.Errorf("header bytes % x", b[:12])
	}
	s, err := OpenShard(p)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if !slices.Equal(s.Tokens(), toks) {
		t.Errorf("tokens %v, want %v", s.Tokens(), toks)
	}
}

func TestOpenShardRejectsDamage(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "a.bin")
	if err := WriteShardFile(p, []uint16{1, 2, 3}); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(p)
	for name, c := range map[string]struct {
		data []byte
		want string
	}{
		"truncated": {b[:len(b)-1], "header says 3 tokens"},
		"magic":     {append([]byte{9, 9, 9, 9}, b[4:]...), "magic"},
		"short":     {b[:100], "shorter than"},
	} {
		q := filepath.Join(dir, name)
		os.WriteFile(q, c.data, 0o644)
		if _, err := OpenShard(q); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error containing %q", name, err, c.want)
		}
	}
}

func TestDatasetSamplesPerShard(t *testing.T) {
	dir := t.TempDir()
	// 0..9 in shard 1, 10..16 in shard 2.
	var a, b []uint16
	for i := range 10 {
		a = append(a, uint16(i))
	}
	for i := 10; i < 17; i++ {
		b = append(b, uint16(i))
	}
	WriteShardFile(filepath.Join(dir, "x_train_000001.bin"), a)
	WriteShardFile(filepath.Join(dir, "x_train_000002.bin"), b)
	d, err := Open(filepath.Join(dir, "x_train_*.bin"), 4)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	// T=4: shard 1 (10 tokens) holds samples at 0 and 4; shard 2 (7
	// tokens) one at 10.
	if d.Len() != 3 || d.Tokens() != 17 || !slices.Equal(d.BlockSizes(), []int{2, 1}) {
		t.Fatalf("Len %d Tokens %d blocks %v, want 3, 17, [2 1]", d.Len(), d.Tokens(), d.BlockSizes())
	}
	got := make([]int32, 5)
	d.Sample(2, got)
	if !slices.Equal(got, []int32{10, 11, 12, 13, 14}) {
		t.Errorf("sample 2 = %v", got)
	}
	x, y := make([]int32, 8), make([]int32, 8)
	if err := d.Batch(context.Background(), []int32{1, 0}, x, y); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(x, []int32{4, 5, 6, 7, 0, 1, 2, 3}) || !slices.Equal(y, []int32{5, 6, 7, 8, 1, 2, 3, 4}) {
		t.Errorf("batch x=%v y=%v", x, y)
	}
	if err := d.Batch(context.Background(), []int32{3}, x, y); err == nil || !strings.Contains(err.Error(), "sample 3 of") {
		t.Errorf("sample out of range: %v", err)
	}
	if err := d.Batch(context.Background(), []int32{0, 1}, x[:7], y); err == nil {
		t.Error("a short x was accepted")
	}
	if st := d.Stats(); st.Batches != 1 || st.Waits != 0 {
		t.Errorf("stats %+v, want 1 batch and no wait", st)
	}
	if _, err := Open(filepath.Join(dir, "nothing*"), 4); err == nil || !strings.Contains(err.Error(), "prepare") {
		t.Errorf("no shards: %v", err)
	}
	if _, err := Open(filepath.Join(dir, "x_train_*.bin"), 20); err == nil {
		t.Error("a sequence longer than every shard was accepted")
	}
}

func TestPrepare(t *testing.T) {
	in := t.TempDir()
	os.MkdirAll(filepath.Join(in, "sub"), 0o755)
	os.WriteFile(filepath.Join(in, "b.go"), []byte("package b\n"), 0o644)
	os.WriteFile(filepath.Join(in, "sub", "a.go"), []byte("package a\n"), 0o644)
	os.WriteFile(filepath.Join(in, "a_test.go"), []byte("skip"), 0o644)
	os.WriteFile(filepath.Join(in, "notes.txt"), []byte("skip"), 0o644)
	out := t.TempDir()
	res, err := Prepare(context.Background(), PrepareOptions{Inputs: []string{in}, Include: []string{"*.go"}, Exclude: []string{"*_test.go"},
		OutDir: out, Name: "go", ShardTokens: 8, ValTokens: 5})
	if err != nil {
		t.Fatal(err)
	}
	// Files in lexical path order: b.go, sub/a.go; each preceded by EOT.
	want := append(append([]uint16{EOT}, bytesToTokens("package b\n")...), append([]uint16{EOT}, bytesToTokens("package a\n")...)...)
	if res.Files != 2 || res.Tokens != len(want) || res.ValShard == "" || len(res.TrainShards) != 3 {
		t.Fatalf("result %+v (want 2 files, %d tokens, a val shard of 5 and train shards of 8, 8 and 1)", res, len(want))
	}
	var all []uint16
	for _, p := range append([]string{res.ValShard}, res.TrainShards...) {
		s, err := OpenShard(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, s.Tokens()...)
		s.Close()
	}
	if !slices.Equal(all, want) {
		t.Errorf("tokens %v, want %v", all, want)
	}
}

func bytesToTokens(s string) []uint16 {
	out := make([]uint16, len(s))
	for i := range len(s) {
		out[i] = uint16(s[i])
	}
	return out
}

// Shuffled preparation takes the documents in a seeded order: the same
// seed gives the same shards, another seed others, and every document's
// bytes are there either way.
func TestPrepareShuffle(t *testing.T) {
	in := t.TempDir()
	for i := range 20 {
		if err := os.WriteFile(filepath.Join(in, fmt.Sprintf("f%02d.txt", i)), []byte(strings.Repeat(string(rune('a'+i)), 10)), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	read := func(shuffle bool, seed uint64) []uint16 {
		out := t.TempDir()
		res, err := Prepare(context.Background(), PrepareOptions{Inputs: []string{in}, OutDir: out, ShardTokens: 1 << 10, Shuffle: shuffle, Seed: seed})
		if err != nil {
			t.Fatal(err)
		}
		s, err := OpenShard(res.TrainShards[0])
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		return append([]uint16(nil), s.Tokens()...)
	}
	sorted, a, a2, b := read(false, 0), read(true, 1), read(true, 1), read(true, 2)
	if !slices.Equal(a, a2) {
		t.Error("the same seed gave different shards")
	}
	if slices.Equal(a, sorted) || slices.Equal(a, b) {
		t.Error("shuffled shards equal the sorted ones or another seed's")
	}
	count := func(toks []uint16) map[uint16]int {
		m := map[uint16]int{}
		for _, tok := range toks {
			m[tok]++
		}
		return m
	}
	if !maps.Equal(count(a), count(sorted)) {
		t.Error("shuffling changed the tokens, not just their documents' order")
	}
}
