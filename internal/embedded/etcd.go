package embedded

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Etcd is a single-member etcd server.
type Etcd struct {
	e         *embed.Etcd
	endpoints []string
	closing   *atomic.Bool
}

// EtcdConfig configures an embedded etcd.
type EtcdConfig struct {
	// Dir holds etcd's data; a restart with the same Dir keeps the state.
	Dir string
	// ClientAddr is host:port for clients; port 0 picks a free port.
	ClientAddr string
	// AdvertiseHost, if set, replaces the listen host in the advertised
	// client URL (for listening on 0.0.0.0 inside a pod).
	AdvertiseHost string
}

// StartEtcd starts etcd and waits until it serves.
func StartEtcd(cfg EtcdConfig, log *zap.Logger) (*Etcd, error) {
	if cfg.ClientAddr == "" {
		cfg.ClientAddr = "127.0.0.1:0"
	}
	clientAddr, err := resolvePort(cfg.ClientAddr)
	if err != nil {
		return nil, fmt.Errorf("etcd client address %q: %w", cfg.ClientAddr, err)
	}
	host, _, _ := net.SplitHostPort(clientAddr)
	peerAddr, err := resolvePort(net.JoinHostPort(loopbackIfAny(host), "0"))
	if err != nil {
		return nil, err
	}
	c := embed.NewConfig()
	c.Name = EtcdMemberName
	c.Dir = cfg.Dir
	closing := new(atomic.Bool)
	c.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.WarnLevel),
		zap.WrapCore(func(core zapcore.Core) zapcore.Core { return quietOnClose{Core: core, closing: closing} })))
	lc, _ := url.Parse("http://" + clientAddr)
	lp, _ := url.Parse("http://" + peerAddr)
	ac := *lc
	if cfg.AdvertiseHost != "" {
		_, port, _ := net.SplitHostPort(clientAddr)
		ac.Host = net.JoinHostPort(cfg.AdvertiseHost, port)
	} else if h := lc.Hostname(); h == "0.0.0.0" || h == "::" {
		_, port, _ := net.SplitHostPort(clientAddr)
		ac.Host = net.JoinHostPort("127.0.0.1", port)
	}
	ap := *lp
	c.ListenClientUrls, c.AdvertiseClientUrls = []url.URL{*lc}, []url.URL{ac}
	c.ListenPeerUrls, c.AdvertisePeerUrls = []url.URL{*lp}, []url.URL{ap}
	c.InitialCluster = c.InitialClusterFromName(c.Name)
	// One member on local disk: a short election timeout lets a restarted
	// coordinator's etcd serve within a second.
	c.TickMs, c.ElectionMs = 50, 500
	// Keep 10 minutes of history (enough for any watcher to catch up
	// after a restart) and compact the rest: without it every progress
	// write stays in etcd's history for ever.
	c.AutoCompactionMode, c.AutoCompactionRetention = "periodic", "10m"
	e, err := embed.StartEtcd(c)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd failed: %w", err)
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		e.Close()
		return nil, fmt.Errorf("embedded etcd did not become ready within 60s")
	}
	return &Etcd{e: e, endpoints: []string{ac.String()}, closing: closing}, nil
}

// Endpoints returns the client URLs.
func (e *Etcd) Endpoints() []string { return e.endpoints }

// Err reports a fatal server error.
func (e *Etcd) Err() <-chan error { return e.e.Err() }

// Close stops the server.
func (e *Etcd) Close() {
	e.closing.Store(true)
	e.e.Close()
}

// quietOnClose drops what etcd logs while it is being closed: its
// listeners report "server closed" as ERROR lines at every normal exit.
type quietOnClose struct {
	zapcore.Core
	closing *atomic.Bool
}

func (q quietOnClose) Check(ent zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if q.closing.Load() {
		return ce
	}
	return q.Core.Check(ent, ce)
}

func (q quietOnClose) With(f []zapcore.Field) zapcore.Core {
	return quietOnClose{Core: q.Core.With(f), closing: q.closing}
}

// resolvePort replaces port 0 with a free port, because etcd advertises the
// configured URL, not the bound one. The port is free when chosen; another
// process could take it before etcd binds, which is harmless in practice
// for loopback test clusters and reported as a bind error otherwise.
func resolvePort(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", err
	}
	if port != "0" {
		return addr, nil
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func loopbackIfAny(host string) string {
	if host == "" || host == "0.0.0.0" || host == "::" || strings.HasPrefix(host, "[") {
		return "127.0.0.1"
	}
	return host
}

// EtcdMemberName is the embedded etcd's member name (a restored snapshot
// must use it).
const EtcdMemberName = "ringmaster"
