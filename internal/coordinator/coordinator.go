package coordinator

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/embedded"
	"github.com/ringmaster/ringmaster/internal/events"
	"github.com/ringmaster/ringmaster/internal/health"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/internal/state"
)

// Config configures a coordinator.
type Config struct {
	// Listen is the gRPC API address (host:port; port 0 picks one).
	Listen string
	// DataDir holds the embedded etcd's data and, by default, checkpoints.
	DataDir string
	// EtcdEndpoints of an external etcd; empty runs an embedded one.
	EtcdEndpoints []string
	// EmbeddedEtcdListen is the embedded etcd's client address.
	EmbeddedEtcdListen string
	// NATSURL of an external NATS; empty runs an embedded one.
	NATSURL string
	// EmbeddedNATSListen is the embedded NATS server's address.
	EmbeddedNATSListen string
	// AdvertiseHost replaces the host of the etcd and NATS URLs that
	// workers are told, when the servers listen on all interfaces.
	AdvertiseHost string
	// DefaultStore is the checkpoint store of jobs that name none; empty
	// means file://<DataDir>/checkpoints.
	DefaultStore string
	// Policy is where submitted specs may put checkpoints and read
	// datasets. Empty FileRoots and DatasetRoots mean [DataDir]; empty
	// S3Endpoints allow no S3 service. DefaultStore is always allowed: its
	// directory, or its endpoint and bucket, is added when the roots do
	// not cover it.
	Policy jobspec.Policy
	// Prefix of the cluster's keys in etcd.
	Prefix string
	// ReconcileInterval is how often the coordinator re-plans even without
	// changes in etcd.
	ReconcileInterval time.Duration
	// RequestTimeout bounds each etcd request.
	RequestTimeout time.Duration
	// HealthListen, if set, serves the HTTP probes /healthz and /readyz
	// (ready: this replica reaches an etcd quorum) on host:port.
	HealthListen string
	// ResyncInterval is how often the scheduler reads its whole view of
	// etcd anew (a safety net: watches keep it current); default 5m.
	ResyncInterval time.Duration

	// Name names this replica: its embedded etcd member and its entry in
	// InitialCluster and NATSRoutes (default "ringmaster").
	Name string
	// InitialCluster makes this coordinator one of several replicas that
	// together form the embedded etcd cluster: name=http://host:port (etcd
	// peer URLs) of every replica, this one included. Empty: one replica.
	InitialCluster string
	// NATSRoutes are the replicas' embedded NATS route URLs, as
	// name=nats://host:port of every replica; this one listens on its own
	// entry. Required with InitialCluster unless NATSURL is set.
	NATSRoutes string
	// PeerListenHost, if set, is the host this replica listens on for its
	// peers (etcd peers, NATS routes) instead of the host of its own
	// entries (0.0.0.0 in a pod whose entries name its DNS name).
	PeerListenHost string
	// JobRetention is how long a finished job's record stays in etcd
	// (its spec, final status, history and result); 0 keeps it for ever.
	JobRetention time.Duration
	// EtcdElectionTimeout is the embedded etcd's election timeout (0:
	// 500 ms); raise it where replicas are more than a few milliseconds
	// apart.
	EtcdElectionTimeout time.Duration

	// Insecure serves everything in plain text without authentication
	// (the default is mutual TLS on every connection; see
	// docs/security.md).
	Insecure bool
	// CADir holds the cluster's CA (ca.crt and ca.key, or tls.crt and
	// tls.key); empty: the CA in DataDir/pki, created at first start.
	// Replicas share one CA.
	CADir string
	// TLSHosts are more names and addresses for this replica's
	// certificate (a Service's DNS name, a load balancer).
	TLSHosts []string
	// EtcdTLS and NATSTLS are the TLS files for an external etcd and
	// NATS (https:// and tls:// URLs); without them the coordinator's own
	// credential is presented and the server verified against the
	// cluster's CA. Plain URLs are used as given.
	EtcdTLS, NATSTLS pki.ExternalTLS
	// BootstrapTokenFile holds a worker join token (ID.SECRET) that is
	// valid until it is replaced: one an installer generates into a
	// Secret that workers also mount.
	BootstrapTokenFile string
}

