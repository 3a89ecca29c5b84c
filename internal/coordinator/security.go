package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/embedded"
	"github.com/ringmaster/ringmaster/internal/events"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/internal/state"
)

// CoordinatorIdentity is every replica's identity (and etcd user): the
// replicas share one CA and act alike.
var CoordinatorIdentity = pki.Identity{Role: pki.RoleCoordinator, Name: "control-plane"}

// AdminCredentialFile is where serve writes the first admin credential,
// in its data directory.
const AdminCredentialFile = "admin.credentials"

// security is what a coordinator that serves TLS holds.
type security struct {
	ca   *pki.CA
	cred *pki.Credential // the replica's own: server and client
	// files for the embedded etcd, which reads PEM files.
	files embedded.TLSFiles
}

// setupPKI loads or creates the CA, issues this replica's certificate for
// the hosts it is reached at, and writes the admin credential if there is
// none.
func (c *Coordinator) setupPKI() error {
	dir := filepath.Join(c.cfg.DataDir, "pki")
	var ca *pki.CA
	var err error
	if c.cfg.CADir != "" {
		ca, err = pki.LoadCADir(c.cfg.CADir)
	} else {
		var created bool
		ca, created, err = pki.LoadOrCreateCA(dir)
		if created {
			c.log.Info("created the cluster's CA", zap.String("dir", dir))
		}
	}
	if err != nil {
		return fmt.Errorf("CA: %w", err)
	}
	// A fresh certificate at every start: new names are picked up, and
	// rotation is a restart (docs/security.md).
	cred, err := ca.Issue(CoordinatorIdentity, c.serverHosts(), pki.LeafValidity)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := embedded.TLSFiles{CertFile: filepath.Join(dir, "server.crt"), KeyFile: filepath.Join(dir, "server.key"), CAFile: filepath.Join(dir, "server-ca.crt")}
	for _, f := range []struct {
		path string
		data string
		mode os.FileMode
	}{{files.KeyFile, cred.Key, 0o600}, {files.CertFile, cred.Cert, 0o644}, {files.CAFile, cred.CA, 0o644}} {
		if err := os.WriteFile(f.path, []byte(f.data), f.mode); err != nil {
			return err
		}
	}
	c.sec = &security{ca: ca, cred: cred, files: files}
	adminPath := filepath.Join(c.cfg.DataDir, AdminCredentialFile)
	// Made once; made again when the CA changed (rotation), since the old
	// one then verifies nowhere.
	if old, err := pki.LoadCredential(adminPath); errors.Is(err, os.ErrNotExist) || (err == nil && old.CA != string(ca.CertPEM)) {
		admin, err := ca.Issue(pki.Identity{Role: pki.RoleAdmin, Name: "admin"}, nil, pki.LeafValidity)
		if err != nil {
			return err
		}
		if err := admin.Write(adminPath); err != nil {
			return fmt.Errorf("admin credential: %w", err)
		}
		c.log.Info("wrote the admin credential; the CLI finds it in the data directory, or give it with --credentials / RINGMASTER_CREDENTIALS", zap.String("path", adminPath))
	}
	return nil
}

// serverHosts are the names and addresses this replica's certificate is
// valid for: loopback, the host name, the advertised host, the API's
// listen host, the replica's own etcd peer and NATS route hosts, and
// Config.TLSHosts.
func (c *Coordinator) serverHosts() pki.Hosts {
	hosts := pki.Hosts{"localhost", "127.0.0.1", "::1"}
	if h, err := os.Hostname(); err == nil {
		hosts = append(hosts, h)
	}
	add := func(hostport string) {
		if h, _, err := net.SplitHostPort(hostport); err == nil && h != "" && h != "0.0.0.0" && h != "::" {
			hosts = append(hosts, h)
		}
	}
	add(c.cfg.Listen)
	add(c.cfg.EmbeddedEtcdListen)
	add(c.cfg.EmbeddedNATSListen)
	if c.cfg.AdvertiseHost != "" {
		hosts = append(hosts, c.cfg.AdvertiseHost)
	}
	if c.cfg.InitialCluster != "" {
		if u, err := embedded.OwnPeerURL(c.cfg.InitialCluster, c.cfg.Name); err == nil {
			hosts = append(hosts, u.Hostname())
		}
	}
	if nc, err := c.cfg.natsCluster(); err == nil && nc != nil {
		add(nc.Listen)
	}
	hosts = append(hosts, c.cfg.TLSHosts...)
	slices.Sort(hosts)
	return slices.Compact(hosts)
}

