package embedded

import (
	"crypto/tls"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// NATS is an embedded NATS server (core NATS; no JetStream).
type NATS struct {
	s   *server.Server
	url string
}

// NATSCluster joins an embedded NATS server to the servers of the other
// coordinator replicas, so that an event published on one reaches
// subscribers on any other, and clients fail over between them.
type NATSCluster struct {
	// Listen is this server's route address (host:port).
	Listen string
	// Routes are every replica's route URLs (nats://host:port), this one
	// included (a route to itself is ignored).
	Routes []string
	// ClientAdvertise, if set, is the host:port this server tells clients
	// to reach it by (when it listens on all interfaces).
	ClientAdvertise string
}

// NATSSecurity makes an embedded NATS server TLS-only.
type NATSSecurity struct {
	// Clients is the TLS configuration clients are served with (it must
	// require and verify their certificates).
	Clients *tls.Config
	// Auth maps a verified client to a user and its permissions.
	Auth server.Authentication
	// Routes is the TLS configuration of the routes between replicas, as
	// server and as client.
	Routes *tls.Config
}

// MaxEventBytes bounds a NATS message (job events are a few hundred bytes).
const MaxEventBytes = 64 << 10

// StartNATS starts NATS on addr (host:port, port 0 picks one) and waits
// until it accepts connections; cluster, if not nil, joins it to the
// other replicas' servers; sec, if not nil, serves TLS only.
func StartNATS(addr string, cluster *NATSCluster, sec *NATSSecurity, log *zap.Logger) (*NATS, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("nats address %q: %w", addr, err)
	}
	port, err := strconv.Atoi(portStr)
	if err != nil {
		return nil, fmt.Errorf("nats address %q: %w", addr, err)
	}
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{Host: host, Port: port, NoSigs: true, MaxPayload: MaxEventBytes}
	if sec != nil {
		opts.TLSConfig, opts.TLS, opts.TLSVerify, opts.TLSTimeout = sec.Clients, true, true, 5
		opts.CustomClientAuthentication = sec.Auth
	}
	if cluster != nil {
		ch, cp, err := net.SplitHostPort(cluster.Listen)
		if err != nil {
			return nil, fmt.Errorf("NATS cluster address %q: %w", cluster.Listen, err)
		}
		if opts.Cluster.Port, err = strconv.Atoi(cp); err != nil {
			return nil, fmt.Errorf("NATS cluster address %q: %w", cluster.Listen, err)
		}
		opts.Cluster.Host, opts.Cluster.Name = ch, "ringmaster"
		if sec != nil {
			opts.Cluster.TLSConfig, opts.Cluster.TLSTimeout = sec.Routes, 5
		}
		opts.ClientAdvertise = cluster.ClientAdvertise
		for _, r := range cluster.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Scheme != "nats" || u.Port() == "" {
				return nil, fmt.Errorf("NATS route %q: want nats://host:port", r)
			}
			opts.Routes = append(opts.Routes, u)
		}
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return nil, fmt.Errorf("starting embedded NATS: %w", err)
	}
	s.SetLoggerV2(natsLogger{log.Named("nats").Sugar()}, false, false, false)
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return nil, fmt.Errorf("embedded NATS did not accept connections within 30s")
	}
	url := s.ClientURL()
	if h := host; h == "0.0.0.0" || h == "" || h == "::" {
		scheme := "nats"
		if sec != nil {
			scheme = "tls"
		}
		url = fmt.Sprintf("%s://127.0.0.1:%d", scheme, s.Addr().(*net.TCPAddr).Port)
	}
	return &NATS{s: s, url: url}, nil
}

// URL returns the client URL.
func (n *NATS) URL() string { return n.url }

// Close shuts the server down and waits for it.
func (n *NATS) Close() {
	n.s.Shutdown()
	n.s.WaitForShutdown()
}

// natsLogger adapts zap to nats-server's logger; notices become debug logs
// because the server is an implementation detail of the coordinator.
type natsLogger struct{ s *zap.SugaredLogger }

func (l natsLogger) Noticef(format string, v ...any) { l.s.Debugf(format, v...) }
func (l natsLogger) Warnf(format string, v ...any)   { l.s.Warnf(format, v...) }
func (l natsLogger) Fatalf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l natsLogger) Errorf(format string, v ...any) {
	if strings.HasPrefix(format, "Error trying to connect to route") {
		// A replica that is starting, restarting or down: NATS keeps
		// trying, and `coordinator members` shows which is missing.
		l.s.Debugf(format, v...)
		return
	}
	l.s.Errorf(format, v...)
}
func (l natsLogger) Debugf(format string, v ...any) { l.s.Debugf(format, v...) }
func (l natsLogger) Tracef(format string, v ...any) { l.s.Debugf(format, v...) }