func (c *Config) setDefaults() error {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:7070"
	}
	if c.DataDir == "" {
		c.DataDir = "ringmaster-data"
	}
	abs, err := filepath.Abs(c.DataDir)
	if err != nil {
		return err
	}
	c.DataDir = abs
	if c.EmbeddedEtcdListen == "" {
		c.EmbeddedEtcdListen = "127.0.0.1:0"
	}
	if c.EmbeddedNATSListen == "" {
		c.EmbeddedNATSListen = "127.0.0.1:0"
	}
	if c.DefaultStore == "" {
		c.DefaultStore = "file://" + filepath.Join(c.DataDir, "checkpoints")
	}
	if err := c.policyDefaults(); err != nil {
		return err
	}
	if c.Prefix == "" {
		c.Prefix = state.DefaultPrefix
	}
	if c.ReconcileInterval <= 0 {
		c.ReconcileInterval = time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.ResyncInterval <= 0 {
		c.ResyncInterval = 5 * time.Minute
	}
	if c.Name == "" {
		c.Name = embedded.EtcdMemberName
	}
	if c.JobRetention < 0 {
		return fmt.Errorf("--job-retention %v: give a duration of at least 1s, or 0 to keep finished jobs for ever", c.JobRetention)
	}
	if c.JobRetention > 0 && c.JobRetention < time.Second {
		c.JobRetention = time.Second
	}
	if c.InitialCluster != "" {
		if len(c.EtcdEndpoints) > 0 {
			return errors.New("--initial-cluster forms the replicas' own etcd cluster; it cannot be combined with --etcd-endpoints (an external etcd is replicated already)")
		}
		if _, err := embedded.OwnPeerURL(c.InitialCluster, c.Name); err != nil {
			return err
		}
		if c.NATSURL == "" && c.NATSRoutes == "" {
			return errors.New("--nats-routes is required with --initial-cluster: the replicas' embedded NATS servers form a cluster too (name=nats://host:port of every replica), or give --nats-url")
		}
	}
	if c.NATSRoutes != "" && c.NATSURL != "" {
		return errors.New("--nats-routes clusters the embedded NATS servers; it cannot be combined with --nats-url")
	}
	return nil
}

// natsCluster turns NATSRoutes into this replica's NATS cluster settings.
func (c *Config) natsCluster() (*embedded.NATSCluster, error) {
	if c.NATSRoutes == "" {
		return nil, nil
	}
	all, own, err := embedded.Members("--nats-routes", c.NATSRoutes, c.Name, "nats")
	if err != nil {
		return nil, err
	}
	out := &embedded.NATSCluster{Listen: own.Host}
	for _, u := range all {
		out.Routes = append(out.Routes, u.String())
	}
	if c.PeerListenHost != "" {
		_, port, _ := net.SplitHostPort(out.Listen)
		out.Listen = net.JoinHostPort(c.PeerListenHost, port)
	}
	return out, nil
}

// peerListen is where this replica's etcd member listens for its peers
// ("" : where its InitialCluster entry says).
func (c *Config) peerListen() string {
	if c.PeerListenHost == "" || c.InitialCluster == "" {
		return ""
	}
	own, _ := embedded.OwnPeerURL(c.InitialCluster, c.Name)
	return net.JoinHostPort(c.PeerListenHost, own.Port())
}

// Coordinator is the control plane: the gRPC API, the scheduler, and
// (unless external ones are configured) embedded etcd and NATS.
type Coordinator struct {
	cfg  Config
	log  *zap.Logger
	keys state.Keys

	embEtcd *embedded.Etcd
	embNATS *embedded.NATS
	etcd    *clientv3.Client
	nc      *nats.Conn
	pub     *events.Publisher
	damaged map[string]error // damaged keys already reported (reconcile's)
	// missing is when each assigned worker was first seen unregistered
	// (reconcile's).
	missing map[string]int64
	// loadedKeys is how many keys the scheduler's last full read took
	// (its view is kept by watches after it).
	loadedKeys atomic.Int64
	// The retention lease that jobs finishing now share (retentionLease).
	leaseMu      sync.Mutex
	lease        clientv3.LeaseID
	leaseGranted time.Time
	grpc         *grpc.Server
	sec          *security // nil when insecure
	health       *health.Server
	lis          net.Listener
	etcdURLs     []string
	natsURL      string
	cancel       context.CancelFunc
	wg           sync.WaitGroup
	errc         chan error
	closeOnce    sync.Once
}