// serverCreds are the API's transport credentials: a client certificate is
// optional at the TLS level (Join comes without one) and required per
// call by authorize.
func (s *security) serverCreds() (credentials.TransportCredentials, error) {
	cfg, err := s.cred.ServerTLS(true)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(cfg), nil
}

// clientTLS is this replica's TLS as a client of etcd and NATS (which
// serve the replicas' own certificates).
func (s *security) clientTLS() (*tls.Config, error) {
	return s.cred.ClientTLS(pki.HasRole(pki.RoleCoordinator))
}

// externalTLS is the client TLS for an external etcd or NATS at url.
func (c *Coordinator) externalTLS(what, url string, files pki.ExternalTLS) (*tls.Config, error) {
	var cred *pki.Credential
	if c.sec != nil {
		cred = c.sec.cred
	}
	cfg, err := pki.ClientFor(pki.SchemeOf(url), files, cred)
	if err != nil {
		return nil, fmt.Errorf("external %s at %s: %w", what, url, err)
	}
	if cfg == nil && c.sec != nil {
		c.log.Warn("the external server is reached in plain text: its security is the operator's (give an https:// or tls:// URL to use TLS)", zap.String("server", what), zap.String("url", url))
	}
	return cfg, nil
}

// natsSecurity serves the embedded NATS over TLS to coordinators and
// workers, and its routes to the other replicas.
func (s *security) natsSecurity() (*embedded.NATSSecurity, error) {
	clients, err := s.cred.ServerTLS(false, pki.RoleCoordinator, pki.RoleWorker)
	if err != nil {
		return nil, err
	}
	pair, err := s.cred.TLSCertificate()
	if err != nil {
		return nil, err
	}
	pool, _ := s.cred.Pool()
	routes := pki.PinnedClientTLS(pool, []tls.Certificate{pair}, pki.HasRole(pki.RoleCoordinator))
	routes.ClientCAs, routes.ClientAuth = pool, tls.RequireAndVerifyClientCert
	return &embedded.NATSSecurity{Clients: clients, Auth: natsAuth{}, Routes: routes}, nil
}

// natsAuth maps a NATS client's certificate to its permissions: a
// coordinator may do anything; a worker may only publish events under its
// own publisher token (events.Subject) and subscribe to nothing; other
// identities are refused.
type natsAuth struct{}

func (natsAuth) Check(c server.ClientAuthentication) bool {
	cs := c.GetTLSConnectionState()
	if cs == nil || len(cs.PeerCertificates) == 0 {
		return false
	}
	id, err := pki.IdentityOf(cs.PeerCertificates[0])
	if err != nil {
		return false
	}
	switch id.Role {
	case pki.RoleCoordinator:
		c.RegisterUser(&server.User{Username: id.CommonName()})
	case pki.RoleWorker:
		c.RegisterUser(&server.User{Username: id.CommonName(), Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: []string{events.Subject("*", events.PublisherToken(id.Name))}},
			Subscribe: &server.SubjectPermission{Deny: []string{">"}},
		}})
	default:
		return false
	}
	return true
}

