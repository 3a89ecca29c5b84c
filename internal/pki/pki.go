package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Roles. Users hold admin, submit or view; workers hold worker; the
// coordinator replicas hold coordinator.
const (
	RoleAdmin       = "admin"
	RoleSubmit      = "submit"
	RoleView        = "view"
	RoleWorker      = "worker"
	RoleCoordinator = "coordinator"
)

// UserRoles are the roles a user credential may carry.
var UserRoles = []string{RoleAdmin, RoleSubmit, RoleView}

// Validity of what the CA signs.
const (
	CAValidity   = 10 * 365 * 24 * time.Hour
	LeafValidity = 365 * 24 * time.Hour
	// clockSkew backdates certificates so that a peer whose clock is a
	// little behind accepts them at once.
	clockSkew = 5 * time.Minute
)

// Identity is who a certificate speaks for.
type Identity struct {
	Role string
	Name string
}

// CommonName is the certificate subject's common name, "role:name".
func (id Identity) CommonName() string { return id.Role + ":" + id.Name }

func (id Identity) String() string { return id.CommonName() }

// Validate checks that the role is known and the name usable.
func (id Identity) Validate() error {
	if !slices.Contains(append([]string{RoleWorker, RoleCoordinator}, UserRoles...), id.Role) {
		return fmt.Errorf("role %q is not one of admin, submit, view, worker, coordinator", id.Role)
	}
	if id.Name == "" || len(id.Name) > 128 {
		return fmt.Errorf("identity name %q: give 1 to 128 characters", id.Name)
	}
	for _, r := range id.Name {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.@", r)) {
			return fmt.Errorf("identity name %q: use letters, digits and - _ . @ only", id.Name)
		}
	}
	return nil
}

// IdentityOf reads the identity a certificate of this CA carries.
func IdentityOf(c *x509.Certificate) (Identity, error) {
	role, name, ok := strings.Cut(c.Subject.CommonName, ":")
	id := Identity{Role: role, Name: name}
	if !ok || len(c.Subject.OrganizationalUnit) != 1 || c.Subject.OrganizationalUnit[0] != role {
		return id, fmt.Errorf("certificate %q carries no Ringmaster identity (want common name role:name and the role as its organisational unit)", c.Subject.CommonName)
	}
	return id, id.Validate()
}

// CA is the cluster's certificate authority.
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// CertPEM is Cert, PEM-encoded (what peers are given to trust).
	CertPEM []byte
}

// CA file names in a PKI directory (also what a Kubernetes TLS Secret
// holds, under tls.crt and tls.key, which LoadCA accepts too).
const (
	CACertFile = "ca.crt"
	CAKeyFile  = "ca.key"
)

// LoadOrCreateCA loads the CA kept in dir, creating one (and dir) if there
// is none. created reports whether it was made now.
func LoadOrCreateCA(dir string) (ca *CA, created bool, err error) {
	certPath, keyPath := filepath.Join(dir, CACertFile), filepath.Join(dir, CAKeyFile)
	if _, err := os.Stat(certPath); err == nil {
		ca, err := LoadCA(certPath, keyPath)
		return ca, false, err
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, false, err
	}
	ca, err = NewCA("Ringmaster CA")
	if err != nil {
		return nil, false, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, false, err
	}
	keyPEM, err := EncodeKey(ca.Key)
	if err != nil {
		return nil, false, err
	}
	// The key first: a certificate without its key would be loaded next
	// time and fail; a key without its certificate is made again.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return nil, false, err
	}
	if err := writeFileAtomic(certPath, ca.CertPEM, 0o644); err != nil {
		return nil, false, err
	}
	return ca, true, nil
}

// LoadCADir loads a CA from a directory holding ca.crt and ca.key, or
// tls.crt and tls.key (a mounted Kubernetes TLS Secret).
func LoadCADir(dir string) (*CA, error) {
	for _, pair := range [][2]string{{CACertFile, CAKeyFile}, {"tls.crt", "tls.key"}} {
		c := filepath.Join(dir, pair[0])
		if _, err := os.Stat(c); err == nil {
			return LoadCA(c, filepath.Join(dir, pair[1]))
		}
	}
	return nil, fmt.Errorf("%s holds no CA: put ca.crt and ca.key (or tls.crt and tls.key) there", dir)
}