// Start starts a coordinator and returns once its API accepts requests.
// Close stops it.
func Start(cfg Config, log *zap.Logger) (_ *Coordinator, err error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	c := &Coordinator{cfg: cfg, log: log, keys: state.Keys{Prefix: cfg.Prefix}, errc: make(chan error, 4)}
	defer func() {
		if err != nil {
			c.Close()
		}
	}()
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("data dir: %w", err)
	}
	// A restart on the same data directory serves the embedded etcd and
	// NATS on the addresses they had, so that running workers reconnect
	// to them; a port that is taken by now is given up for a new one.
	prev := loadListenAddrs(cfg.DataDir)
	var clientTLS *tls.Config
	if cfg.Insecure {
		log.Warn("--insecure: the API, etcd, NATS and the workers' ring serve plain text without authentication; anyone who reaches a port controls the cluster")
	} else {
		if err := c.setupPKI(); err != nil {
			return nil, err
		}
		if clientTLS, err = c.sec.clientTLS(); err != nil {
			return nil, err
		}
	}
	c.etcdURLs = cfg.EtcdEndpoints
	if len(c.etcdURLs) == 0 {
		ecfg := embedded.EtcdConfig{Dir: filepath.Join(cfg.DataDir, "etcd"), ClientAddr: reuse(cfg.EmbeddedEtcdListen, prev.Etcd),
			AdvertiseHost: cfg.AdvertiseHost, Name: cfg.Name, InitialCluster: cfg.InitialCluster, PeerListen: cfg.peerListen(),
			ElectionTimeout: cfg.EtcdElectionTimeout}
		if c.sec != nil {
			ecfg.TLS = &c.sec.files
		}
		if cfg.InitialCluster != "" {
			log.Info("starting the embedded etcd as one member of a cluster; it serves once a majority of members is up",
				zap.String("name", cfg.Name), zap.String("initial_cluster", cfg.InitialCluster))
		}
		c.embEtcd, err = embedded.StartEtcd(ecfg, log)
		if err != nil && ecfg.ClientAddr != cfg.EmbeddedEtcdListen {
			log.Warn("the embedded etcd's previous address is not free; taking another (running workers must be restarted)", zap.String("previous", prev.Etcd), zap.Error(err))
			ecfg.ClientAddr = cfg.EmbeddedEtcdListen
			c.embEtcd, err = embedded.StartEtcd(ecfg, log)
		}
		if err != nil {
			return nil, err
		}
		c.etcdURLs = []string{c.embEtcd.LocalEndpoint()}
		log.Info("embedded etcd started", zap.Strings("endpoints", c.embEtcd.Endpoints()))
	}
	etcdTLS := clientTLS
	if c.embEtcd == nil {
		if etcdTLS, err = c.externalTLS("etcd", c.etcdURLs[0], cfg.EtcdTLS); err != nil {
			return nil, err
		}
	}
	c.etcd, err = clientv3.New(clientv3.Config{Endpoints: c.etcdURLs, DialTimeout: 10 * time.Second, TLS: etcdTLS,
		Logger: log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.ErrorLevel))})
	if err != nil {
		return nil, fmt.Errorf("connecting to etcd %v: %w", c.etcdURLs, err)
	}
	if c.sec != nil && c.embEtcd != nil {
		actx, cancel := context.WithTimeout(context.Background(), cfg.RequestTimeout)
		err := state.EnableAuth(actx, c.etcd, c.keys, CoordinatorIdentity.CommonName())
		cancel()
		if err != nil {
			return nil, err
		}
	}
	if cfg.BootstrapTokenFile != "" {
		if err := c.bootstrapToken(); err != nil {
			return nil, err
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.RequestTimeout)
	_, err = c.etcd.Get(ctx, c.keys.Prefix+"probe")
	cancel()
	if err != nil {
		return nil, fmt.Errorf("etcd at %v does not answer: %w", c.etcdURLs, err)
	}
	c.natsURL = cfg.NATSURL
	if c.natsURL == "" {
		nc, err := cfg.natsCluster()
		if err != nil {
			return nil, err
		}
		addr := reuse(cfg.EmbeddedNATSListen, prev.NATS)
		if _, port, _ := net.SplitHostPort(cfg.EmbeddedNATSListen); nc != nil && cfg.AdvertiseHost != "" && port != "0" {
			nc.ClientAdvertise = net.JoinHostPort(cfg.AdvertiseHost, port)
		}
		var nsec *embedded.NATSSecurity
		if c.sec != nil {
			if nsec, err = c.sec.natsSecurity(); err != nil {
				return nil, err
			}
		}
		c.embNATS, err = embedded.StartNATS(addr, nc, nsec, log)
		if err != nil && addr != cfg.EmbeddedNATSListen {
			log.Warn("the embedded NATS's previous address is not free; taking another", zap.String("previous", prev.NATS), zap.Error(err))
			c.embNATS, err = embedded.StartNATS(cfg.EmbeddedNATSListen, nc, nsec, log)
		}
		if err != nil {
			return nil, err
		}
		c.natsURL = c.embNATS.URL()
		log.Info("embedded NATS started", zap.String("url", c.natsURL))
	}
	natsTLS := clientTLS
	if c.embNATS == nil {
		if natsTLS, err = c.externalTLS("NATS", c.natsURL, cfg.NATSTLS); err != nil {
			return nil, err
		}
	}
	if c.nc, err = events.Connect(c.natsURL, "ringmaster-coordinator", natsTLS); err != nil {
		return nil, err
	}
	c.pub = events.NewPublisher(c.nc, events.CoordinatorToken)
	if err := saveListenAddrs(cfg.DataDir, c.embEtcd, c.embNATS); err != nil {
		log.Warn("could not record the embedded servers' addresses; a restart will pick new ones", zap.Error(err))
	}
	if c.lis, err = net.Listen("tcp", cfg.Listen); err != nil {
		return nil, fmt.Errorf("coordinator API listen %s: %w", cfg.Listen, err)
	}
	sopts := []grpc.ServerOption{grpc.UnaryInterceptor(c.unaryInterceptor), grpc.StreamInterceptor(c.streamInterceptor)}
	if c.sec != nil {
		creds, err := c.sec.serverCreds()
		if err != nil {
			return nil, err
		}
		sopts = append(sopts, grpc.Creds(creds))
	}
	c.grpc = grpc.NewServer(sopts...)
	pb.RegisterCoordinatorServer(c.grpc, &api{c: c})

	if cfg.HealthListen != "" {
		if c.health, err = health.Serve(cfg.HealthListen, c.ready); err != nil {
			return nil, err
		}
	}

	runCtx, cancelRun := context.WithCancel(context.Background())
	c.cancel = cancelRun
	c.wg.Add(2)
	go func() {
		defer c.wg.Done()
		if err := c.grpc.Serve(c.lis); err != nil {
			c.errc <- fmt.Errorf("coordinator API: %w", err)
		}
	}()
	go func() {
		defer c.wg.Done()
		c.lead(runCtx)
	}()
	log.Info("coordinator serving", zap.String("addr", c.lis.Addr().String()), zap.String("data_dir", cfg.DataDir))
	return c, nil
}

