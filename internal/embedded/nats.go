package embedded

import (
	"fmt"
	"net"
	"strconv"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/zap"
)

// NATS is an embedded NATS server (core NATS; no JetStream).
type NATS struct {
	s   *server.Server
	url string
}

// StartNATS starts NATS on addr (host:port, port 0 picks one) and waits
// until it accepts connections.
func StartNATS(addr string, log *zap.Logger) (*NATS, error) {
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
	opts := &server.Options{Host: host, Port: port, NoSigs: true, MaxPayload: 8 << 20}
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
		url = fmt.Sprintf("nats://127.0.0.1:%d", s.Addr().(*net.TCPAddr).Port)
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
func (l natsLogger) Errorf(format string, v ...any)  { l.s.Errorf(format, v...) }
func (l natsLogger) Debugf(format string, v ...any)  { l.s.Debugf(format, v...) }
func (l natsLogger) Tracef(format string, v ...any)  { l.s.Debugf(format, v...) }
