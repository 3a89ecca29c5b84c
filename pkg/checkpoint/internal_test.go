package checkpoint

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
)

// The source hands out byte ranges of the concatenated tensors, without a
// copy when a range lies in one.
func TestSourceRanges(t *testing.T) {
	segs := [][]byte{[]byte("abc"), nil, []byte("defgh"), []byte("i")}
	src := newSource(segs)
	all := "abcdefghi"
	buf := make([]byte, 16)
	for off := range len(all) {
		for n := 1; off+n <= len(all); n++ {
			if got := string(src.bytes(int64(off), int64(n), buf)); got != all[off:off+n] {
				t.Errorf("bytes(%d, %d) = %q, want %q", off, n, got, all[off:off+n])
			}
			var pieces []byte
			src.each(int64(off), int64(n), func(b []byte) { pieces = append(pieces, b...) })
			if string(pieces) != all[off:off+n] {
				t.Errorf("each(%d, %d) = %q", off, n, pieces)
			}
		}
	}
	if b := src.bytes(3, 5, buf); &b[0] != &segs[2][0] {
		t.Error("a range inside one tensor was copied")
	}
	// Tensors that are neighbours in one buffer need no copy across them.
	flat := []byte("0123456789")
	src = newSource([][]byte{flat[0:4], flat[4:4], flat[4:7], flat[7:10]})
	if b := src.bytes(2, 6, buf); &b[0] != &flat[2] || string(b) != "234567" {
		t.Errorf("a range across neighbouring tensors: %q copied=%v", b, &b[0] != &flat[2])
	}
}

func TestRetryable(t *testing.T) {
	opErr := func(errno syscall.Errno) error {
		return &url.Error{Op: "Put", URL: "http://x", Err: &net.OpError{Op: "dial", Net: "tcp", Err: errno}}
	}
	cases := []struct {
		name string
		err  error
		want bool
	}{
		{"503 SlowDown", minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}, true},
		{"503 without a code", minio.ErrorResponse{StatusCode: 503}, true},
		{"500 InternalError", minio.ErrorResponse{Code: "InternalError", StatusCode: 500}, true},
		{"429", minio.ErrorResponse{Code: "TooManyRequests", StatusCode: 429}, true},
		{"RequestTimeout", minio.ErrorResponse{Code: "RequestTimeout", StatusCode: 400}, true},
		{"connection refused", opErr(syscall.ECONNREFUSED), true},
		{"connection reset", opErr(syscall.ECONNRESET), true},
		{"attempt deadline", fmt.Errorf("put: %w", context.DeadlineExceeded), true},
		{"body cut short", io.ErrUnexpectedEOF, true},
		{"403 AccessDenied", minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}, false},
		{"404 NoSuchBucket", minio.ErrorResponse{Code: "NoSuchBucket", StatusCode: 404}, false},
		{"412 PreconditionFailed", minio.ErrorResponse{Code: "PreconditionFailed", StatusCode: 412}, false},
		{"bad signature", minio.ErrorResponse{Code: "SignatureDoesNotMatch", StatusCode: 403}, false},
		{"HTTPS to an HTTP server", &url.Error{Op: "Get", URL: "https://x", Err: errors.New("http: server gave HTTP response to HTTPS client")}, false},
		{"precondition", ErrPrecondition, false},
		{"cancelled", context.Canceled, false},
	}
	for _, c := range cases {
		if got := retryable(c.err); got != c.want {
			t.Errorf("%s: retryable = %v, want %v", c.name, got, c.want)
		}
	}
	_ = http.StatusOK
}

func TestRetrierBackoff(t *testing.T) {
	r := newRetrier(RetryPolicy{Attempts: 5, Base: 100 * time.Millisecond, Cap: 300 * time.Millisecond, AttemptTimeout: time.Second})
	var waits []time.Duration
	r.sleep = func(ctx context.Context, d time.Duration) error { waits = append(waits, d); return nil }
	calls := 0
	err := r.do(context.Background(), "op", func(ctx context.Context, _ int) error {
		calls++
		if _, ok := ctx.Deadline(); !ok {
			t.Error("an attempt without a deadline")
		}
		return minio.ErrorResponse{Code: "SlowDown", StatusCode: 503}
	})
	if calls != 5 || err == nil || !errors.Is(err, err) {
		t.Fatalf("%d calls, %v", calls, err)
	}
	var er minio.ErrorResponse
	if !errors.As(err, &er) || er.Code != "SlowDown" {
		t.Errorf("the last error is not kept: %v", err)
	}
	caps := []time.Duration{100, 200, 300, 300}
	for i, w := range waits {
		if w < 0 || w >= caps[i]*time.Millisecond {
			t.Errorf("wait %d = %v, want in [0, %v)", i, w, caps[i]*time.Millisecond)
		}
	}
	calls = 0
	err = r.do(context.Background(), "op", func(context.Context, int) error {
		calls++
		return minio.ErrorResponse{Code: "AccessDenied", StatusCode: 403}
	})
	if calls != 1 || err == nil {
		t.Errorf("a permanent error was tried %d times (%v)", calls, err)
	}
	calls = 0
	err = r.do(context.Background(), "op", func(context.Context, int) error {
		calls++
		if calls < 3 {
			return io.ErrUnexpectedEOF
		}
		return nil
	})
	if calls != 3 || err != nil {
		t.Errorf("recovering op: %d calls, %v", calls, err)
	}
}