// LoadCA reads a CA certificate and its key.
func LoadCA(certPath, keyPath string) (*CA, error) {
	certPEM, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	cert, err := ParseCertPEM(certPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", certPath, err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("%s is not a CA certificate", certPath)
	}
	key, err := ParseKeyPEM(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", keyPath, err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return nil, fmt.Errorf("%s does not belong to %s", keyPath, certPath)
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})}, nil
}

// NewCA makes a CA in memory.
func NewCA(name string) (*CA, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Ringmaster"}},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(CAValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

// Hash is the CA's pin: the hex SHA-256 of its certificate.
func (ca *CA) Hash() string { return CertHash(ca.Cert) }

// CertHash is the hex SHA-256 of a certificate.
func CertHash(c *x509.Certificate) string {
	h := sha256.Sum256(c.Raw)
	return hex.EncodeToString(h[:])
}

// Hosts are the names and addresses a server certificate is valid for.
type Hosts []string

// Sign issues a certificate for id on pub. Hosts (DNS names or IP
// addresses) make it a server certificate as well as a client one.
func (ca *CA) Sign(id Identity, pub crypto.PublicKey, hosts Hosts, validity time.Duration) ([]byte, error) {
	if err := id.Validate(); err != nil {
		return nil, err
	}
	if validity <= 0 {
		validity = LeafValidity
	}
	now := time.Now()
	notAfter := now.Add(validity)
	if notAfter.After(ca.Cert.NotAfter) {
		notAfter = ca.Cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: id.CommonName(), OrganizationalUnit: []string{id.Role}, Organization: []string{"Ringmaster"}},
		NotBefore:    now.Add(-clockSkew),
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
	}
	for _, h := range hosts {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if !slices.Contains(tmpl.DNSNames, h) {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, pub, ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}

// Issue makes a key and a certificate for id: a whole credential.
func (ca *CA) Issue(id Identity, hosts Hosts, validity time.Duration) (*Credential, error) {
	key, err := NewKey()
	if err != nil {
		return nil, err
	}
	certPEM, err := ca.Sign(id, key.Public(), hosts, validity)
	if err != nil {
		return nil, err
	}
	keyPEM, err := EncodeKey(key)
	if err != nil {
		return nil, err
	}
	return &Credential{Identity: id, CA: string(ca.CertPEM), Cert: string(certPEM), Key: string(keyPEM)}, nil
}

// SignCSR issues a certificate for id on the key of a PKCS #10 request
// (whose own subject is ignored: the CA decides who the holder is).
func (ca *CA) SignCSR(id Identity, csrDER []byte, validity time.Duration) ([]byte, error) {
	if len(csrDER) > 16<<10 {
		return nil, fmt.Errorf("certificate request of %d bytes; at most 16 KiB", len(csrDER))
	}
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("certificate request: %w", err)
	}
	return ca.Sign(id, csr.PublicKey, nil, validity)
}

// NewKey makes a P-256 key.
func NewKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

// NewCSR makes a key and a certificate request on it.
func NewCSR() (key *ecdsa.PrivateKey, csrDER []byte, err error) {
	key, err = NewKey()
	if err != nil {
		return nil, nil, err
	}
	csrDER, err = x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "ringmaster join"}}, key)
	return key, csrDER, err
}

// ParseCertPEM reads the first certificate of a PEM block list.
func ParseCertPEM(b []byte) (*x509.Certificate, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM certificate found")
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
}

// ParseKeyPEM reads a PEM private key (PKCS #8, SEC 1 or PKCS #1).
func ParseKeyPEM(b []byte) (crypto.Signer, error) {
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return nil, errors.New("no PEM private key found")
		}
		if !strings.HasSuffix(blk.Type, "PRIVATE KEY") {
			continue
		}
		if k, err := x509.ParsePKCS8PrivateKey(blk.Bytes); err == nil {
			if s, ok := k.(crypto.Signer); ok {
				return s, nil
			}
		}
		if k, err := x509.ParseECPrivateKey(blk.Bytes); err == nil {
			return k, nil
		}
		if k, err := x509.ParsePKCS1PrivateKey(blk.Bytes); err == nil {
			return k, nil
		}
		return nil, errors.New("unsupported private key")
	}
}

// EncodeKey writes a private key as PKCS #8 PEM.
func EncodeKey(k crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	e, ok := a.(interface{ Equal(crypto.PublicKey) bool })
	return ok && e.Equal(b)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

// writeFileAtomic writes through a temporary file and a rename, so that a
// crash leaves the old file or the new one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(perm); err != nil {
		tmp.Close()
		return err
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
