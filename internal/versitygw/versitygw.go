package versitygw

import (
	"context"
	"errors"
	"fmt"
	"go/build"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// Version is the versitygw release the project tests against.
const Version = "v1.8.0"

// InstallHint says how to get the binary.
const InstallHint = "install it with `go install github.com/versity/versitygw/cmd/versitygw@" + Version + "` (.ci/run does)"

// Credentials of the root account of every server started here.
const (
	AccessKey = "ringmaster-test"
	SecretKey = "ringmaster-test-secret-key"
	Region    = "us-east-1"
)

// Binary returns the path of the versitygw executable, from $PATH or
// $GOPATH/bin.
func Binary() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	for _, gp := range filepath.SplitList(build.Default.GOPATH) {
		p := filepath.Join(gp, "bin", "versitygw")
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p, nil
		}
	}
	return "", fmt.Errorf("versitygw is not on $PATH or in $GOPATH/bin; %s", InstallHint)
}

// Server is a running (or killed) versitygw process.
type Server struct {
	// Dir is the directory served: each subdirectory is a bucket.
	Dir string
	// Addr is host:port of the S3 API on loopback.
	Addr string

	bin, logPath string
	mu           sync.Mutex
	cmd          *exec.Cmd
	exited       chan struct{}
}

// Run starts a server that serves dir on a free loopback port and waits
// until it answers. Stop it with Close.
func Run(ctx context.Context, dir string) (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Dir: dir, bin: bin, logPath: filepath.Join(filepath.Dir(dir), filepath.Base(dir)+".versitygw.log")}
	// The port is chosen free, then handed over; another process may take
	// it in between, so try a few.
	for range 5 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		s.Addr = l.Addr().String()
		l.Close()
		if err = s.start(ctx); err == nil {
			return s, nil
		}
		s.Kill()
		if !errors.Is(err, errExited) {
			return nil, err
		}
	}
	return nil, fmt.Errorf("versitygw would not start; see %s", s.logPath)
}

var errExited = errors.New("versitygw exited")

func (s *Server) start(ctx context.Context) error {
	logf, err := os.OpenFile(s.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(s.bin, "--access", AccessKey, "--secret", SecretKey, "--region", Region,
		"--port", s.Addr, "--quiet", "--keep-alive", "posix", s.Dir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting versitygw: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		logf.Close()
		close(exited)
	}()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: time.Second}
	for {
		select {
		case <-exited:
			return fmt.Errorf("%w at start: %s", errExited, s.logTail())
		case <-ctx.Done():
			return ctx.Err()
		default:
		}
		// Any HTTP answer (403 without credentials) means it serves.
		if resp, err := client.Get("http://" + s.Addr + "/"); err == nil {
			resp.Body.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("versitygw did not answer on %s within 30s: %s", s.Addr, s.logTail())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (s *Server) logTail() string {
	b, _ := os.ReadFile(s.logPath)
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > 10 {
		lines = lines[len(lines)-10:]
	}
	return strings.Join(lines, " | ")
}

// Kill ends the server abruptly (SIGKILL) and waits for it to exit.
func (s *Server) Kill() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Restart starts the server again on the same address and directory (after
// Kill) and waits until it answers.
func (s *Server) Restart(ctx context.Context) error {
	s.Kill()
	var err error
	// The old socket may linger for a moment.
	for range 50 {
		if err = s.start(ctx); err == nil || !errors.Is(err, errExited) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
	return err
}

// Close stops the server.
func (s *Server) Close() { s.Kill() }

// Config returns the store configuration of bucket/prefix on this server,
// with its credentials.
func (s *Server) Config(bucket, prefix string) checkpoint.S3Config {
	cfg, err := checkpoint.ParseS3URL(s.URL(bucket, prefix))
	if err != nil {
		panic(err) // the URL is built here
	}
	cfg.Creds = credentials.NewStaticV4(AccessKey, SecretKey, "")
	return cfg
}

// URL returns the store URL of bucket/prefix on this server. Opening it
// needs the credentials in the environment (Env).
func (s *Server) URL(bucket, prefix string) string {
	u := "s3://" + bucket
	if prefix != "" {
		u += "/" + prefix
	}
	return u + "?endpoint=" + s.Addr + "&region=" + Region + "&path_style=true&tls=false"
}

// Env is the environment that gives a process this server's credentials.
func Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + AccessKey, "AWS_SECRET_ACCESS_KEY=" + SecretKey}
}

// MakeBucket creates a bucket.
func (s *Server) MakeBucket(ctx context.Context, name string) error {
	c, err := minio.New(s.Addr, &minio.Options{Creds: credentials.NewStaticV4(AccessKey, SecretKey, ""), Region: Region, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return c.MakeBucket(ctx, name, minio.MakeBucketOptions{Region: Region})
}

// ObjectPath is the file in which the server keeps an object.
func (s *Server) ObjectPath(bucket, object string) string {
	return filepath.Join(s.Dir, bucket, filepath.FromSlash(object))
}

// Start runs a server for a test, serving a fresh temporary directory,
// with one bucket, and stops it when the test ends. A missing versitygw
// fails the test with the install command; only `go test -short` skips
// such tests (CI does not use -short).
func Start(t testing.TB, bucket string) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a versitygw S3 server; -short skips the tests that do")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s, err := Run(ctx, filepath.Join(t.TempDir(), "s3"))
	if err != nil {
		t.Fatalf("S3 test server: %v", err)
	}
	t.Cleanup(s.Close)
	if bucket != "" {
		if err := s.MakeBucket(ctx, bucket); err != nil {
			t.Fatalf("creating bucket %s: %v", bucket, err)
		}
	}
	return s
}
