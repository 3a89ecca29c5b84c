package embedded

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Etcd is an embedded etcd server: a single member, or one member of a
// cluster formed by several coordinator replicas.
type Etcd struct {
	e         *embed.Etcd
	endpoints []string
	local     string
	listen    string
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
	// Name is this member's name (default EtcdMemberName).
	Name string
	// InitialCluster lists every member of a new cluster as
	// name=http://host:port (their peer URLs), this one included; empty
	// runs a single member. A member restarted on its Dir rejoins its
	// cluster and ignores the list.
	InitialCluster string
	// PeerListen is the host:port this member listens on for its peers
	// (default: the host and port of its own InitialCluster entry; for a
	// single member, a free loopback port).
	PeerListen string
	// ElectionTimeout is etcd's election timeout (heartbeats are a tenth
	// of it); 0 means 500 ms.
	ElectionTimeout time.Duration
	// TLS, if set, serves clients and peers over mutual TLS only: client
	// and peer URLs are https, and a client's certificate common name is
	// its etcd user name (once auth is enabled).
	TLS *TLSFiles
}

// TLSFiles are a server's certificate and key and the CA its clients'
// certificates must come from (PEM files).
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
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
	if cfg.Name == "" {
		cfg.Name = EtcdMemberName
	}
	c := embed.NewConfig()
	c.Name = cfg.Name
	c.Dir = cfg.Dir
	var ap url.URL // the advertised peer URL
	peerAddr := cfg.PeerListen
	if cfg.InitialCluster != "" {
		own, err := OwnPeerURL(cfg.InitialCluster, cfg.Name)
		if err != nil {
			return nil, err
		}
		ap = *own
		if peerAddr == "" {
			peerAddr = own.Host
		}
		c.InitialCluster = cfg.InitialCluster
		if cfg.TLS != nil {
			// The scheme follows the security mode (the replicas are
			// listed the same way in either).
			c.InitialCluster = strings.ReplaceAll(c.InitialCluster, "http://", "https://")
			ap.Scheme = "https"
		}
		c.InitialClusterToken = "ringmaster"
	} else {
		host, _, _ := net.SplitHostPort(clientAddr)
		if peerAddr, err = resolvePort(net.JoinHostPort(loopbackIfAny(host), "0")); err != nil {
			return nil, err
		}
	}
	closing := new(atomic.Bool)
	c.ZapLoggerBuilder = embed.NewZapLoggerBuilder(log.Named("etcd").WithOptions(zap.IncreaseLevel(zap.WarnLevel),
		zap.WrapCore(func(core zapcore.Core) zapcore.Core { return quietOnClose{Core: core, closing: closing} })))
	scheme := "http://"
	if cfg.TLS != nil {
		scheme = "https://"
		t := cfg.TLS
		c.ClientTLSInfo.CertFile, c.ClientTLSInfo.KeyFile, c.ClientTLSInfo.TrustedCAFile = t.CertFile, t.KeyFile, t.CAFile
		c.ClientTLSInfo.ClientCertAuth = true
		c.PeerTLSInfo.CertFile, c.PeerTLSInfo.KeyFile, c.PeerTLSInfo.TrustedCAFile = t.CertFile, t.KeyFile, t.CAFile
		c.PeerTLSInfo.ClientCertAuth = true
		c.ClientAutoTLS, c.PeerAutoTLS = false, false
	}
	lc, _ := url.Parse(scheme + clientAddr)
	lp, _ := url.Parse(scheme + peerAddr)
	ac := *lc
	if cfg.AdvertiseHost != "" {
		_, port, _ := net.SplitHostPort(clientAddr)
		ac.Host = net.JoinHostPort(cfg.AdvertiseHost, port)
	} else if h := lc.Hostname(); h == "0.0.0.0" || h == "::" {
		_, port, _ := net.SplitHostPort(clientAddr)
		ac.Host = net.JoinHostPort("127.0.0.1", port)
	}
	if lp == nil || lp.Host == "" {
		return nil, fmt.Errorf("etcd peer address %q: want host:port", peerAddr)
	}
	if ap.Host == "" {
		ap = *lp
	}
	c.ListenClientUrls, c.AdvertiseClientUrls = []url.URL{*lc}, []url.URL{ac}
	c.ListenPeerUrls, c.AdvertisePeerUrls = []url.URL{*lp}, []url.URL{ap}
	if cfg.InitialCluster == "" {
		c.InitialCluster = c.InitialClusterFromName(c.Name)
	}
	// A short election timeout lets a restarted single member serve
	// within a second, and a cluster replace a dead leader within one:
	// the replicas of a control plane sit in one network (etcd's tuning
	// guide asks for about ten round trips). A slower network sets
	// ElectionTimeout.
	c.ElectionMs = 500
	if cfg.ElectionTimeout > 0 {
		c.ElectionMs = uint(cfg.ElectionTimeout.Milliseconds())
	}
	c.TickMs = max(c.ElectionMs/10, 10)
	// A quota keeps a runaway writer from filling the disk; etcd raises
	// an alarm and refuses writes past it (state stays small: finished
	// jobs expire).
	c.QuotaBackendBytes = 2 << 30
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
	case <-time.After(readyTimeout(cfg)):
		e.Server.Stop()
		e.Close()
		if cfg.InitialCluster != "" {
			return nil, fmt.Errorf("embedded etcd member %s did not join a quorum of %s within %v: start the other replicas, and check that their peer addresses are reachable", cfg.Name, cfg.InitialCluster, readyTimeout(cfg))
		}
		return nil, fmt.Errorf("embedded etcd did not become ready within %v", readyTimeout(cfg))
	}
	local := *lc
	if h := lc.Hostname(); h == "0.0.0.0" || h == "::" {
		_, port, _ := net.SplitHostPort(clientAddr)
		local.Host = net.JoinHostPort("127.0.0.1", port)
	}
	return &Etcd{e: e, endpoints: []string{ac.String()}, local: local.String(), listen: clientAddr, closing: closing}, nil
}