// ready is the readiness probe: the replica can record decisions, which
// needs an etcd quorum.
func (c *Coordinator) ready(ctx context.Context) error {
	if q := c.noQuorum(ctx); q != "" {
		return errors.New(q)
	}
	return nil
}

// Addr is the API's address.
func (c *Coordinator) Addr() string { return c.lis.Addr().String() }

// Err reports a fatal error of a background server.
func (c *Coordinator) Err() <-chan error { return c.errc }

// Close stops the coordinator and its embedded servers.
func (c *Coordinator) Close() {
	c.closeOnce.Do(func() {
		if c.health != nil {
			_ = c.health.Close()
		}
		if c.cancel != nil {
			c.cancel()
		}
		if c.grpc != nil {
			// Watch streams end with the context of their server; give
			// unary calls a moment, then cut the rest.
			done := make(chan struct{})
			go func() { c.grpc.GracefulStop(); close(done) }()
			select {
			case <-done:
			case <-time.After(2 * time.Second):
				c.grpc.Stop()
			}
		}
		done := make(chan struct{})
		go func() { c.wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(closeGrace):
			// A campaign cancelled while etcd has no quorum resigns under
			// the etcd client's own context (concurrency.Election), which
			// only closing the client ends.
			c.log.Warn("the scheduler did not stop within its grace time (no etcd quorum?); closing the etcd client under it", zap.Duration("grace", closeGrace))
			if c.etcd != nil {
				c.etcd.Close()
			}
			<-done
		}
		if c.nc != nil {
			c.nc.Close()
		}
		if c.etcd != nil {
			c.etcd.Close()
		}
		if c.embNATS != nil {
			c.embNATS.Close()
		}
		if c.embEtcd != nil {
			c.embEtcd.Close()
		}
	})
}

