package pki

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"gopkg.in/yaml.v3"
)

// Credential is one identity's key and certificate with the CA that
// signed it: the contents of a credential file.
type Credential struct {
	Identity `yaml:"-"`
	// Coordinator is the API address the credential is for (optional;
	// --addr and RINGMASTER_ADDR take precedence).
	Coordinator string
	CA          string
	Cert        string
	Key         string
}

type credentialFile struct {
	Role        string `yaml:"role"`
	Name        string `yaml:"name"`
	Coordinator string `yaml:"coordinator,omitempty"`
	CA          string `yaml:"ca"`
	Cert        string `yaml:"cert"`
	Key         string `yaml:"key"`
}

// MaxCredentialBytes bounds a credential file.
const MaxCredentialBytes = 64 << 10

// Marshal writes the credential as YAML.
func (c *Credential) Marshal() ([]byte, error) {
	b, err := yaml.Marshal(credentialFile{Role: c.Role, Name: c.Name, Coordinator: c.Coordinator, CA: c.CA, Cert: c.Cert, Key: c.Key})
	if err != nil {
		return nil, err
	}
	head := fmt.Sprintf("# Ringmaster credential of %s (role %s). Keep it secret: it is a private key.\n", c.Name, c.Role)
	return append([]byte(head), b...), nil
}

// Write saves the credential to path, readable by its owner only.
func (c *Credential) Write(path string) error {
	b, err := c.Marshal()
	if err != nil {
		return err
	}
	return writeFileAtomic(path, b, 0o600)
}

// ParseCredential reads a credential and checks that its parts belong
// together.
func ParseCredential(b []byte) (*Credential, error) {
	if len(b) > MaxCredentialBytes {
		return nil, fmt.Errorf("%d bytes; a credential file has at most %d", len(b), MaxCredentialBytes)
	}
	var f credentialFile
	if err := yaml.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("not a credential file: %w", err)
	}
	c := &Credential{Identity: Identity{Role: f.Role, Name: f.Name}, Coordinator: f.Coordinator, CA: f.CA, Cert: f.Cert, Key: f.Key}
	if _, err := c.TLSCertificate(); err != nil {
		return nil, err
	}
	return c, nil
}

// LoadCredential reads a credential file.
func LoadCredential(path string) (*Credential, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := ParseCredential(b)
	if err != nil {
		return nil, fmt.Errorf("credential file %s: %w", path, err)
	}
	return c, nil
}

// TLSCertificate is the credential's key pair, checked against its CA and
// its claimed identity.
func (c *Credential) TLSCertificate() (tls.Certificate, error) {
	pair, err := tls.X509KeyPair([]byte(c.Cert), []byte(c.Key))
	if err != nil {
		return pair, fmt.Errorf("cert and key: %w", err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return pair, err
		}
	}
	pool, err := c.Pool()
	if err != nil {
		return pair, err
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return pair, fmt.Errorf("the certificate does not verify against the credential's CA: %w", err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return pair, err
	}
	if c.Role != "" && id != c.Identity {
		return pair, fmt.Errorf("the certificate is %s, the file says %s", id, c.Identity)
	}
	c.Identity = id
	// The chain carries the CA too: a joining worker, which has only the
	// CA's hash, verifies the server against it.
	if ca, err := ParseCertPEM([]byte(c.CA)); err == nil {
		pair.Certificate = append(pair.Certificate, ca.Raw)
	}
	return pair, nil
}

// Pool is the credential's CA as a certificate pool.
func (c *Credential) Pool() (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(c.CA)) {
		return nil, errors.New("the credential holds no CA certificate")
	}
	return pool, nil
}

// ServerTLS is the TLS configuration of a server holding this credential.
// Clients must present a certificate of the CA whose identity has one of
// roles (any role if none given); with optional, a client may also come
// without a certificate (the API's Join, which a token authorises), and
// the server decides per call.
func (c *Credential) ServerTLS(optional bool, roles ...string) (*tls.Config, error) {
	pair, err := c.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, err := c.Pool()
	if err != nil {
		return nil, err
	}
	auth := tls.RequireAndVerifyClientCert
	if optional {
		auth = tls.VerifyClientCertIfGiven
	}
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   auth,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return nil // optional, and checked per call
			}
			return checkRole(cs.PeerCertificates[0], roles)
		},
	}, nil
}

// ClientTLS is the TLS configuration of a client holding this credential
// that talks to a server of the same CA whose identity passes check (nil:
// any identity of the CA).
func (c *Credential) ClientTLS(check func(Identity) error) (*tls.Config, error) {
	pair, err := c.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, err := c.Pool()
	if err != nil {
		return nil, err
	}
	return PinnedClientTLS(pool, []tls.Certificate{pair}, check), nil
}

