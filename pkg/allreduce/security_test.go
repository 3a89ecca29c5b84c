package allreduce

import (
	"context"
	"crypto/tls"
	"net"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/pkg/allreduce/ringpb"
)

// securedNode is a worker's ring endpoint serving mutual TLS with cred.
func securedNode(t *testing.T, cred *pki.Credential) (*grpcNode, *Security) {
	t.Helper()
	pair, err := cred.TLSCertificate()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := cred.Pool()
	if err != nil {
		t.Fatal(err)
	}
	sec := TLSSecurity(pair, pool, pki.WorkerName)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hub := NewHub(zap.NewNop(), sec)
	srv := grpc.NewServer(ServerOptions(sec)...)
	hub.Register(srv)
	go srv.Serve(lis)
	t.Cleanup(srv.Stop)
	return &grpcNode{hub: hub, srv: srv, addr: lis.Addr().String(), lis: lis}, sec
}

func issue(t *testing.T, ca *pki.CA, role, name string) *pki.Credential {
	t.Helper()
	c, err := ca.Issue(pki.Identity{Role: role, Name: name}, pki.Hosts{"127.0.0.1"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Only the workers a generation assigns take part in it: the members run
// their all-reduce over mutual TLS, while a worker of the same cluster
// that is not assigned the rank it claims, a certificate of another CA, a
// client without a certificate and a non-worker identity are refused, and
// an abort from a stranger is not delivered.
func TestSecuredRingAdmitsOnlyTheGeneration(t *testing.T) {
	ca, err := pki.NewCA("test CA")
	if err != nil {
		t.Fatal(err)
	}
	n0, _ := securedNode(t, issue(t, ca, pki.RoleWorker, "w0"))
	n1, _ := securedNode(t, issue(t, ca, pki.RoleWorker, "w1"))
	ids := []string{"w0", "w1"}
	addrs := []string{n0.addr, n1.addr}

	// The members.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	trs := make([]Transport, 2)
	errs := make(chan error, 2)
	for r, n := range []*grpcNode{n0, n1} {
		go func() {
			var err error
			trs[r], err = n.hub.Dial(ctx, Peering{Job: "j", Generation: 1, Rank: r, World: 2, Addrs: addrs, Identities: ids})
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	bufs := [][]float32{{1, 2}, {10, 20}}
	for r := range 2 {
		c, err := New(Config{Rank: r, World: 2, Generation: 1, Timeout: 20 * time.Second}, trs[r])
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go func() { errs <- c.AllReduce(ctx, bufs[r], Sum) }()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if bufs[0][0] != 11 || bufs[1][1] != 22 {
		t.Fatalf("all-reduce over TLS: %v", bufs)
	}

	// A worker of the cluster claiming rank 0 of generation 2, which w1
	// has set up with w0 as rank 0.
	gen2 := make(chan error, 1)
	gctx, gcancel := context.WithTimeout(ctx, 20*time.Second)
	defer gcancel()
	go func() {
		tr, err := n1.hub.Dial(gctx, Peering{Job: "j", Generation: 2, Rank: 1, World: 2, Addrs: addrs, Identities: ids})
		if err == nil {
			tr.Close(gctx)
		}
		gen2 <- err
	}()
	intruder, _ := securedNode(t, issue(t, ca, pki.RoleWorker, "intruder"))
	dctx, dcancel := context.WithTimeout(ctx, 10*time.Second)
	_, err = intruder.hub.Dial(dctx, Peering{Job: "j", Generation: 2, Rank: 0, World: 2, Addrs: []string{intruder.addr, n1.addr}, Identities: ids})
	dcancel()
	if err == nil || !strings.Contains(err.Error(), "not assigned") {
		t.Errorf("a worker outside the generation dialled in: %v", err)
	}

	// An abort for generation 1's rank 1, sent by the intruder as rank 0.
	abort := func(cred *pki.Credential, tlsCfg *tls.Config) error {
		if tlsCfg == nil {
			pair, _ := cred.TLSCertificate()
			pool, _ := cred.Pool()
			tlsCfg = &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: pool, ServerName: "127.0.0.1"}
		}
		conn, err := grpc.NewClient(n1.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)),
			grpc.WithDefaultCallOptions(grpc.ForceCodecV2(rawCodec{})))
		if err != nil {
			return err
		}
		defer conn.Close()
		ctl, _ := proto.Marshal(&ringpb.Abort{Job: "j", Generation: 1, FromRank: 0, ToRank: 1, Seq: 99, Culprit: -1, WaitingOn: -1, Reason: "forged"})
		o := getOutFrame()
		o.kind, o.ctl = kindAbort, ctl
		ack := getInFrame()
		defer ack.release()
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		return o.send(func(m any) error { return conn.Invoke(cctx, methodAbort, m, ack) })
	}
	if err := abort(issue(t, ca, pki.RoleWorker, "intruder"), nil); status.Code(err) != codes.PermissionDenied {
		t.Errorf("abort from a worker outside the generation: %v, want PermissionDenied", err)
	}
	other, err := pki.NewCA("another CA")
	if err != nil {
		t.Fatal(err)
	}
	pool, _ := issue(t, ca, pki.RoleWorker, "x").Pool()
	forged := issue(t, other, pki.RoleWorker, "w0") // the right name, the wrong CA
	fpair, _ := forged.TLSCertificate()
	for name, cfg := range map[string]*tls.Config{
		"another CA":     {Certificates: []tls.Certificate{fpair}, RootCAs: pool, ServerName: "127.0.0.1"},
		"no certificate": {RootCAs: pool, ServerName: "127.0.0.1"},
	} {
		if err := abort(nil, cfg); status.Code(err) != codes.Unavailable {
			t.Errorf("abort with %s: %v, want the handshake refused (Unavailable)", name, err)
		}
	}
	if err := abort(issue(t, ca, pki.RoleAdmin, "root"), nil); status.Code(err) != codes.Unavailable {
		t.Errorf("abort with an admin certificate: %v, want the handshake refused", err)
	}
	select {
	case n := <-trs[1].Notices():
		t.Errorf("a refused abort was delivered: %+v", n)
	default:
	}
	gcancel()
	<-gen2
	for _, tr := range trs {
		tr.Close(ctx)
	}
}
