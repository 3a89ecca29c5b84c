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
	"runtime"
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

// Package is what `go install` builds.
const Package = "github.com/versity/versitygw/cmd/versitygw"

// InstallHint says how to install the binary by hand; Binary runs the same
// command itself when the binary is missing.
const InstallHint = "install it with `go install " + Package + "@" + Version + "` (Binary runs this itself when versitygw is missing)"

// installTimeout bounds the `go install` that Binary runs: a cold module
// cache downloads and builds versitygw and its dependencies.
const installTimeout = 10 * time.Minute

// Credentials of the root account of every server started here.
const (
	AccessKey = "ringmaster-test"
	SecretKey = "ringmaster-test-secret-key"
	Region    = "us-east-1"
)

var binary = sync.OnceValues(findOrInstall)

// Binary returns the path of the versitygw executable, found on $PATH, in
// $(go env GOBIN) or in each $(go env GOPATH)/bin. When it is in none of
// them, Binary installs Version there with `go install` (once per machine:
// a file lock serialises the test processes of `go test ./...`, and each
// looks again after taking it). The answer, or the error, is kept for the
// life of the process.
func Binary() (string, error) { return binary() }

// exe is the executable's name on this system.
var exe = func() string {
	if runtime.GOOS == "windows" {
		return "versitygw.exe"
	}
	return "versitygw"
}()

func findOrInstall() (string, error) {
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	gocmd := goCommand()
	dirs := binDirs(gocmd)
	if p := findIn(dirs); p != "" {
		return p, nil
	}
	return install(gocmd, dirs)
}

// goCommand is the go command of the toolchain running this (the tests'),
// or the one on $PATH.
func goCommand() string {
	name := "go"
	if runtime.GOOS == "windows" {
		name += ".exe"
	}
	// runtime.GOROOT is deprecated, but the toolchain running the tests is
	// the one wanted when it is still there; go test sets $GOROOT to it.
	if root := runtime.GOROOT(); root != "" {
		p := filepath.Join(root, "bin", name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return "go"
}

// binDirs are the directories where `go install` puts binaries: GOBIN if
// set, then each GOPATH's bin, as the go command reports them (it also
// reads its configuration file); without a go command, as the environment
// says. `go install` writes into the first.
func binDirs(gocmd string) []string {
	gobin, gopath := os.Getenv("GOBIN"), build.Default.GOPATH
	if out, err := exec.Command(gocmd, "env", "GOBIN", "GOPATH").Output(); err == nil {
		if lines := strings.Split(strings.TrimRight(string(out), "\r\n"), "\n"); len(lines) == 2 {
			gobin, gopath = strings.TrimSpace(lines[0]), strings.TrimSpace(lines[1])
		}
	}
	var dirs []string
	if gobin != "" {
		dirs = append(dirs, gobin)
	}
	for _, gp := range filepath.SplitList(gopath) {
		if gp != "" {
			dirs = append(dirs, filepath.Join(gp, "bin"))
		}
	}
	return dirs
}

func findIn(dirs []string) string {
	for _, d := range dirs {
		p := filepath.Join(d, exe)
		if st, err := os.Stat(p); err == nil && !st.IsDir() {
			return p
		}
	}
	return ""
}

// install runs `go install Package@Version` under an exclusive lock on a
// file named for the version, unless another process installed it while
// this one waited for the lock.
func install(gocmd string, dirs []string) (string, error) {
	if len(dirs) == 0 {
		return "", fmt.Errorf("versitygw is not on $PATH and the go command names no GOBIN or GOPATH to install it into; %s", InstallHint)
	}
	lockPath := filepath.Join(os.TempDir(), "ringmaster-versitygw-"+Version+".lock")
	unlock, err := lockFile(lockPath, func() {
		fmt.Fprintf(os.Stderr, "versitygw: waiting for another process that is installing it (lock %s)\n", lockPath)
	})
	if err != nil {
		return "", fmt.Errorf("locking %s to install versitygw: %w", lockPath, err)
	}
	defer unlock()
	if p := findIn(dirs); p != "" {
		return p, nil
	}
	dir := dirs[0]
	args := []string{"install", Package + "@" + Version}
	fmt.Fprintf(os.Stderr, "versitygw: not on $PATH or in %s; installing it into %s: %s %s\n", strings.Join(dirs, ", "), dir, gocmd, strings.Join(args, " "))
	ctx, cancel := context.WithTimeout(context.Background(), installTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, gocmd, args...)
	// Outside this repository, so that its go.mod plays no part; GOBIN
	// names the directory looked in above.
	cmd.Dir = os.TempDir()
	cmd.Env = append(os.Environ(), "GOBIN="+dir)
	out, err := cmd.CombinedOutput()
	command := gocmd + " " + strings.Join(args, " ")
	if ctx.Err() != nil {
		return "", fmt.Errorf("installing versitygw: `GOBIN=%s %s` did not finish within %v: %s", dir, command, installTimeout, strings.TrimSpace(string(out)))
	}
	if err != nil {
		return "", fmt.Errorf("installing versitygw: `GOBIN=%s %s`: %v: %s", dir, command, err, strings.TrimSpace(string(out)))
	}
	p := filepath.Join(dir, exe)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("installing versitygw: `GOBIN=%s %s` succeeded but left no binary: %w", dir, command, err)
	}
	return p, nil
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
// until it answers. Stop it with Close. The first Run in a process may
// install versitygw (Binary), which ctx does not bound; call Binary first
// to keep that out of ctx's time.
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
// with one bucket, and stops it when the test ends. A missing versitygw is
// installed (Binary); one that cannot be installed fails the test with the
// command that failed. Only `go test -short` skips such tests (CI does not
// use -short).
func Start(t testing.TB, bucket string) *Server {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a versitygw S3 server; -short skips the tests that do")
	}
	// Installing versitygw may take minutes; the minute below is for
	// starting it.
	if _, err := Binary(); err != nil {
		t.Fatalf("S3 test server: %v", err)
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