// Permissions of the API: the roles that may call each method. A method
// missing here is refused to everyone (Join needs a token instead).
var apiRoles = map[string][]string{
	pb.Coordinator_Info_FullMethodName:            {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView, pki.RoleWorker, pki.RoleCoordinator},
	pb.Coordinator_SubmitJob_FullMethodName:       {pki.RoleAdmin, pki.RoleSubmit},
	pb.Coordinator_CancelJob_FullMethodName:       {pki.RoleAdmin, pki.RoleSubmit},
	pb.Coordinator_ResumeJob_FullMethodName:       {pki.RoleAdmin, pki.RoleSubmit},
	pb.Coordinator_ListJobs_FullMethodName:        {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView},
	pb.Coordinator_GetJob_FullMethodName:          {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView},
	pb.Coordinator_ListCheckpoints_FullMethodName: {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView},
	pb.Coordinator_ListWorkers_FullMethodName:     {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView},
	pb.Coordinator_WatchJob_FullMethodName:        {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView},
	pb.Coordinator_ClusterStatus_FullMethodName:   {pki.RoleAdmin, pki.RoleSubmit, pki.RoleView},
	pb.Coordinator_SaveSnapshot_FullMethodName:    {pki.RoleAdmin},
	pb.Coordinator_CreateToken_FullMethodName:     {pki.RoleAdmin},
	pb.Coordinator_IssueCredential_FullMethodName: {pki.RoleAdmin},
}

// authorize refuses a call whose caller lacks a role allowed to make it,
// saying who lacked what.
func (c *Coordinator) authorize(ctx context.Context, method string) error {
	if c.sec == nil || method == pb.Coordinator_Join_FullMethodName {
		return nil
	}
	short := method[strings.LastIndexByte(method, '/')+1:]
	id, ok := pki.PeerIdentity(ctx)
	if !ok {
		return status.Errorf(codes.Unauthenticated, "%s needs a client certificate: give a credential with --credentials or RINGMASTER_CREDENTIALS (the admin's is %s in the coordinator's data directory)", short, AdminCredentialFile)
	}
	roles := apiRoles[method]
	if !slices.Contains(roles, id.Role) {
		if len(roles) == 0 {
			return status.Errorf(codes.PermissionDenied, "%s may not call %s: no role may", id, short)
		}
		return status.Errorf(codes.PermissionDenied, "%s may not call %s: it needs the role %s, and this identity has the role %s", id, short, strings.Join(roles, " or "), id.Role)
	}
	return nil
}

func (c *Coordinator) streamInterceptor(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if err := c.authorize(ss.Context(), info.FullMethod); err != nil {
		return err
	}
	return handler(srv, ss)
}

// Join tokens. A token's record holds the hash of its secret and its role;
// it expires with an etcd lease.
type tokenRecord struct {
	Role       string `json:"role"`
	SecretHash string `json:"secret_hash"`
	ExpiresMs  int64  `json:"expires_ms"`
}

// DefaultTokenTTL is how long a join token may be used unless told.
const DefaultTokenTTL = 24 * time.Hour

// tokenTTL checks a token request: only "worker" can join; ttl 0 means
// DefaultTokenTTL.
func tokenTTL(role string, ttl time.Duration) (time.Duration, error) {
	if role != pki.RoleWorker {
		return 0, fmt.Errorf("--role %q: join tokens are for workers (--role worker); users get credentials with `coordinator credentials create`", role)
	}
	if ttl == 0 {
		ttl = DefaultTokenTTL
	}
	if ttl < time.Minute || ttl > 30*24*time.Hour {
		return 0, fmt.Errorf("--ttl %v: give 1m to 720h", ttl)
	}
	return ttl, nil
}

// CreateToken makes a join token for role (only "worker" can join).
func (c *Coordinator) CreateToken(ctx context.Context, role string, ttl time.Duration) (pki.Token, time.Time, error) {
	if c.sec == nil {
		return pki.Token{}, time.Time{}, errors.New("this coordinator runs --insecure: workers need no token")
	}
	ttl, err := tokenTTL(role, ttl)
	if err != nil {
		return pki.Token{}, time.Time{}, err
	}
	tok := pki.NewToken(c.sec.ca)
	exp := time.Now().Add(ttl)
	lease, err := c.etcd.Grant(ctx, int64(ttl/time.Second))
	if err != nil {
		return pki.Token{}, time.Time{}, err
	}
	rec, _ := json.Marshal(tokenRecord{Role: role, SecretHash: tok.SecretHash(), ExpiresMs: exp.UnixMilli()})
	if _, err := c.etcd.Put(ctx, c.keys.Token(tok.ID), string(rec), clientv3.WithLease(lease.ID)); err != nil {
		return pki.Token{}, time.Time{}, err
	}
	return tok, exp, nil
}

