package tokens

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// writeShards writes shards of the given token counts, with tokens drawn
// from seed over the whole uint16 range, as dir/NAME_train_NNNNNN.bin.
func writeShards(t testing.TB, dir, name string, seed uint64, sizes ...int) []string {
	t.Helper()
	r := rand.New(rand.NewPCG(seed, 1))
	var paths []string
	for i, n := range sizes {
		toks := make([]uint16, n)
		for k := range toks {
			toks[k] = uint16(r.Uint32())
		}
		p := filepath.Join(dir, fmt.Sprintf("%s_train_%06d.bin", name, i+1))
		if err := WriteShardFile(p, toks); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	return paths
}

const bucket = "data"

// s3Data starts versitygw, puts the credentials in the environment (for
// OpenSource), uploads paths under prefix and returns the server and the
// store.
func s3Data(t *testing.T, prefix string, paths []string) (*versitygw.Server, checkpoint.Store) {
	t.Helper()
	srv := versitygw.Start(t, bucket)
	for _, kv := range versitygw.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	st, err := checkpoint.NewS3Store(srv.Config(bucket, prefix))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := UploadShards(context.Background(), st, paths); err != nil {
		t.Fatal(err)
	}
	return srv, st
}

// dataURL is the dataset location of pattern under prefix on addr, with
// extra query options.
func dataURL(addr, prefix, pattern, extra string) string {
	u := "s3://" + bucket + "/" + prefix + "/" + pattern + "?endpoint=" + addr + "&region=" + versitygw.Region + "&path_style=true&tls=false"
	if extra != "" {
		u += "&" + extra
	}
	return u
}

// proxy forwards TCP connections to a server until blackhole is called;
// from then on it accepts connections and never answers, like a host that
// went silent (no refusal, no reset).
type proxy struct {
	l      net.Listener
	target string
	wg     sync.WaitGroup

	mu    sync.Mutex
	black bool
	conns []net.Conn
}

func startProxy(t *testing.T, target string) *proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{l: l, target: target}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(p.Close)
	return p
}

func (p *proxy) Addr() string { return p.l.Addr().String() }

func (p *proxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		p.conns = append(p.conns, c)
		black := p.black
		p.mu.Unlock()
		if black {
			continue // held open, never read
		}
		u, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, u)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() { defer p.wg.Done(); io.Copy(u, c); u.Close() }()
		go func() { defer p.wg.Done(); io.Copy(c, u); c.Close() }()
	}
}

// blackhole cuts the connections forwarded so far and makes new ones hang.
func (p *proxy) blackhole() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.black = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

func (p *proxy) Close() {
	p.l.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
	p.mu.Unlock()
	p.wg.Wait()
}