// readyTimeout is how long StartEtcd waits for the server: a cluster
// member waits for a quorum of its peers, which may start minutes apart.
func readyTimeout(cfg EtcdConfig) time.Duration {
	if cfg.InitialCluster != "" {
		return 5 * time.Minute
	}
	return time.Minute
}

// OwnPeerURL finds member name's peer URL in an initial-cluster list
// (name=http://host:port,...), checking the list's syntax.
func OwnPeerURL(initialCluster, name string) (*url.URL, error) {
	_, own, err := Members("--initial-cluster", initialCluster, name, "http", "https")
	return own, err
}

// Members parses a list of replicas as name=scheme://host:port,... (the
// value of flag), checking its syntax, and returns every URL in order and
// the one of replica name.
func Members(flag, list, name string, schemes ...string) (all []*url.URL, own *url.URL, err error) {
	seen := map[string]bool{}
	for _, m := range strings.Split(list, ",") {
		n, raw, ok := strings.Cut(strings.TrimSpace(m), "=")
		if !ok || n == "" {
			return nil, nil, fmt.Errorf("%s entry %q: want name=%s://host:port", flag, m, schemes[0])
		}
		u, err := url.Parse(raw)
		if err != nil || !slices.Contains(schemes, u.Scheme) || u.Port() == "" {
			return nil, nil, fmt.Errorf("%s entry %q: the URL must be %s://host:port", flag, m, schemes[0])
		}
		if seen[n] {
			return nil, nil, fmt.Errorf("%s names member %q twice", flag, n)
		}
		seen[n] = true
		all = append(all, u)
		if n == name {
			own = u
		}
	}
	if own == nil {
		return nil, nil, fmt.Errorf("%s %q has no entry for this replica's --name %q", flag, list, name)
	}
	return all, own, nil
}

// Endpoints returns the advertised client URLs.
func (e *Etcd) Endpoints() []string { return e.endpoints }

// ClientListen is the host:port the client listener is bound to.
func (e *Etcd) ClientListen() string { return e.listen }

// LocalEndpoint is the client URL by which this process reaches its own
// member.
func (e *Etcd) LocalEndpoint() string { return e.local }

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