// closeGrace is how long Close waits for the API and the scheduler to
// stop before it closes the etcd client under them.
const closeGrace = 5 * time.Second

// advertised rewrites a URL's host for workers when AdvertiseHost is set.
func (c *Coordinator) advertised(raw string) string {
	if c.cfg.AdvertiseHost == "" {
		return raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return raw
	}
	u.Host = net.JoinHostPort(c.cfg.AdvertiseHost, u.Port())
	return u.String()
}

// lead campaigns for leadership and, while leader, runs the reconcile
// loop. Several coordinators may serve the API; one decides.
func (c *Coordinator) lead(ctx context.Context) {
	for ctx.Err() == nil {
		if err := c.leadOnce(ctx); err != nil && ctx.Err() == nil {
			c.log.Warn("leadership lost; campaigning again", zap.Error(err))
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}
}

func (c *Coordinator) leadOnce(ctx context.Context) error {
	// The session's lease is granted under ctx (it fails while etcd has
	// no quorum, and a stop cancels it), but the session outlives ctx so
	// that Close can still revoke the lease on a clean stop: another
	// replica, or the next coordinator on this data directory, is elected
	// at once instead of after the TTL.
	gctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	lease, err := c.etcd.Grant(gctx, electionTTL)
	cancel()
	if err != nil {
		return err
	}
	sess, err := concurrency.NewSession(c.etcd, concurrency.WithLease(lease.ID), concurrency.WithTTL(electionTTL),
		concurrency.WithContext(context.WithoutCancel(ctx)))
	if err != nil {
		return err
	}
	defer sess.Close()
	el := concurrency.NewElection(sess, c.keys.Election())
	if err := el.Campaign(ctx, c.replicaID()); err != nil {
		return err
	}
	c.log.Info("elected leader; scheduling", zap.String("replica", c.cfg.Name))
	if err := c.migrate(ctx); err != nil {
		return fmt.Errorf("upgrading the key layout: %w", err)
	}
	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-sess.Done():
			cancel()
		case <-lctx.Done():
		}
	}()
	return c.reconcileLoop(lctx)
}

// electionTTL is the lease of the scheduler's election key, in seconds:
// when the replica that schedules dies, another takes over within it
// (plus, when its etcd member led too, an etcd election and the lease
// extension a new etcd leader grants).
const electionTTL = 2

// replicaID is what this replica writes in the election: its name and API
// address, then host and pid.
func (c *Coordinator) replicaID() string {
	host, _ := os.Hostname()
	return fmt.Sprintf("%s %s %s/%d", c.cfg.Name, c.Addr(), host, os.Getpid())
}

