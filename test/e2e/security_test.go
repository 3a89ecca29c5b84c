package e2e

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/events"
	"github.com/ringmaster/ringmaster/internal/pki"
)

// Every port of a cluster (the API, a worker's ring, etcd, NATS) refuses a
// client without a certificate, with a certificate of another CA, and with
// a valid certificate of the wrong role; each refusal is asserted, and
// nothing it tried to change is in etcd. Roles hold on the API: a worker
// cannot submit, view cannot cancel, submit cannot make tokens.
func TestEveryPortRefusesStrangers(t *testing.T) {
	c := startCluster(t)
	c.startWorker("sw", testLease)
	waitFor(t, time.Minute, "the worker to join and register", func() error {
		if ids := c.workerIDs(); len(ids) != 1 {
			return errors.New("not registered yet")
		}
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	info, err := c.client.Info(ctx, &pb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	workers, err := c.client.ListWorkers(ctx, &pb.ListWorkersRequest{})
	if err != nil {
		t.Fatal(err)
	}
	ringAddr := workers.Workers[0].Addr
	joined, err := pki.LoadCredential(filepath.Join(c.dir, "workers", "sw.credentials"))
	if err != nil {
		t.Fatalf("the worker's credential from its join: %v", err)
	}
	other, err := pki.NewCA("another cluster")
	if err != nil {
		t.Fatal(err)
	}
	issue := func(ca *pki.CA, role, name string) *pki.Credential {
		cred, err := ca.Issue(pki.Identity{Role: role, Name: name}, nil, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return cred
	}
	pool, err := joined.Pool()
	if err != nil {
		t.Fatal(err)
	}
	// clientTLS is a client of this cluster's servers holding cred (nil:
	// no certificate).
	clientTLS := func(cred *pki.Credential) *tls.Config {
		if cred == nil {
			return pki.PinnedClientTLS(pool, nil, nil)
		}
		pair, err := cred.TLSCertificate()
		if err != nil {
			t.Fatal(err)
		}
		return pki.PinnedClientTLS(pool, []tls.Certificate{pair}, nil)
	}
	strangers := map[string]*tls.Config{
		"no certificate":   clientTLS(nil),
		"another CA":       clientTLS(issue(other, pki.RoleAdmin, "admin")),
		"another CA's own": func() *tls.Config { cfg, _ := issue(other, pki.RoleAdmin, "admin").ClientTLS(nil); return cfg }(),
	}
	api := func(cfg *tls.Config) pb.CoordinatorClient {
		conn, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return pb.NewCoordinatorClient(conn)
	}
	spec := []byte("name: intruder\nmodel: cnn\nworkers: 1\nsteps: 10\n")

	t.Run("api", func(t *testing.T) {
		for name, cfg := range strangers {
			_, err := api(cfg).SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: spec})
			if code := status.Code(err); code != codes.Unauthenticated && code != codes.Unavailable {
				t.Errorf("submit with %s: %v, want Unauthenticated or a refused handshake", name, err)
			}
		}
		// A worker's identity cannot submit; the refusal names who lacked what.
		_, err := api(clientTLS(joined)).SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: spec})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "worker:sw") || !strings.Contains(err.Error(), "SubmitJob") {
			t.Errorf("submit as a worker: %v", err)
		}
		// A view credential, made with the CLI (a key made here, certified
		// by the coordinator), lists but cannot change.
		viewPath := filepath.Join(c.dir, "viewer.credentials")
		if out, err := c.cli("credentials", "create", "--name", "viewer", "--role", "view", "--out", viewPath); err != nil {
			t.Fatalf("credentials create: %v: %s", err, out)
		}
		view, err := pki.LoadCredential(viewPath)
		if err != nil {
			t.Fatal(err)
		}
		// --out - prints the credential (kubectl exec into an image
		// without a shell).
		if out, err := c.cli("credentials", "create", "--name", "printed", "--role", "view", "--out", "-"); err != nil {
			t.Errorf("credentials create --out -: %v: %s", err, out)
		} else if cred, err := pki.ParseCredential([]byte(out)); err != nil || cred.Identity != (pki.Identity{Role: pki.RoleView, Name: "printed"}) {
			t.Errorf("the printed credential: %v, %v", cred, err)
		}
		if _, err := api(clientTLS(view)).ListJobs(ctx, &pb.ListJobsRequest{}); err != nil {
			t.Errorf("list as view: %v", err)
		}
		for call, f := range map[string]func(pb.CoordinatorClient) error{
			"CancelJob": func(a pb.CoordinatorClient) error {
				_, err := a.CancelJob(ctx, &pb.CancelJobRequest{JobId: "any"})
				return err
			},
			"SubmitJob": func(a pb.CoordinatorClient) error {
				_, err := a.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: spec})
				return err
			},
		} {
			if err := f(api(clientTLS(view))); status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "view:viewer") {
				t.Errorf("%s as view: %v", call, err)
			}
		}
		if out, err := c.cli("list", "--credentials", viewPath); err != nil {
			t.Errorf("coordinator list --credentials VIEW: %v: %s", err, out)
		}
		submitter := issue(c.ca, pki.RoleSubmit, "bob")
		if _, err := api(clientTLS(submitter)).CreateToken(ctx, &pb.CreateTokenRequest{Role: pki.RoleWorker}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("token create as submit: %v", err)
		}
		if _, err := c.client.CreateToken(ctx, &pb.CreateTokenRequest{Role: pki.RoleAdmin}); status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "--role") {
			t.Errorf("a join token for admins: %v, want InvalidArgument naming --role", err)
		}
		// A join with a wrong secret gets nothing.
		tok, err := pki.ParseToken(c.joinToken())
		if err != nil {
			t.Fatal(err)
		}
		_, csr, _ := pki.NewCSR()
		if _, err := api(clientTLS(nil)).Join(ctx, &pb.JoinRequest{TokenId: tok.ID, TokenSecret: strings.Repeat("0", 32), WorkerId: "mallory", Csr: csr}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("join with a wrong secret: %v", err)
		}
		jobs, err := c.client.ListJobs(ctx, &pb.ListJobsRequest{})
		if err != nil || len(jobs.Jobs) != 0 {
			t.Errorf("after refused submissions: %d jobs, %v", len(jobs.GetJobs()), err)
		}
	})

	t.Run("ring", func(t *testing.T) {
		// The ring admits workers only; which worker may speak for which
		// rank is TestSecuredRingAdmitsOnlyTheGeneration's (pkg/allreduce).
		cases := map[string]*tls.Config{"admin of this cluster": clientTLS(issue(c.ca, pki.RoleAdmin, "root"))}
		for k, v := range strangers {
			cases[k] = v
		}
		for name, cfg := range cases {
			if err := handshakeAndRead(ringAddr, cfg); err == nil {
				t.Errorf("ring port accepted a client with %s", name)
			}
		}
		if err := handshakeAndRead(ringAddr, clientTLS(issue(c.ca, pki.RoleWorker, "peer"))); err != nil {
			t.Errorf("a worker of the cluster could not reach the ring port: %v", err)
		}
	})

	t.Run("etcd", func(t *testing.T) {
		root, err := clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: 10 * time.Second, TLS: c.rootTLS()})
		if err != nil {
			t.Fatal(err)
		}
		defer root.Close()
		forged := info.EtcdPrefix + "workers/forged"
		try := func(cfg *tls.Config, key string) error {
			cli, err := clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: 3 * time.Second, TLS: cfg})
			if err != nil {
				return err
			}
			defer cli.Close()
			cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			_, err = cli.Put(cctx, key, "{}")
			return err
		}
		cases := map[string]*tls.Config{
			"an admin (no etcd user)": clientTLS(issue(c.ca, pki.RoleAdmin, "admin")),
			"a worker, another's key": clientTLS(joined),
		}
		for k, v := range strangers {
			cases[k] = v
		}
		for name, cfg := range cases {
			if err := try(cfg, forged); err == nil {
				t.Errorf("etcd accepted a write from %s", name)
			}
		}
		// A worker cannot read the join tokens either.
		wcli, err := clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: 3 * time.Second, TLS: clientTLS(joined)})
		if err != nil {
			t.Fatal(err)
		}
		defer wcli.Close()
		if _, err := wcli.Get(ctx, strings.TrimSuffix(info.EtcdPrefix, "/")+"-auth/", clientv3.WithPrefix()); err == nil {
			t.Error("a worker read the join tokens")
		}
		if resp, err := root.Get(ctx, forged); err != nil || len(resp.Kvs) != 0 {
			t.Errorf("the forged registration: %v, %v", resp, err)
		}
	})

	t.Run("nats", func(t *testing.T) {
		connect := func(cfg *tls.Config, errc chan error) (*nats.Conn, error) {
			opts := []nats.Option{nats.Secure(cfg), nats.Timeout(5 * time.Second), nats.NoReconnect()}
			if errc != nil {
				opts = append(opts, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { errc <- err }))
			}
			return nats.Connect(info.NatsUrl, opts...)
		}
		cases := map[string]*tls.Config{"an admin": clientTLS(issue(c.ca, pki.RoleAdmin, "admin"))}
		for k, v := range strangers {
			cases[k] = v
		}
		for name, cfg := range cases {
			if nc, err := connect(cfg, nil); err == nil {
				nc.Close()
				t.Errorf("NATS accepted %s", name)
			}
		}
		got := make(chan string, 4)
		sub, err := events.Connect(info.NatsUrl, "e2e-root", c.rootTLS())
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		s, err := events.Subscribe(sub, "*", func(ev *pb.JobEvent, worker string) { got <- ev.JobId + "/" + worker })
		if err != nil {
			t.Fatal(err)
		}
		defer s.Unsubscribe()
		if err := sub.Flush(); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error, 4)
		nc, err := connect(clientTLS(joined), errc)
		if err != nil {
			t.Fatalf("a worker could not connect: %v", err)
		}
		defer nc.Close()
		// As another worker: refused. As itself: delivered, with its id.
		if err := events.NewPublisher(nc, events.PublisherToken("other")).Publish(&pb.JobEvent{JobId: "j1"}); err != nil {
			t.Fatal(err)
		}
		if err := events.NewPublisher(nc, events.PublisherToken("sw")).Publish(&pb.JobEvent{JobId: "j2"}); err != nil {
			t.Fatal(err)
		}
		if _, err := nc.SubscribeSync(events.JobSubjects("*")); err != nil {
			t.Fatal(err)
		}
		_ = nc.Flush()
		select {
		case ev := <-got:
			if ev != "j2/sw" {
				t.Errorf("first event delivered: %s, want j2/sw (the forged one must not arrive)", ev)
			}
		case <-time.After(10 * time.Second):
			t.Error("the worker's own event did not arrive")
		}
		violations := 0
		for deadline := time.After(5 * time.Second); violations < 2; {
			select {
			case err := <-errc:
				if strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
					violations++
				}
			case <-deadline:
				t.Fatalf("%d permission violations reported, want 2 (a forged publish and a subscription)", violations)
			}
		}
		select {
		case ev := <-got:
			t.Errorf("a forged event arrived: %s", ev)
		default:
		}
	})
}

// handshakeAndRead dials a TLS server and reads until it answers or
// closes: with TLS 1.3 a refused client certificate shows only then.
func handshakeAndRead(addr string, cfg *tls.Config) error {
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"} // gRPC servers require it
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, cfg)
	if err != nil {
		return err
	}
	defer conn.Close()
	// An HTTP/2 client preface: a gRPC server answers with its settings.
	if _, err := conn.Write([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")); err != nil {
		return err
	}
	_ = conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 9)
	_, err = conn.Read(buf)
	return err
}
