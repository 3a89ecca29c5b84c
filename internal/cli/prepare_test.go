package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

// TestPrepareUpload prepares a small corpus, uploads it to a file store and
// to versitygw, and reads it back through tokens.OpenSource from where the
// command said it went.
func TestPrepareUpload(t *testing.T) {
	in := t.TempDir()
	for i, text := range []string{"package a\n\nfunc A() {}\n", "package b\n\nvar B = 1\n", "package c\n"} {
		os.WriteFile(filepath.Join(in, string(rune('a'+i))+".go"), []byte(strings.Repeat(text, 20)), 0o644)
	}
	srv := versitygw.Start(t, "corpora")
	for _, kv := range versitygw.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	for name, store := range map[string]string{
		"file": "file://" + t.TempDir() + "/sets",
		"s3":   srv.URL("corpora", "sets"),
	} {
		t.Run(name, func(t *testing.T) {
			out := t.TempDir()
			cmd := newPrepareCommand()
			var stdout bytes.Buffer
			cmd.SetOut(&stdout)
			cmd.SetArgs([]string{"--input", in, "--out", out, "--name", "demo", "--shard-tokens", "256", "--val-tokens", "100", "--upload", store})
			if err := cmd.ExecuteContext(context.Background()); err != nil {
				t.Fatal(err)
			}
			t.Logf("output:\n%s", stdout.String())
			var valURL, trainURL string
			for _, line := range strings.Split(stdout.String(), "\n") {
				if v, ok := strings.CutPrefix(line, "uploaded validation: "); ok {
					valURL = v
				}
				if _, v, ok := strings.Cut(line, "uploaded training:   "); ok {
					_, trainURL, _ = strings.Cut(v, " shards, ")
				}
			}
			if !strings.HasSuffix(strings.Split(valURL, "?")[0], "/sets/demo_val_000000.bin") || trainURL == "" {
				t.Fatalf("the output does not say where the shards went: val %q, train %q", valURL, trainURL)
			}
			// What was uploaded reads back token for token.
			local, err := tokens.Open(filepath.Join(out, "demo_train_*.bin"), 8)
			if err != nil {
				t.Fatal(err)
			}
			defer local.Close()
			remote, err := tokens.OpenSource(context.Background(), trainURL, tokens.SourceOptions{T: 8})
			if err != nil {
				t.Fatal(err)
			}
			defer remote.Close()
			if remote.Tokens() != local.Tokens() || !slices.Equal(remote.BlockSizes(), local.BlockSizes()) {
				t.Fatalf("uploaded: %d tokens in blocks %v; prepared: %d in %v", remote.Tokens(), remote.BlockSizes(), local.Tokens(), local.BlockSizes())
			}
			idx := []int32{0, int32(local.Len() - 1)}
			x1, y1, x2, y2 := make([]int32, 16), make([]int32, 16), make([]int32, 16), make([]int32, 16)
			if err := local.Batch(context.Background(), idx, x1, y1); err != nil {
				t.Fatal(err)
			}
			if err := remote.Batch(context.Background(), idx, x2, y2); err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(x1, x2) || !slices.Equal(y1, y2) {
				t.Errorf("uploaded shards read back differently")
			}
		})
	}

	// A second run with fewer shards leaves objects the glob still
	// matches: the command says so.
	store := "file://" + t.TempDir()
	var stdout bytes.Buffer
	for _, size := range []string{"256", "1024"} {
		cmd := newPrepareCommand()
		stdout.Reset()
		cmd.SetOut(&stdout)
		cmd.SetArgs([]string{"--input", in, "--out", t.TempDir(), "--name", "demo", "--shard-tokens", size, "--val-tokens", "0", "--upload", store})
		if err := cmd.ExecuteContext(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if !strings.Contains(stdout.String(), "warning: 3 objects from an earlier run") {
		t.Errorf("no warning about the first run's extra shards:\n%s", stdout.String())
	}

	cmd := newPrepareCommand()
	cmd.SetOut(&bytes.Buffer{})
	cmd.SetArgs([]string{"--input", in, "--out", t.TempDir(), "--upload", "ftp://x/y"})
	if err := cmd.ExecuteContext(context.Background()); err == nil || !strings.Contains(err.Error(), "--upload") {
		t.Errorf("a bad --upload URL: %v", err)
	}
}