func TestParseS3URL(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	cfg, err := ParseS3URL("s3://bkt/a/b?endpoint=10.0.0.1:9000&region=eu-west-1&path_style=true&tls=false")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Bucket != "bkt" || cfg.Prefix != "a/b" || cfg.Endpoint != "10.0.0.1:9000" || cfg.Region != "eu-west-1" || !cfg.PathStyle || !cfg.Insecure {
		t.Errorf("cfg = %+v", cfg)
	}
	s, err := NewS3Store(cfg)
	if err != nil {
		t.Fatal(err)
	}
	again, err := ParseS3URL(s.URL())
	if err != nil || again.Endpoint != cfg.Endpoint || again.Prefix != cfg.Prefix || again.Insecure != cfg.Insecure || again.PathStyle != cfg.PathStyle {
		t.Errorf("URL() = %s does not round-trip: %+v %v", s.URL(), again, err)
	}
	if d, _ := ParseS3URL("s3://bkt"); d.Insecure || d.PathStyle || d.Endpoint != "" {
		t.Errorf("defaults: %+v (TLS must be on by default)", d)
	}
	t.Setenv("AWS_ENDPOINT_URL", "http://minio.local:9000")
	t.Setenv("AWS_REGION", "us-west-2")
	if e, _ := ParseS3URL("s3://bkt/p"); e.Endpoint != "minio.local:9000" || !e.Insecure || e.Region != "us-west-2" {
		t.Errorf("from the environment: %+v", e)
	}
	for _, bad := range []string{"s3://", "s3://user:pass@bkt/p", "s3://bkt/p?endpont=x", "s3://bkt/p?tls=maybe", "s3://bkt//p"} {
		if _, err := ParseS3URL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestSplitCheckpointURL(t *testing.T) {
	for _, c := range []struct {
		in, root string
		step     int64
	}{
		{"file:///x/job/step-000000000200/", "file:///x/job", 200},
		{"s3://b/p/job/step-000000000020?endpoint=h:1&tls=false", "s3://b/p/job?endpoint=h:1&tls=false", 20},
		{"file:///x/job", "file:///x/job", -1},
	} {
		root, step := SplitCheckpointURL(c.in)
		if root != c.root || step != c.step {
			t.Errorf("SplitCheckpointURL(%q) = %q, %d; want %q, %d", c.in, root, step, c.root, c.step)
		}
	}
}

func FuzzParseManifest(f *testing.F) {
	good, _ := json.Marshal(Manifest{Format: FormatVersion, Step: 3, World: 2, Checksum: ChecksumCRC32C, Size: 8,
		Objects: []ObjectEntry{{Key: "d", Size: 8, CRC32C: "0000abcd"}},
		Tensors: []TensorEntry{{Name: "w", DType: "float32", Shape: []int{2}, Offset: 0}}})
	f.Add(good)
	f.Add([]byte(`{"format":2,"step":1,"world":1,"checksum":"sha256","size":4,"objects":[{"key":"a","size":4,"sha256":"00"}]}`))
	f.Add([]byte(`{"format":2,"world":1,"checksum":"crc32c","size":0,"tensors":[{"name":"x","dtype":"float32","shape":[4611686018427387904,4]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := parseManifest(b)
		if err != nil {
			return
		}
		// What parses must be safe to load: objects tile the data and every
		// tensor lies inside it.
		var off int64
		for _, o := range m.Objects {
			if o.Offset != off || o.Size < 0 {
				t.Fatalf("objects do not tile: %+v", m.Objects)
			}
			off += o.Size
		}
		if off != m.Size {
			t.Fatalf("objects hold %d of %d bytes", off, m.Size)
		}
		for _, te := range m.Tensors {
			n := int64(4)
			for _, d := range te.Shape {
				n *= int64(d)
			}
			if te.Offset < 0 || n < 0 || te.Offset+n > m.Size {
				t.Fatalf("tensor %+v outside %d bytes", te, m.Size)
			}
		}
	})
}