// reconcileLoop keeps the scheduler's view (a watch-driven cache of the
// hot state) and plans on it whenever something that can alter a
// decision changes, at a steady interval (decisions that depend on time),
// and when a missing worker's settling time ends. The view is read anew
// when a watch ends and every ResyncInterval, as a safety net.
func (c *Coordinator) reconcileLoop(ctx context.Context) error {
	backoff := 200 * time.Millisecond
	for {
		loaded := false
		err := c.schedule(ctx, func() { loaded = true })
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if loaded {
			backoff = 200 * time.Millisecond
		}
		if errors.Is(err, errResync) {
			continue
		}
		c.log.Warn("the scheduler's view of etcd was lost; reading it anew", zap.Error(err), zap.Duration("in", backoff))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// errResync ends a view that is due to be read anew.
var errResync = errors.New("periodic resync")

// schedule loads a view (and calls loaded) and plans on it until the view
// must be read anew.
func (c *Coordinator) schedule(ctx context.Context, loaded func()) error {
	cache, err := state.LoadCache(ctx, c.etcd, c.keys, c.cfg.RequestTimeout)
	if err != nil {
		return err
	}
	defer cache.Close()
	loaded()
	c.loadedKeys.Store(int64(cache.LoadedKeys))
	jobsW, workersW := cache.Watches()
	tick := time.NewTicker(c.cfg.ReconcileInterval)
	defer tick.Stop()
	resync := time.NewTimer(c.cfg.ResyncInterval)
	defer resync.Stop()
	// take applies one watch response; plan is set when it can alter a
	// decision.
	plan := true
	take := func(wr clientv3.WatchResponse, ok, jobs bool) error {
		if !ok {
			return state.ErrWatchEnded
		}
		apply := cache.ApplyWorkers
		if jobs {
			apply = cache.ApplyJobs
		}
		changed, err := apply(ctx, wr)
		plan = plan || changed
		return err
	}
	// drain applies what has arrived already, without waiting.
	drain := func() error {
		for {
			select {
			case wr, ok := <-jobsW:
				if err := take(wr, ok, true); err != nil {
					return err
				}
			case wr, ok := <-workersW:
				if err := take(wr, ok, false); err != nil {
					return err
				}
			default:
				return nil
			}
		}
	}
	var lastPass time.Time
	for {
		if err := drain(); err != nil {
			return err
		}
		if plan {
			if d := minPassGap - time.Since(lastPass); d > 0 {
				// Under a stream of changes, passes come at most every
				// minPassGap, each taking what arrived meanwhile.
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(d):
				}
				if err := drain(); err != nil {
					return err
				}
			}
			plan = false
			lastPass = time.Now()
			wrote, again, err := c.reconcile(ctx, cache)
			if err != nil {
				if ctx.Err() == nil {
					c.log.Warn("reconcile failed", zap.Error(err))
				}
				return err
			}
			// The next plan sees this one's writes: wait for the watch to
			// deliver them.
			deadline := time.NewTimer(c.cfg.RequestTimeout)
			for cache.JobsRev() < wrote {
				select {
				case <-ctx.Done():
					deadline.Stop()
					return ctx.Err()
				case <-deadline.C:
					return fmt.Errorf("the watch did not deliver revision %d within %v", wrote, c.cfg.RequestTimeout)
				case wr, ok := <-jobsW:
					err = take(wr, ok, true)
				case wr, ok := <-workersW:
					err = take(wr, ok, false)
				}
				if err != nil {
					deadline.Stop()
					return err
				}
			}
			deadline.Stop()
			if again {
				// A decision lost a race with a concurrent change that
				// the watch brings: plan again on it.
				plan = true
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-time.After(10 * time.Millisecond):
				}
			}
			continue
		}
		var settle <-chan time.Time
		if d, ok := c.nextSettle(); ok {
			settle = time.After(d)
		}
		var err error
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
			plan = true
		case <-settle:
			plan = true
		case <-resync.C:
			return errResync
		case wr, ok := <-jobsW:
			err = take(wr, ok, true)
		case wr, ok := <-workersW:
			err = take(wr, ok, false)
		}
		if err != nil {
			return err
		}
	}
}

// minPassGap is the least time between the starts of two passes of the
// scheduler: a pass costs about the same whether one thing changed or
// fifty, so a stream of changes is taken in batches.
const minPassGap = 5 * time.Millisecond

// maxParallelApply bounds the transactions of one plan in flight at
// once: they touch disjoint keys, and etcd commits concurrent proposals
// together.
const maxParallelApply = 32

