package e2e

import (
	"context"
	"io"
	"net"
	"sync"
	"testing"
)

// cutProxy forwards TCP connections to a target until it is cut: then it
// closes every connection it carries and every new one at once, as if the
// target had become unreachable, until it is restored.
type cutProxy struct {
	l      net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  map[net.Conn]bool
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func startCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &cutProxy{l: l, target: target, conns: map[net.Conn]bool{}, cancel: cancel}
	p.wg.Add(1)
	go p.serve(ctx)
	t.Cleanup(p.close)
	return p
}

func (p *cutProxy) Addr() string { return p.l.Addr().String() }

func (p *cutProxy) serve(ctx context.Context) {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut || ctx.Err() != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c] = true
		p.mu.Unlock()
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			var d net.Dialer
			up, err := d.DialContext(ctx, "tcp", p.target)
			if err != nil {
				p.drop(c)
				return
			}
			p.mu.Lock()
			if p.cut {
				p.mu.Unlock()
				up.Close()
				p.drop(c)
				return
			}
			p.conns[up] = true
			p.mu.Unlock()
			done := make(chan struct{}, 2)
			go func() { _, _ = io.Copy(up, c); done <- struct{}{} }()
			go func() { _, _ = io.Copy(c, up); done <- struct{}{} }()
			<-done
			p.drop(c)
			p.drop(up)
			<-done
		}()
	}
}

func (p *cutProxy) drop(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

// setCut cuts (true) or restores (false) the connection to the target.
func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	p.cut = cut
	var open []net.Conn
	if cut {
		for c := range p.conns {
			open = append(open, c)
		}
	}
	p.mu.Unlock()
	for _, c := range open {
		c.Close()
	}
}

func (p *cutProxy) close() {
	p.cancel()
	p.l.Close()
	p.setCut(true)
	p.wg.Wait()
}