// PinnedClientTLS verifies the server's chain against pool and its
// identity with check, by role and name rather than host name (see the
// package comment).
func PinnedClientTLS(pool *x509.CertPool, certs []tls.Certificate, check func(Identity) error) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		Certificates:       certs,
		RootCAs:            pool,
		InsecureSkipVerify: true, // verified below, by identity instead of host name
		VerifyConnection: func(cs tls.ConnectionState) error {
			return verifyServer(cs, pool, check)
		},
	}
}

// TokenPinnedTLS is the TLS configuration of a client that has no
// credential yet, only a join token: the server's chain must carry the CA
// whose hash the token names (servers send it, see TLSCertificate), and
// the server must verify against it and pass check.
func TokenPinnedTLS(caHash string, check func(Identity) error) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS13,
		InsecureSkipVerify: true, // verified below, against the pinned CA
		VerifyConnection: func(cs tls.ConnectionState) error {
			for _, ca := range cs.PeerCertificates[min(1, len(cs.PeerCertificates)):] {
				if CertHash(ca) == caHash {
					pool := x509.NewCertPool()
					pool.AddCert(ca)
					return verifyServer(cs, pool, check)
				}
			}
			return errors.New("the server's CA does not match the join token's hash: the token is for another cluster, or someone is in between")
		},
	}
}

// verifyServer checks a server's chain against pool and its identity.
func verifyServer(cs tls.ConnectionState, pool *x509.CertPool, check func(Identity) error) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("the server sent no certificate")
	}
	inter := x509.NewCertPool()
	for _, ic := range cs.PeerCertificates[1:] {
		inter.AddCert(ic)
	}
	leaf := cs.PeerCertificates[0]
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("the server's certificate is not from this cluster's CA: %w", err)
	}
	id, err := IdentityOf(leaf)
	if err != nil {
		return err
	}
	if check != nil {
		return check(id)
	}
	return nil
}

// HasRole is a check for ClientTLS: the peer must hold one of roles.
func HasRole(roles ...string) func(Identity) error {
	return func(id Identity) error {
		if !slices.Contains(roles, id.Role) {
			return fmt.Errorf("the peer is %s; expected the role %s", id, strings.Join(roles, " or "))
		}
		return nil
	}
}

func checkRole(leaf *x509.Certificate, roles []string) error {
	id, err := IdentityOf(leaf)
	if err != nil {
		return err
	}
	if len(roles) > 0 && !slices.Contains(roles, id.Role) {
		return fmt.Errorf("identity %s may not connect here (roles allowed: %s)", id, strings.Join(roles, ", "))
	}
	return nil
}

// PeerIdentity is the verified identity of a gRPC call's peer; ok is false
// when the peer presented no certificate (or the connection is not TLS).
func PeerIdentity(ctx context.Context) (Identity, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, false
	}
	ti, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(ti.State.PeerCertificates) == 0 {
		return Identity{}, false
	}
	id, err := IdentityOf(ti.State.PeerCertificates[0])
	if err != nil {
		return Identity{}, false
	}
	return id, true
}

// WorkerName is the worker id a certificate of this CA speaks for; other
// identities are refused (the ring's identify function).
func WorkerName(c *x509.Certificate) (string, error) {
	id, err := IdentityOf(c)
	if err != nil {
		return "", err
	}
	if id.Role != RoleWorker {
		return "", fmt.Errorf("%s is not a worker", id)
	}
	return id.Name, nil
}

// ExternalTLS names the PEM files for a server that is not the cluster's
// own (an operator's etcd or NATS): its CA, and the client certificate
// and key to present. Empty fields fall back to the cluster credential.
type ExternalTLS struct {
	CAFile, CertFile, KeyFile string
}

// Set reports whether any file is named.
func (e ExternalTLS) Set() bool { return e.CAFile != "" || e.CertFile != "" || e.KeyFile != "" }

// ClientFor is the client TLS for a server at a URL with scheme: nil for
// a plain scheme (http, nats); otherwise the files named in e, or else
// cred (which verifies the server against the cluster's CA, as the
// embedded servers are). cred may be nil only with files.
func ClientFor(scheme string, e ExternalTLS, cred *Credential) (*tls.Config, error) {
	switch scheme {
	case "http", "nats":
		return nil, nil
	}
	if !e.Set() {
		if cred == nil {
			return nil, errors.New("a TLS server needs a credential or --etcd-/--nats- TLS files")
		}
		return cred.ClientTLS(nil)
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if e.CAFile != "" {
		b, err := os.ReadFile(e.CAFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(b) {
			return nil, fmt.Errorf("%s holds no PEM certificate", e.CAFile)
		}
	}
	if e.CertFile != "" || e.KeyFile != "" {
		pair, err := tls.LoadX509KeyPair(e.CertFile, e.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

// SchemeOf is the scheme of an endpoint URL ("http" for host:port).
func SchemeOf(endpoint string) string {
	if i := strings.Index(endpoint, "://"); i > 0 {
		return endpoint[:i]
	}
	return "http"
}
