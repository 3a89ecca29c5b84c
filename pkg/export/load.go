package export

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"go.uber.org/zap"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// LoadCheckpoint loads, verifying sizes and checksums, the checkpoint that
// raw names: either one checkpoint's directory as pkg/checkpoint names it
// (file:///ckpt/JOB/step-000000000100, s3://bucket/prefix/JOB/step-...?endpoint=...)
// or the directory that holds a job's checkpoints (file:///ckpt/JOB), in
// which case step chooses one and step < 0 means the newest valid one (a
// corrupt newer one is skipped with a warning on log). A step in the URL
// and a different step >= 0 are refused.
func LoadCheckpoint(ctx context.Context, raw string, step int64, log *zap.Logger) (*checkpoint.State, checkpoint.Info, error) {
	if err := checkpoint.CheckURL(raw); err != nil {
		return nil, checkpoint.Info{}, err
	}
	root, urlStep := checkpoint.SplitCheckpointURL(raw)
	if urlStep >= 0 {
		if step >= 0 && step != urlStep {
			return nil, checkpoint.Info{}, fmt.Errorf("export: %s is the checkpoint of step %d, but step %d was asked for; drop one of them", raw, urlStep, step)
		}
		step = urlStep
	}
	// A file store creates its directory when opened; a typo must not.
	if u, err := url.Parse(root); err == nil && u.Scheme == "file" {
		if fi, err := os.Stat(u.Path); err != nil || !fi.IsDir() {
			return nil, checkpoint.Info{}, fmt.Errorf("export: %s: no such directory; give a checkpoint URL as 'coordinator checkpoints JOB' prints it", root)
		}
	}
	store, err := checkpoint.Open(root)
	if err != nil {
		return nil, checkpoint.Info{}, err
	}
	mgr := checkpoint.NewManager(store, "", 1, log)
	if step >= 0 {
		st, info, err := mgr.LoadStep(ctx, step)
		if err != nil {
			return nil, info, fmt.Errorf("export: %w", err)
		}
		return st, info, nil
	}
	st, info, err := mgr.Load(ctx, -1)
	if errors.Is(err, checkpoint.ErrNoCheckpoint) {
		return nil, info, fmt.Errorf("export: no valid checkpoint under %s; name a job's checkpoint directory, or one checkpoint (.../step-NNNNNNNNNNNN)", mgr.URL())
	}
	if err != nil {
		return nil, info, fmt.Errorf("export: %w", err)
	}
	return st, info, nil
}

// WriteFile writes the weights as a safetensors file at path, which
// appears whole or not at all: the data goes to a temporary file beside
// it, is synced, and is renamed into place.
func WriteFile(path string, w *Weights) (err error) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	f, err := os.CreateTemp(dir, "."+base+".tmp-*")
	if err != nil {
		return fmt.Errorf("export: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	bw := bufio.NewWriterSize(f, 1<<20)
	if err := w.WriteSafetensors(bw); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("export: writing %s: %w", path, err)
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("export: writing %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("export: writing %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("export: %w", err)
	}
	return nil
}
