package state_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/internal/embedded"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/internal/state"
)

// etcd's users and roles as the coordinator sets them up: idempotent, and a
// worker may write its own registration and job keys, but not another
// worker's registration nor read the join tokens.
func TestAuthSetup(t *testing.T) {
	dir := t.TempDir()
	ca, err := pki.NewCA("test")
	if err != nil {
		t.Fatal(err)
	}
	server, err := ca.Issue(pki.Identity{Role: pki.RoleCoordinator, Name: "control-plane"}, pki.Hosts{"127.0.0.1", "localhost"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files := embedded.TLSFiles{CertFile: filepath.Join(dir, "s.crt"), KeyFile: filepath.Join(dir, "s.key"), CAFile: filepath.Join(dir, "ca.crt")}
	for p, b := range map[string]string{files.CertFile: server.Cert, files.KeyFile: server.Key, files.CAFile: server.CA} {
		if err := os.WriteFile(p, []byte(b), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	e, err := embedded.StartEtcd(embedded.EtcdConfig{Dir: filepath.Join(dir, "etcd"), TLS: &files}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	client := func(cred *pki.Credential) *clientv3.Client {
		cfg, err := cred.ClientTLS(nil)
		if err != nil {
			t.Fatal(err)
		}
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.LocalEndpoint()}, DialTimeout: 5 * time.Second, TLS: cfg})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cli.Close() })
		return cli
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := client(server)
	k := state.Keys{Prefix: "/authtest/"}
	for range 2 {
		if err := state.EnableAuth(ctx, root, k, server.CommonName()); err != nil {
			t.Fatal(err)
		}
		if err := state.EnsureWorkerUser(ctx, root, k, "w1"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := root.Put(ctx, k.Token("t"), "{}"); err != nil {
		t.Fatal(err)
	}
	w1cred, _ := ca.Issue(pki.Identity{Role: pki.RoleWorker, Name: "w1"}, nil, time.Hour)
	w1 := client(w1cred)
	for key, allowed := range map[string]bool{
		k.Worker("w1"):          true,
		k.Progress("job"):       true,
		k.Report("job", 0):      true,
		k.Worker("w0"):          false,
		k.Claim("w1"):           false,
		k.Token("t"):            false,
		"/elsewhere":            false,
		k.Prefix + "election/x": false,
	} {
		_, err := w1.Put(ctx, key, "{}")
		if (err == nil) != allowed {
			t.Errorf("worker w1 writing %s: %v (allowed: %v)", key, err, allowed)
		}
	}
	if _, err := w1.Get(ctx, k.Claim("w1")); err != nil {
		t.Errorf("worker reading its claim: %v", err)
	}
	if _, err := w1.Get(ctx, k.Token("t")); err == nil {
		t.Error("a worker read a join token")
	}
	// A worker whose user was never made is nobody to etcd.
	w2cred, _ := ca.Issue(pki.Identity{Role: pki.RoleWorker, Name: "w2"}, nil, time.Hour)
	if _, err := client(w2cred).Put(ctx, k.Worker("w2"), "{}"); err == nil {
		t.Error("a worker without an etcd user wrote its registration")
	}
}