// bootstrapToken records the token of BootstrapTokenFile (without expiry).
func (c *Coordinator) bootstrapToken() error {
	if c.sec == nil {
		return errors.New("--bootstrap-token-file: this coordinator runs --insecure; workers need no token")
	}
	b, err := os.ReadFile(c.cfg.BootstrapTokenFile)
	if err != nil {
		return fmt.Errorf("--bootstrap-token-file: %w", err)
	}
	tok, err := pki.ParseToken(string(b))
	if err != nil {
		return fmt.Errorf("--bootstrap-token-file %s: %w", c.cfg.BootstrapTokenFile, err)
	}
	rec, _ := json.Marshal(tokenRecord{Role: pki.RoleWorker, SecretHash: tok.SecretHash()})
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.RequestTimeout)
	defer cancel()
	if _, err := c.etcd.Put(ctx, c.keys.Token(tok.ID), string(rec)); err != nil {
		return fmt.Errorf("recording the bootstrap token: %w", err)
	}
	c.log.Info("bootstrap join token recorded", zap.String("token", tok.ID))
	return nil
}

// join checks a token and signs the worker's request.
func (c *Coordinator) join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	if c.sec == nil {
		return nil, status.Error(codes.FailedPrecondition, "this coordinator runs --insecure: start the worker with --insecure, without a join token")
	}
	if !validWorkerID(req.WorkerId) {
		return nil, status.Errorf(codes.InvalidArgument, "worker_id %q: use 1 to 128 letters, digits, '-', '_' and '.'", req.WorkerId)
	}
	resp, err := c.etcd.Get(ctx, c.keys.Token(req.TokenId))
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "reading join tokens: %v", err)
	}
	var rec tokenRecord
	if len(resp.Kvs) == 0 || json.Unmarshal(resp.Kvs[0].Value, &rec) != nil || !pki.SecretMatches(req.TokenSecret, rec.SecretHash) ||
		(rec.ExpiresMs != 0 && time.Now().UnixMilli() > rec.ExpiresMs) {
		return nil, status.Errorf(codes.PermissionDenied, "join token %q is unknown, expired or wrong: create one with `coordinator token create --role worker`", req.TokenId)
	}
	certPEM, err := c.sec.ca.SignCSR(pki.Identity{Role: rec.Role, Name: req.WorkerId}, req.Csr, pki.LeafValidity)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	if err := state.EnsureWorkerUser(ctx, c.etcd, c.keys, req.WorkerId); err != nil {
		return nil, status.Errorf(codes.Unavailable, "%v", err)
	}
	c.log.Info("worker joined", zap.String("worker", req.WorkerId), zap.String("token", req.TokenId))
	return &pb.JoinResponse{CertPem: string(certPEM), CaPem: string(c.sec.ca.CertPEM)}, nil
}

// validWorkerID matches the worker's own check of its id.
func validWorkerID(id string) bool {
	return pki.Identity{Role: pki.RoleWorker, Name: id}.Validate() == nil && !strings.ContainsRune(id, '@')
}

