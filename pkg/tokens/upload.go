package tokens

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sync/errgroup"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// uploadPart is the part size of shard uploads (S3 needs at least 5 MiB
// for all parts but the last).
const uploadPart = 8 << 20

// UploadShards copies shard files to st, each under its base name, in
// parts written in parallel, and returns the objects' URLs. Each file's
// header is checked first, so that nothing but token shards goes up. An
// object of the same name is replaced.
func UploadShards(ctx context.Context, st checkpoint.Store, paths []string) ([]string, error) {
	var urls []string
	for _, p := range paths {
		if err := uploadShard(ctx, st, p); err != nil {
			return urls, err
		}
		urls = append(urls, checkpoint.ObjectURL(st, filepath.Base(p)))
	}
	return urls, nil
}

func uploadShard(ctx context.Context, st checkpoint.Store, path string) (err error) {
	s, err := OpenShard(path)
	if err != nil {
		return err
	}
	s.Close()
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	key := filepath.Base(path)
	up, err := st.Create(ctx, key, fi.Size(), uploadPart, checkpoint.Condition{})
	if err != nil {
		return fmt.Errorf("tokens: uploading %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			_ = up.Abort(context.WithoutCancel(ctx))
		}
	}()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(fetchParallel)
	for n, off := 1, int64(0); off < fi.Size(); n, off = n+1, off+uploadPart {
		size := min(uploadPart, fi.Size()-off)
		g.Go(func() error {
			buf := make([]byte, size)
			if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
				return err
			}
			return up.WritePart(gctx, n, buf)
		})
	}
	if err := g.Wait(); err != nil {
		return fmt.Errorf("tokens: uploading %s: %w", path, err)
	}
	if err := up.Complete(ctx); err != nil {
		return fmt.Errorf("tokens: uploading %s: %w", path, err)
	}
	return nil
}
