// Package health serves the HTTP probes an orchestrator asks a process
// for: /healthz (the process answers: it is alive) and /readyz (it can do
// its work now: the coordinator reaches an etcd quorum, the worker's
// registration is confirmed). They carry no data worth protecting and are
// served in plain HTTP on their own port, apart from the mutual-TLS
// services, since kubelet probes cannot present a client certificate.
package health

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"
)

// checkTimeout bounds one readiness check.
const checkTimeout = 2 * time.Second

// Server serves /healthz and /readyz until Close.
type Server struct {
	srv  *http.Server
	lis  net.Listener
	done chan error
}

// Serve listens on addr (host:port; port 0 picks one) and answers
// /readyz with ready's verdict: nil is 200 "ready", an error is 503 with
// the error's text.
func Serve(addr string, ready func(context.Context) error) (*Server, error) {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("health listen %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), checkTimeout)
		defer cancel()
		if err := ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = fmt.Fprintln(w, "ready")
	})
	s := &Server{srv: &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ReadTimeout: 5 * time.Second,
		WriteTimeout: checkTimeout + 5*time.Second, MaxHeaderBytes: 16 << 10}, lis: lis, done: make(chan error, 1)}
	go func() { s.done <- s.srv.Serve(lis) }()
	return s, nil
}

// Addr is where the probes are served.
func (s *Server) Addr() string { return s.lis.Addr().String() }

// Close stops serving, giving requests in flight a moment.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), checkTimeout)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	if serr := <-s.done; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