// reconcile plans on the view and applies the actions, concurrently; it
// returns the highest revision written, and again when an action lost a
// race with a concurrent change.
func (c *Coordinator) reconcile(ctx context.Context, cache *state.Cache) (wrote int64, again bool, _ error) {
	snap := cache.Snapshot()
	for key, err := range snap.Damaged {
		if _, seen := c.damaged[key]; !seen {
			c.log.Error("a key in etcd cannot be decoded; what it describes is left alone until it is repaired or deleted",
				zap.String("key", key), zap.Error(err))
		}
	}
	c.damaged = maps.Clone(snap.Damaged)
	now := time.Now().UnixMilli()
	snap.MissingSince = c.trackMissing(snap, now)
	snap.Connected = c.connected(ctx, snap)
	// Rank 0's progress is read for the jobs acted on (the step of their
	// history, whether a job is about to finish, its key for the move
	// onto a retention lease), and the plan made again with it.
	actions := Plan(snap, now)
	fetched := map[string]bool{}
	for range 3 {
		var need []string
		for _, a := range actions {
			if id := actionJob(a); id != "" && !fetched[id] {
				need = append(need, id)
				fetched[id] = true
			}
		}
		if len(need) == 0 {
			break
		}
		if err := cache.FetchProgress(ctx, need); err != nil {
			return 0, false, err
		}
		actions = Plan(snap, now)
	}
	if len(actions) == 0 {
		return 0, false, nil
	}
	type result struct {
		a   Action
		rev int64
		err error
	}
	results := make([]result, len(actions))
	sem := make(chan struct{}, maxParallelApply)
	var wg sync.WaitGroup
	for i, a := range actions {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			rev, err := c.apply(ctx, snap, a)
			results[i] = result{a, rev, err}
		}()
	}
	wg.Wait()
	var firstErr error
	for _, r := range results {
		switch {
		case errors.Is(r.err, errConflict):
			c.log.Debug("action superseded by a concurrent change", zap.String("action", r.a.describe()))
			again = true
		case r.err != nil:
			if firstErr == nil {
				firstErr = r.err
			}
		default:
			wrote = max(wrote, r.rev)
			c.log.Info("decided", zap.String("action", r.a.describe()))
			c.announce(r.a)
		}
	}
	return wrote, again, firstErr
}

// actionJob is the job an action decides about ("" for a release).
func actionJob(a Action) string {
	switch a := a.(type) {
	case Finish:
		return a.JobID
	case Reconfigure:
		return a.JobID
	case Requeue:
		return a.JobID
	}
	return ""
}

// trackMissing records when each worker assigned to a running job was
// first seen unregistered (in memory: a new leader starts counting anew,
// which only delays a decision by LeaseSettle).
func (c *Coordinator) trackMissing(snap *state.Snapshot, now int64) map[string]int64 {
	seen := map[string]int64{}
	for _, j := range snap.Jobs {
		if j.Assignment == nil || j.Status.Value == nil || j.Status.Value.State != pb.JobState_JOB_STATE_RUNNING {
			continue
		}
		for _, r := range j.Assignment.Value.Ranks {
			if _, ok := snap.Workers[r.WorkerId]; ok {
				continue
			}
			if t, ok := c.missing[r.WorkerId]; ok {
				seen[r.WorkerId] = t
			} else {
				seen[r.WorkerId] = now
			}
		}
	}
	c.missing = seen
	return seen
}

