package pki

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The CA is made once and loaded after; credentials round-trip through
// their file; a credential whose parts do not belong together, or whose
// identity is not the certificate's, is refused.
func TestCAAndCredentials(t *testing.T) {
	dir := t.TempDir()
	ca, created, err := LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil || !created {
		t.Fatalf("create: %v %v", created, err)
	}
	again, created, err := LoadOrCreateCA(filepath.Join(dir, "pki"))
	if err != nil || created || again.Hash() != ca.Hash() {
		t.Fatalf("load: created %v, same %v, %v", created, again != nil && again.Hash() == ca.Hash(), err)
	}
	if st, err := os.Stat(filepath.Join(dir, "pki", CAKeyFile)); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("CA key mode: %v %v", st.Mode(), err)
	}
	cred, err := ca.Issue(Identity{Role: RoleView, Name: "alice"}, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "alice.credentials")
	if err := cred.Write(p); err != nil {
		t.Fatal(err)
	}
	back, err := LoadCredential(p)
	if err != nil || back.Identity != cred.Identity {
		t.Fatalf("round trip: %v %v", back, err)
	}
	// The file claims another role than its certificate.
	b, _ := os.ReadFile(p)
	if _, err := ParseCredential([]byte(strings.Replace(string(b), "role: view", "role: admin", 1))); err == nil {
		t.Error("a credential claiming a role its certificate lacks was accepted")
	}
	// A certificate of another CA with this CA's certificate.
	other, _ := NewCA("other")
	foreign, _ := other.Issue(Identity{Role: RoleAdmin, Name: "mallory"}, nil, time.Hour)
	foreign.CA = cred.CA
	if _, err := foreign.TLSCertificate(); err == nil {
		t.Error("a certificate of another CA was accepted")
	}
	for _, id := range []Identity{{"root", "x"}, {RoleWorker, ""}, {RoleWorker, "a b"}, {RoleAdmin, strings.Repeat("a", 129)}} {
		if _, err := ca.Issue(id, nil, time.Hour); err == nil {
			t.Errorf("identity %q was issued", id)
		}
	}
}

// Tokens parse back, and a secret matches only its own hash.
func TestTokens(t *testing.T) {
	ca, _ := NewCA("t")
	tok := NewToken(ca)
	back, err := ParseToken(tok.String())
	if err != nil || back != tok {
		t.Fatalf("parse %q: %v %v", tok, back, err)
	}
	if !SecretMatches(tok.Secret, tok.SecretHash()) || SecretMatches(NewToken(ca).Secret, tok.SecretHash()) {
		t.Error("secret matching is wrong")
	}
	if short, err := ParseToken(tok.ID + "." + tok.Secret); err != nil || short.CAHash != "" || short.Secret != tok.Secret {
		t.Errorf("a token without its CA hash: %v %v", short, err)
	}
	for _, bad := range []string{"", "a.b.c", tok.ID + "." + tok.Secret + ".", tok.String() + ".x", tok.ID, strings.ToUpper(tok.ID) + "z." + tok.Secret + "." + tok.CAHash} {
		if _, err := ParseToken(bad); err == nil {
			t.Errorf("token %q parsed", bad)
		}
	}
}

// A server of the cluster admits only the roles it is told, and a client
// pinned to a role refuses a server of another.
func TestServerAndClientTLS(t *testing.T) {
	ca, _ := NewCA("t")
	server, _ := ca.Issue(Identity{Role: RoleCoordinator, Name: "c"}, Hosts{"127.0.0.1"}, time.Hour)
	scfg, err := server.ServerTLS(false, RoleWorker)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			go func() {
				_ = c.(*tls.Conn).Handshake()
				_, _ = c.Write([]byte("ok"))
				c.Close()
			}()
		}
	}()
	dial := func(cred *Credential, check func(Identity) error) error {
		cfg, err := cred.ClientTLS(check)
		if err != nil {
			return err
		}
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", lis.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		buf := make([]byte, 2)
		_, err = c.Read(buf) // TLS 1.3: a refused client certificate shows on the first read
		return err
	}
	worker, _ := ca.Issue(Identity{Role: RoleWorker, Name: "w"}, nil, time.Hour)
	admin, _ := ca.Issue(Identity{Role: RoleAdmin, Name: "a"}, nil, time.Hour)
	if err := dial(worker, HasRole(RoleCoordinator)); err != nil {
		t.Errorf("worker to coordinator: %v", err)
	}
	if err := dial(admin, HasRole(RoleCoordinator)); err == nil {
		t.Error("an admin reached a worker-only server")
	}
	if err := dial(worker, HasRole(RoleWorker)); err == nil || !strings.Contains(err.Error(), "expected the role worker") {
		t.Errorf("a client pinned to workers accepted a coordinator: %v", err)
	}
}

// A joining client with only a token's CA hash accepts the cluster's
// coordinator and refuses a server of another CA.
func TestTokenPinnedTLS(t *testing.T) {
	ca, _ := NewCA("t")
	other, _ := NewCA("other")
	serve := func(ca *CA) string {
		server, _ := ca.Issue(Identity{Role: RoleCoordinator, Name: "c"}, Hosts{"127.0.0.1"}, time.Hour)
		cfg, err := server.ServerTLS(true)
		if err != nil {
			t.Fatal(err)
		}
		lis, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lis.Close() })
		go func() {
			for {
				c, err := lis.Accept()
				if err != nil {
					return
				}
				_ = c.(*tls.Conn).Handshake()
				c.Close()
			}
		}()
		return lis.Addr().String()
	}
	dial := func(addr, hash string, check func(Identity) error) error {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", addr, TokenPinnedTLS(hash, check))
		if err == nil {
			c.Close()
		}
		return err
	}
	ours, theirs := serve(ca), serve(other)
	if err := dial(ours, ca.Hash(), HasRole(RoleCoordinator)); err != nil {
		t.Errorf("the pinned coordinator: %v", err)
	}
	if err := dial(theirs, ca.Hash(), HasRole(RoleCoordinator)); err == nil || !strings.Contains(err.Error(), "join token's hash") {
		t.Errorf("a server of another CA: %v", err)
	}
	if err := dial(ours, ca.Hash(), HasRole(RoleWorker)); err == nil {
		t.Error("a coordinator passed a check for workers")
	}
}
