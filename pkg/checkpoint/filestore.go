package checkpoint

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"
)

// tmpMarker is part of the name of every file being written; List skips
// such files and AbortIncomplete removes stale ones.
const tmpMarker = ".tmp-"

// lockName is the file a FileStore locks for compare-and-swap writes.
const lockName = ".ringmaster-store.lock"

// FileStore keeps objects as files under a root directory. Writes go to a
// temporary file beside the target, are synced, and are renamed into
// place (or hard-linked, for a write that must not replace an existing
// object), so a reader sees the old object or the whole new one.
type FileStore struct {
	root   string
	noSync bool
}

// NewFileStore returns a store rooted at dir, creating it if needed.
func NewFileStore(dir string) (*FileStore, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: creating store directory: %w", err)
	}
	return &FileStore{root: filepath.Clean(dir)}, nil
}

// SkipSync turns off fsync (the file URL option fsync=false): saves run at
// page-cache speed, and a crash of the machine (not of the process) may
// lose the newest checkpoints or leave them torn. Loading still verifies
// every checksum, so a torn checkpoint is never used: the previous one is.
func (s *FileStore) SkipSync() { s.noSync = true }

// Syncs reports whether the store makes its writes durable (fsync) before
// a save commits: true unless SkipSync or fsync=false.
func (s *FileStore) Syncs() bool { return !s.noSync }

// URL implements Store.
func (s *FileStore) URL() string {
	u := "file://" + filepath.ToSlash(s.root)
	if s.noSync {
		u += "?fsync=false"
	}
	return u
}

// Path returns the file that holds key (for tests and tools).
func (s *FileStore) Path(key string) (string, error) { return s.path(key) }

func (s *FileStore) path(key string) (string, error) {
	clean := path.Clean("/" + key)
	if clean == "/" || clean != "/"+key || strings.Contains(key, tmpMarker) || path.Base(key) == lockName {
		return "", fmt.Errorf("checkpoint: invalid object key %q", key)
	}
	return filepath.Join(s.root, filepath.FromSlash(clean)), nil
}

// Create implements Store.
func (s *FileStore) Create(ctx context.Context, key string, size, partSize int64, cond Condition) (Upload, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	if size < 0 || partSize <= 0 {
		return nil, fmt.Errorf("checkpoint: %s: invalid size %d or part size %d", key, size, partSize)
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("checkpoint: writing %s: %w", key, err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	tmp := p + tmpMarker + hex.EncodeToString(rnd[:])
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: writing %s: %w", key, err)
	}
	if err := preallocate(f, size); err != nil {
		f.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("checkpoint: writing %s: %w", key, err)
	}
	return &fileUpload{s: s, key: key, path: p, tmp: tmp, f: f, size: size, partSize: partSize, cond: cond}, nil
}

type fileUpload struct {
	s              *FileStore
	key, path, tmp string
	size, partSize int64
	cond           Condition

	mu   sync.Mutex
	f    *os.File // nil once completed or aborted
	done bool
}

func (u *fileUpload) WritePart(ctx context.Context, n int, p []byte) error {
	return u.WritePartHashed(ctx, n, p, len(p), nil)
}

// WritePartHashed implements pieceWriter: it writes part n with one pwrite
// at its offset while a goroutine of its own calls hash, if set, on the
// part's pieces of piece bytes, in order; it returns when both are done.
func (u *fileUpload) WritePartHashed(ctx context.Context, n int, p []byte, piece int, hash func([]byte)) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	off, err := partRange(u.key, n, len(p), u.size, u.partSize)
	if err != nil {
		return err
	}
	u.mu.Lock()
	f := u.f
	u.mu.Unlock()
	if f == nil {
		return fmt.Errorf("checkpoint: writing %s: the upload is over", u.key)
	}
	piece = max(piece, 1)
	var hashed chan struct{}
	if hash != nil {
		hashed = make(chan struct{})
		go func() {
			defer close(hashed)
			for at := 0; at < len(p); at += piece {
				hash(p[at:min(at+piece, len(p))])
			}
		}()
	}
	_, err = f.WriteAt(p, off)
	if hashed != nil {
		<-hashed
	}
	if err != nil {
		return fmt.Errorf("checkpoint: writing %s part %d: %w", u.key, n, err)
	}
	if !u.s.noSync {
		startWriteback(f, off, int64(len(p)))
	}
	return nil
}

// partRange checks that part n of len bytes fits an object of size bytes
// cut in parts of partSize, and returns its offset.
func partRange(key string, n, length int, size, partSize int64) (int64, error) {
	off := int64(n-1) * partSize
	want := min(partSize, size-off)
	if n < 1 || off >= max(size, 1) || int64(length) != max(want, 0) {
		return 0, fmt.Errorf("checkpoint: %s: part %d of %d bytes does not fit an object of %d bytes in parts of %d", key, n, length, size, partSize)
	}
	return off, nil
}