// connected asks etcd, for the registered ranks of jobs with a missing
// rank, whether their leases were renewed within the last keep-alive
// interval (a third of the TTL, with half a second of slack).
func (c *Coordinator) connected(ctx context.Context, snap *state.Snapshot) map[string]bool {
	out := map[string]bool{}
	for _, j := range snap.Jobs {
		if j.Assignment == nil || j.Status.Value == nil || j.Status.Value.State != pb.JobState_JOB_STATE_RUNNING {
			continue
		}
		missing := false
		for _, r := range j.Assignment.Value.Ranks {
			if _, ok := snap.Workers[r.WorkerId]; !ok {
				missing = true
			}
		}
		if !missing {
			continue
		}
		for _, r := range j.Assignment.Value.Ranks {
			w, ok := snap.Workers[r.WorkerId]
			if !ok || w.Lease == 0 {
				continue
			}
			tctx, cancel := context.WithTimeout(ctx, time.Second)
			ttl, err := c.etcd.TimeToLive(tctx, clientv3.LeaseID(w.Lease))
			cancel()
			if err == nil && ttl.GrantedTTL > 0 && ttl.TTL > 0 {
				sinceRenewal := time.Duration(ttl.GrantedTTL-ttl.TTL) * time.Second
				out[r.WorkerId] = sinceRenewal <= time.Duration(ttl.GrantedTTL)*time.Second/3+500*time.Millisecond
			}
			if out[r.WorkerId] {
				break // one is enough
			}
		}
	}
	return out
}

// nextSettle is how long until the first missing worker's LeaseSettle
// ends, so that the decision about it is not left to the next tick.
func (c *Coordinator) nextSettle() (time.Duration, bool) {
	var next time.Duration
	found := false
	for _, t := range c.missing {
		if d := time.Until(time.UnixMilli(t).Add(LeaseSettle)); d > 0 && (!found || d < next) {
			next, found = d, true
		}
	}
	return next + 10*time.Millisecond, found
}

// announce publishes a job state change on NATS.
func (c *Coordinator) announce(a Action) {
	var ev *pb.JobEvent
	switch a := a.(type) {
	case Assign:
		ev = &pb.JobEvent{JobId: a.JobID, Event: &pb.JobEvent_State{State: &pb.StateChange{
			State: pb.JobState_JOB_STATE_RUNNING, Message: fmt.Sprintf("assigned generation %d to %v", a.Generation, a.Workers)}}}
	case Finish:
		ev = &pb.JobEvent{JobId: a.JobID, Event: &pb.JobEvent_State{State: &pb.StateChange{State: a.State, Message: a.Message, Result: a.Result}}}
	case Reconfigure:
		ev = &pb.JobEvent{JobId: a.JobID, Event: &pb.JobEvent_State{State: &pb.StateChange{
			State: pb.JobState_JOB_STATE_RUNNING, Message: fmt.Sprintf("ring rebuilt: generation %d on %v (%s)", a.Generation, a.Workers, a.Reason)}}}
	case Requeue:
		ev = &pb.JobEvent{JobId: a.JobID, Event: &pb.JobEvent_State{State: &pb.StateChange{
			State: pb.JobState_JOB_STATE_PENDING, Message: a.Message + "; restarting from the latest valid checkpoint"}}}
	default:
		return
	}
	if err := c.pub.Publish(ev); err != nil {
		c.log.Warn("publishing a job event failed", zap.Error(err))
	}
}

// listenAddrs are the addresses the embedded etcd and NATS took, kept in
// the data directory for a restart.
type listenAddrs struct {
	Etcd string `json:"etcd,omitempty"`
	NATS string `json:"nats,omitempty"`
}

const listenAddrsFile = "listen-addrs.json"

func loadListenAddrs(dir string) listenAddrs {
	var a listenAddrs
	if b, err := os.ReadFile(filepath.Join(dir, listenAddrsFile)); err == nil {
		_ = json.Unmarshal(b, &a) // a damaged file only costs new ports
	}
	return a
}

func saveListenAddrs(dir string, e *embedded.Etcd, n *embedded.NATS) error {
	var a listenAddrs
	if e != nil {
		a.Etcd = e.ClientListen()
	}
	if n != nil {
		if u, err := url.Parse(n.URL()); err == nil {
			a.NATS = u.Host
		}
	}
	b, _ := json.Marshal(a)
	tmp := filepath.Join(dir, listenAddrsFile+".tmp")
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, filepath.Join(dir, listenAddrsFile))
}

// reuse returns the previous address when the configured one asks for any
// port on the same host.
func reuse(configured, previous string) string {
	h, p, err := net.SplitHostPort(configured)
	if err != nil || p != "0" || previous == "" {
		return configured
	}
	if ph, _, err := net.SplitHostPort(previous); err != nil || ph != h {
		return configured
	}
	return previous
}
