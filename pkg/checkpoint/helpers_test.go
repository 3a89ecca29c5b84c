package checkpoint_test

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

const bucket = "ckpt"

// testStore is a real store with what a test needs to reach behind it.
type testStore struct {
	name  string
	store checkpoint.Store
	// file is where the store keeps an object's bytes on disk.
	file func(key string) string
	srv  *versitygw.Server // nil for the file store
}

func fileStore(t *testing.T) testStore {
	dir := t.TempDir()
	s, err := checkpoint.NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	return testStore{name: "file", store: s, file: func(key string) string { return filepath.Join(dir, filepath.FromSlash(key)) }}
}

// fastRetry keeps tests of failures short.
var fastRetry = checkpoint.RetryPolicy{Attempts: 3, Base: 20 * time.Millisecond, Cap: 100 * time.Millisecond, AttemptTimeout: 20 * time.Second}

func s3Store(t *testing.T, retry checkpoint.RetryPolicy) testStore {
	srv := versitygw.Start(t, bucket)
	cfg := srv.Config(bucket, "pre/fix")
	cfg.Retry = retry
	s, err := checkpoint.NewS3Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return testStore{name: "s3", store: s, srv: srv, file: func(key string) string { return srv.ObjectPath(bucket, "pre/fix/"+key) }}
}

// eachStore runs fn against a file store and an S3 store (versitygw).
func eachStore(t *testing.T, fn func(t *testing.T, ts testStore)) {
	t.Run("file", func(t *testing.T) { fn(t, fileStore(t)) })
	t.Run("s3", func(t *testing.T) { fn(t, s3Store(t, checkpoint.DefaultRetry)) })
}

// randomState is a state of the given float counts, one tensor each, with
// values drawn from seed.
func randomState(step int64, seed uint64, sizes ...int) *checkpoint.State {
	r := rand.New(rand.NewPCG(seed, 7))
	st := &checkpoint.State{Step: step, Epoch: 2, EpochSamples: 640, GlobalSamples: 120640, World: 2, Seed: 9,
		Spec: []byte(`{"name":"t","workers":2}`), Meta: map[string]string{"job": "j1"},
		RNG: []checkpoint.RNGState{{Name: "data_order", State: []byte{1, 2, 3}}}}
	for i, n := range sizes {
		data := make([]float32, n)
		for j := range data {
			data[j] = r.Float32()*2 - 1
		}
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "t" + string(rune('a'+i)), Shape: []int{n}, Data: data})
	}
	return st
}

func newManager(t *testing.T, s checkpoint.Store, keep int, opts ...checkpoint.Option) *checkpoint.Manager {
	return checkpoint.NewManager(s, "jobs/j1", keep, zaptest.NewLogger(t), opts...)
}

func flipByte(t *testing.T, path string, at int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, at); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x10
	if _, err := f.WriteAt(b, at); err != nil {
		t.Fatal(err)
	}
}

// tapStore is a real store whose uploads call a hook after each part is
// written: the tests use it to act in the middle of an upload.
type tapStore struct {
	checkpoint.Store
	afterPart func(key string, n int)
}

func (s tapStore) Create(ctx context.Context, key string, size, partSize int64, cond checkpoint.Condition) (checkpoint.Upload, error) {
	u, err := s.Store.Create(ctx, key, size, partSize, cond)
	if err != nil {
		return nil, err
	}
	return tapUpload{u, key, s.afterPart}, nil
}

type tapUpload struct {
	checkpoint.Upload
	key   string
	after func(key string, n int)
}

func (u tapUpload) WritePart(ctx context.Context, n int, p []byte) error {
	err := u.Upload.WritePart(ctx, n, p)
	if err == nil && u.after != nil {
		u.after(u.key, n)
	}
	return err
}

// events collects what a Manager reports.
type events struct {
	mu  sync.Mutex
	all []checkpoint.Event
}

func (e *events) add(ev checkpoint.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.all = append(e.all, ev)
}

func (e *events) of(kind checkpoint.EventKind) []checkpoint.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []checkpoint.Event
	for _, ev := range e.all {
		if ev.Kind == kind {
			out = append(out, ev)
		}
	}
	return out
}

func (s tapStore) AbortIncomplete(ctx context.Context, prefix string, stale func(string, time.Time) bool) (int, error) {
	if c, ok := s.Store.(checkpoint.IncompleteCleaner); ok {
		return c.AbortIncomplete(ctx, prefix, stale)
	}
	return 0, nil
}
