package checkpoint

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// ErrNotFound is returned for a key that does not exist.
var ErrNotFound = errors.New("checkpoint: object not found")

// ErrPrecondition is returned when a conditional write finds the object
// in another state than the condition asked for (it exists, or it
// changed).
var ErrPrecondition = errors.New("checkpoint: precondition failed")

// ObjectInfo describes a stored object.
type ObjectInfo struct {
	Key      string
	Size     int64
	ETag     string // version tag for conditional writes; opaque
	Modified time.Time
}

// Condition makes a write conditional. The zero value writes
// unconditionally.
type Condition struct {
	// IfAbsent writes only if no object exists under the key.
	IfAbsent bool
	// IfMatch writes only if the object's current ETag is this one.
	IfMatch string
}

// Store is a flat namespace of immutable objects addressed by keys with '/'
// separators. Implementations are safe for concurrent use.
type Store interface {
	// Create begins writing an object of exactly size bytes in parts of
	// partSize bytes (the last may be shorter). Nothing is visible under
	// key until Complete returns nil; then readers see the whole object.
	Create(ctx context.Context, key string, size, partSize int64, cond Condition) (Upload, error)
	// Read returns n bytes of the object starting at off; n < 0 reads to
	// the end. A missing object is ErrNotFound.
	Read(ctx context.Context, key string, off, n int64) (io.ReadCloser, error)
	// Stat describes one object; a missing object is ErrNotFound.
	Stat(ctx context.Context, key string) (ObjectInfo, error)
	// List returns the objects whose keys start with prefix, sorted by key.
	// Objects being written are not listed.
	List(ctx context.Context, prefix string) ([]ObjectInfo, error)
	// Delete removes an object; deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// URL names the store (without secrets), such that Open(URL()) opens
	// it again.
	URL() string
}

// Upload is an object being written. Parts may be written concurrently
// and in any order; each part is written at most once unless an earlier
// attempt of it failed.
type Upload interface {
	// WritePart writes part number n (1-based), which starts at byte
	// (n-1)*partSize and holds p.
	WritePart(ctx context.Context, n int, p []byte) error
	// Complete makes the object visible, atomically, if the write's
	// condition holds (else ErrPrecondition).
	Complete(ctx context.Context) error
	// Abort discards what was written. It is safe after Complete (then it
	// does nothing).
	Abort(ctx context.Context) error
}

// IncompleteCleaner is implemented by stores that keep what uploads that
// never completed wrote (S3 multipart uploads, temporary files of a
// process that died). AbortIncomplete discards those under prefix for
// which stale returns true, given the key and when the upload started,
// and returns how many it discarded.
type IncompleteCleaner interface {
	AbortIncomplete(ctx context.Context, prefix string, stale func(key string, started time.Time) bool) (int, error)
}

// Open returns the store named by a URL:
//
//	file:///absolute/path
//	s3://bucket/optional/prefix?endpoint=host:port&region=R&path_style=true&tls=false
//
// See S3Config for the S3 options and the environment variables they fall
// back to.
func Open(raw string) (Store, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: store URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "file":
		noSync, err := parseFileURL(raw, u)
		if err != nil {
			return nil, err
		}
		s, err := NewFileStore(u.Path)
		if err == nil && noSync {
			s.SkipSync()
		}
		return s, err
	case "s3":
		cfg, err := ParseS3URL(raw)
		if err != nil {
			return nil, err
		}
		return NewS3Store(cfg)
	default:
		return nil, fmt.Errorf("checkpoint: store URL %q: scheme %q is not supported (use file:// or s3://)", raw, u.Scheme)
	}
}

// CheckURL reports whether Open would accept a store URL, without
// touching the store.
func CheckURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("checkpoint: store URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "file":
		_, err = parseFileURL(raw, u)
	case "s3":
		_, err = ParseS3URL(raw)
	default:
		err = fmt.Errorf("checkpoint: store URL %q: scheme %q is not supported (use file:// or s3://)", raw, u.Scheme)
	}
	return err
}

// parseFileURL checks file:///absolute/path[?fsync=false].
func parseFileURL(raw string, u *url.URL) (noSync bool, err error) {
	if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
		return false, fmt.Errorf("checkpoint: store URL %q: a file store needs an absolute path and three slashes, e.g. file:///var/lib/ringmaster/checkpoints", raw)
	}
	q := u.Query()
	for k := range q {
		if k != "fsync" {
			return false, fmt.Errorf("checkpoint: store URL %q: unknown option %q; a file store takes fsync=false", raw, k)
		}
	}
	if v := q.Get("fsync"); v != "" {
		on, err := strconv.ParseBool(v)
		if err != nil {
			return false, fmt.Errorf("checkpoint: store URL %q: fsync=%q is not true or false", raw, v)
		}
		noSync = !on
	}
	return noSync, nil
}

// ObjectURL is the URL of a key (or key prefix) in a store: the store's
// URL with the key appended to its path, options kept.
func ObjectURL(s Store, key string) string {
	base := s.URL()
	path, query, _ := strings.Cut(base, "?")
	out := strings.TrimSuffix(path, "/") + "/" + key
	if query != "" {
		out += "?" + query
	}
	return out
}

// SplitCheckpointURL splits the URL of a checkpoint directory (as
// ObjectURL names it, ending in step-NNNNNNNNNNNN[/]) into the URL of the
// directory that holds the job's checkpoints and the step. A URL that
// names no step is returned whole with step -1.
func SplitCheckpointURL(raw string) (root string, step int64) {
	path, query, _ := strings.Cut(raw, "?")
	trimmed := strings.TrimSuffix(path, "/")
	i := strings.LastIndex(trimmed, "/")
	if i < 0 {
		return raw, -1
	}
	s, ok := parseStepDir(trimmed[i+1:])
	if !ok {
		return raw, -1
	}
	root = trimmed[:i]
	if query != "" {
		root += "?" + query
	}
	return root, s
}

var errTooLarge = errors.New("too large")

// putBytes writes a small object in one part.
func putBytes(ctx context.Context, s Store, key string, b []byte, cond Condition) error {
	up, err := s.Create(ctx, key, int64(len(b)), max(int64(len(b)), 1), cond)
	if err != nil {
		return err
	}
	if err := up.WritePart(ctx, 1, b); err != nil {
		_ = up.Abort(context.WithoutCancel(ctx))
		return err
	}
	if err := up.Complete(ctx); err != nil {
		_ = up.Abort(context.WithoutCancel(ctx))
		return err
	}
	return nil
}

// readSmall reads a whole object of at most limit bytes.
func readSmall(ctx context.Context, s Store, key string, limit int64) ([]byte, error) {
	rc, err := s.Read(ctx, key, 0, -1)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	var buf bytes.Buffer
	n, err := io.Copy(&buf, io.LimitReader(rc, limit+1))
	if err != nil {
		return nil, err
	}
	if n > limit {
		return nil, fmt.Errorf("%w: object %s is larger than %d bytes", errTooLarge, key, limit)
	}
	return buf.Bytes(), nil
}