func (u *fileUpload) Complete(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.f == nil {
		return fmt.Errorf("checkpoint: writing %s: the upload is over", u.key)
	}
	err := ctx.Err()
	if err == nil && !u.s.noSync {
		err = u.f.Sync()
	}
	if cerr := u.f.Close(); err == nil {
		err = cerr
	}
	u.f = nil
	if err == nil {
		err = u.s.commit(u.tmp, u.path, u.cond)
	}
	if err != nil {
		os.Remove(u.tmp)
		if errors.Is(err, ErrPrecondition) {
			return fmt.Errorf("%w: %s", ErrPrecondition, u.key)
		}
		return fmt.Errorf("checkpoint: writing %s: %w", u.key, err)
	}
	u.done = true
	if u.s.noSync {
		return nil
	}
	return syncDir(filepath.Dir(u.path))
}

func (u *fileUpload) Abort(context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.f != nil {
		u.f.Close()
		u.f = nil
	}
	if !u.done {
		if err := os.Remove(u.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
	}
	return nil
}

// commit moves a finished temporary file into place under the condition.
func (s *FileStore) commit(tmp, p string, cond Condition) error {
	switch {
	case cond.IfAbsent:
		// A hard link fails if the target exists: an atomic create-only.
		if err := os.Link(tmp, p); err != nil {
			if errors.Is(err, fs.ErrExist) {
				return ErrPrecondition
			}
			return err
		}
		return os.Remove(tmp)
	case cond.IfMatch != "":
		unlock, err := lockFile(filepath.Join(s.root, lockName))
		if err != nil {
			return err
		}
		defer unlock()
		fi, err := os.Stat(p)
		if err != nil || fileETag(fi) != cond.IfMatch {
			return ErrPrecondition
		}
		return os.Rename(tmp, p)
	default:
		return os.Rename(tmp, p)
	}
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// Read implements Store.
func (s *FileStore) Read(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	p, err := s.path(key)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if err != nil {
		return nil, err
	}
	if n < 0 {
		n = 1<<62 - off
	}
	return &fileSection{SectionReader: io.NewSectionReader(f, off, n), f: f}, nil
}

type fileSection struct {
	*io.SectionReader
	f *os.File
}

func (r *fileSection) Close() error { return r.f.Close() }

// Stat implements Store.
func (s *FileStore) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	p, err := s.path(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	fi, err := os.Stat(p)
	if errors.Is(err, fs.ErrNotExist) {
		return ObjectInfo{}, fmt.Errorf("%w: %s", ErrNotFound, key)
	}
	if err != nil {
		return ObjectInfo{}, err
	}
	return ObjectInfo{Key: key, Size: fi.Size(), ETag: fileETag(fi), Modified: fi.ModTime()}, nil
}

// List implements Store. Temporary files of unfinished writes are not
// listed.
func (s *FileStore) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	var out []ObjectInfo
	err := s.walk(ctx, prefix, func(key string, fi fs.FileInfo, tmp bool) {
		if !tmp {
			out = append(out, ObjectInfo{Key: key, Size: fi.Size(), ETag: fileETag(fi), Modified: fi.ModTime()})
		}
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, err
}

// walk visits the files under the directory that holds prefix whose keys
// start with prefix.
func (s *FileStore) walk(ctx context.Context, prefix string, fn func(key string, fi fs.FileInfo, tmp bool)) error {
	start := s.root
	if dir := path.Dir("/" + prefix); dir != "/" && !strings.Contains(dir, "..") {
		start = filepath.Join(s.root, filepath.FromSlash(dir))
	}
	return filepath.WalkDir(start, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if d.IsDir() || d.Name() == lockName {
			return nil
		}
		rel, _ := filepath.Rel(s.root, p)
		key := filepath.ToSlash(rel)
		if !strings.HasPrefix(key, prefix) {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil // removed while walking
		}
		fn(key, fi, strings.Contains(d.Name(), tmpMarker))
		return nil
	})
}

// AbortIncomplete implements IncompleteCleaner: it removes the temporary
// files of writes under prefix that never finished (their process died)
// and that stale selects, by the key being written and the file's
// modification time.
func (s *FileStore) AbortIncomplete(ctx context.Context, prefix string, stale func(key string, started time.Time) bool) (int, error) {
	var paths []string
	err := s.walk(ctx, prefix, func(key string, fi fs.FileInfo, tmp bool) {
		if tmp && stale(key[:strings.LastIndex(key, tmpMarker)], fi.ModTime()) {
			paths = append(paths, filepath.Join(s.root, filepath.FromSlash(key)))
		}
	})
	for _, p := range paths {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return 0, err
		}
		s.pruneDirs(filepath.Dir(p))
	}
	return len(paths), err
}

// Delete implements Store; deleting a missing key is not an error.
func (s *FileStore) Delete(ctx context.Context, key string) error {
	p, err := s.path(key)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	s.pruneDirs(filepath.Dir(p))
	return nil
}

// pruneDirs removes now-empty directories from dir up to the root, best
// effort.
func (s *FileStore) pruneDirs(dir string) {
	for ; dir != s.root && strings.HasPrefix(dir, s.root); dir = filepath.Dir(dir) {
		if os.Remove(dir) != nil {
			break
		}
	}
}