// issueCredential signs a user's request.
func (c *Coordinator) issueCredential(ctx context.Context, req *pb.IssueCredentialRequest) (*pb.IssueCredentialResponse, error) {
	if c.sec == nil {
		return nil, status.Error(codes.FailedPrecondition, "this coordinator runs --insecure: it has no CA")
	}
	if !slices.Contains(pki.UserRoles, req.Role) {
		return nil, status.Errorf(codes.InvalidArgument, "role %q: give admin, submit or view", req.Role)
	}
	id := pki.Identity{Role: req.Role, Name: req.Name}
	if err := id.Validate(); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "name: %v", err)
	}
	certPEM, err := c.sec.ca.SignCSR(id, req.Csr, time.Duration(req.ValiditySeconds)*time.Second)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "csr: %v", err)
	}
	caller, _ := pki.PeerIdentity(ctx)
	c.log.Info("credential issued", zap.Stringer("identity", id), zap.Stringer("by", caller))
	return &pb.IssueCredentialResponse{CertPem: string(certPEM), CaPem: string(c.sec.ca.CertPEM)}, nil
}

// Insecure reports whether the coordinator serves plain text.
func (c *Coordinator) Insecure() bool { return c.sec == nil }

// CreateToken implements the API call.
func (a *api) CreateToken(ctx context.Context, req *pb.CreateTokenRequest) (*pb.CreateTokenResponse, error) {
	if a.c.sec == nil {
		return nil, status.Error(codes.FailedPrecondition, "this coordinator runs --insecure: workers need no token")
	}
	if _, err := tokenTTL(req.Role, time.Duration(req.TtlSeconds)*time.Second); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	tok, exp, err := a.c.CreateToken(ctx, req.Role, time.Duration(req.TtlSeconds)*time.Second)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "recording the token: %v", err)
	}
	caller, _ := pki.PeerIdentity(ctx)
	a.c.log.Info("join token created", zap.String("token", tok.ID), zap.String("role", req.Role), zap.Time("expires", exp), zap.Stringer("by", caller))
	return &pb.CreateTokenResponse{Token: tok.String(), ExpiresMs: exp.UnixMilli()}, nil
}

// Join implements the API call.
func (a *api) Join(ctx context.Context, req *pb.JoinRequest) (*pb.JoinResponse, error) {
	return a.c.join(ctx, req)
}

// IssueCredential implements the API call.
func (a *api) IssueCredential(ctx context.Context, req *pb.IssueCredentialRequest) (*pb.IssueCredentialResponse, error) {
	return a.c.issueCredential(ctx, req)
}

// AdminCredentialPath is where this coordinator keeps the first admin
// credential ("" when insecure).
func (c *Coordinator) AdminCredentialPath() string {
	if c.sec == nil {
		return ""
	}
	return filepath.Join(c.cfg.DataDir, AdminCredentialFile)
}

// AdminDialOption is the transport of an API client holding the admin
// credential (plain text when insecure): for programs that start a
// coordinator in-process, such as tests and benchmarks.
func (c *Coordinator) AdminDialOption() (grpc.DialOption, error) {
	if c.sec == nil {
		return grpc.WithTransportCredentials(insecure.NewCredentials()), nil
	}
	cred, err := pki.LoadCredential(c.AdminCredentialPath())
	if err != nil {
		return nil, err
	}
	cfg, err := cred.ClientTLS(pki.HasRole(pki.RoleCoordinator))
	if err != nil {
		return nil, err
	}
	return grpc.WithTransportCredentials(credentials.NewTLS(cfg)), nil
}

// SubscribeEvents calls fn with every event of job ("*": of all jobs)
// on this coordinator's own NATS connection, with the worker that sent
// it ("" for a coordinator); the subscription is in place on return.
func (c *Coordinator) SubscribeEvents(job string, fn func(ev *pb.JobEvent, worker string)) (*nats.Subscription, error) {
	sub, err := events.Subscribe(c.nc, job, fn)
	if err != nil {
		return nil, err
	}
	if err := c.nc.FlushTimeout(5 * time.Second); err != nil {
		_ = sub.Unsubscribe()
		return nil, err
	}
	return sub, nil
}

// RootTLS is a client TLS configuration with the coordinators' own
// identity (etcd's root user), for tools and tests that read this
// coordinator's etcd directly; nil when insecure.
func (c *Coordinator) RootTLS() *tls.Config {
	if c.sec == nil {
		return nil
	}
	cfg, _ := c.sec.clientTLS()
	return cfg
}
