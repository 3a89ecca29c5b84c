package worker

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/apiclient"
	"github.com/ringmaster/ringmaster/internal/events"
	"github.com/ringmaster/ringmaster/internal/health"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/internal/state"
	"github.com/ringmaster/ringmaster/internal/version"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// Config configures a worker.
type Config struct {
	// Coordinator is the coordinator's API address, or the replicas'
	// addresses separated by commas.
	Coordinator string
	// ID names the worker in etcd; empty means hostname-pid.
	ID string
	// Listen is the ring (all-reduce) address; port 0 picks one.
	Listen string
	// Advertise is the ring address peers dial; empty means the bound
	// address (with 127.0.0.1 for an unspecified host).
	Advertise string
	// Device is the compute device: "cpu".
	Device string
	// Threads is how many goroutines a compute kernel may use (0: all CPUs).
	Threads int
	// LeaseTTL is how long the worker's registration outlives its last
	// keep-alive; a dead worker is noticed within it.
	LeaseTTL time.Duration
	// RequestTimeout bounds each call to etcd and the coordinator.
	RequestTimeout time.Duration
	// StallTimeout is the least time the training loop may spend in its
	// own computation without progress before the worker reports itself
	// wedged (the limit grows to 10 times the longest stretch seen); 0
	// turns the watchdog off.
	StallTimeout time.Duration
	// HealthListen, if set, serves the HTTP probes /healthz and /readyz
	// (ready: registered, and etcd confirmed the lease within its TTL) on
	// host:port.
	HealthListen string
	// SampleLog, if set, is a file to which the worker appends one line
	// per committed step: "job step epoch lo hi world rank generation
	// worker", the part [lo, hi) of the epoch's order the ring consumed.
	// Tests count samples with it across failures.
	SampleLog string
	// EtcdEndpoints, if set, replace the etcd endpoints the coordinator
	// advertises (for a worker that reaches etcd through a proxy or
	// another address).
	EtcdEndpoints []string
	// CacheDir is where dataset shards read from object storage are
	// staged while in use ("": the system's temporary directory).
	CacheDir string

	// Insecure talks plain text without authentication (to a coordinator
	// run with --insecure).
	Insecure bool
	// Credentials is the worker's credential file (role worker, named
	// like the worker); empty: the one kept in StateDir, or a new one
	// traded for JoinToken.
	Credentials string
	// JoinToken is a token from `coordinator token create --role worker`.
	JoinToken string
	// EtcdTLS and NATSTLS are TLS files for an external etcd or NATS
	// (https:// and tls:// URLs); without them the worker's credential is
	// presented.
	EtcdTLS, NATSTLS pki.ExternalTLS
	// CAFile is the cluster's CA certificate (PEM), which pins the
	// coordinator when the join token carries no CA hash.
	CAFile string
	// StateDir is where the worker keeps its credential after joining
	// (default "ringmaster-worker-data").
	StateDir string
}

// DefaultLeaseTTL is how long a worker's registration outlives its last
// keep-alive (sent every third of it): a hung or vanished worker is
// noticed within it, and its job's ring rebuilt without it.
const DefaultLeaseTTL = 3 * time.Second

// DefaultStallTimeout is the stall watchdog's floor (see
// Config.StallTimeout).
const DefaultStallTimeout = time.Minute

// Worker registers itself in etcd under a lease, waits for the coordinator
// to claim it for a job, and runs its rank of that job.
type Worker struct {
	cfg  Config
	log  *zap.Logger
	keys state.Keys

	lis  net.Listener
	srv  *grpc.Server
	hub  *allreduce.Hub
	addr string

	etcd *clientv3.Client
	nc   *nats.Conn
	pub  *events.Publisher
	be   model.Backend

	dataMu sync.Mutex
	data   map[string]*mnist.Dataset

	drainOnce sync.Once
	drain     chan struct{} // closed by Drain

	// incarnation is random per process: the coordinator tells a worker
	// that only lost its lease (same incarnation, state intact) from one
	// that restarted.
	incarnation string

	// renewed is when etcd last confirmed the lease (unix nanoseconds),
	// and leaseTTL its TTL: past renewed + TTL the coordinator may have
	// given this worker's place to another, so it writes no checkpoint.
	renewed  atomic.Int64
	leaseTTL atomic.Int64 // nanoseconds
}

// leaseSafetyMargin is how long before its lease could have expired (by
// this worker's clock) the worker stops trusting it.
const leaseSafetyMargin = 500 * time.Millisecond

// leaseHeld returns an error when etcd has not confirmed this worker's
// lease recently enough to rule out that it expired: its job may then run
// on another ring, so its checkpoints could collide with that ring's.
func (w *Worker) leaseHeld() error {
	since, ttl := time.Since(time.Unix(0, w.renewed.Load())), time.Duration(w.leaseTTL.Load())
	if since > ttl-min(leaseSafetyMargin, ttl/6) {
		return fmt.Errorf("etcd has not confirmed this worker's lease for %v (TTL %v): it may have been replaced", since.Round(time.Millisecond), ttl)
	}
	return nil
}

// ready is the readiness probe: the worker is registered and etcd has
// confirmed its lease recently enough that it can take work.
func (w *Worker) ready(context.Context) error {
	if w.renewed.Load() == 0 {
		return errors.New("not registered yet")
	}
	return w.leaseHeld()
}

// Drain makes the worker leave: at once when idle, otherwise at the next
// step boundary of the job it trains (the job's ring shrinks or takes a
// replacement, and no step is lost), after which Run returns. It is what
// SIGTERM does (a node drain, a preemption, a rolling upgrade).
func (w *Worker) Drain() { w.drainOnce.Do(func() { close(w.drain) }) }

func (w *Worker) draining() bool {
	select {
	case <-w.drain:
		return true
	default:
		return false
	}
}

// errDrained ends serveLease after a drain.
var errDrained = errors.New("drained")

// New validates the configuration and binds the ring listener; Run does
// the rest.
func New(cfg Config, log *zap.Logger) (*Worker, error) {
	if cfg.Coordinator == "" {
		return nil, errors.New("worker: --coordinator is required (the coordinator's API address, e.g. 127.0.0.1:7070)")
	}
	if cfg.Device == "" {
		cfg.Device = "cpu"
	}
	if cfg.Device != "cpu" {
		return nil, fmt.Errorf("worker: --device %q is not available in this build; use --device cpu", cfg.Device)
	}
	if cfg.ID == "" {
		host, _ := os.Hostname()
		cfg.ID = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if !validID(cfg.ID) {
		return nil, fmt.Errorf("worker: --id %q: use letters, digits, '-', '_' and '.'", cfg.ID)
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = DefaultLeaseTTL
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("worker: ring listen %s: %w", cfg.Listen, err)
	}
	addr := cfg.Advertise
	if addr == "" {
		tcp := lis.Addr().(*net.TCPAddr)
		host := tcp.IP.String()
		if tcp.IP.IsUnspecified() {
			host = "127.0.0.1"
			log.Warn("ring listener has no specific host and no --advertise was given; advertising loopback, which only works on one machine")
		}
		addr = net.JoinHostPort(host, fmt.Sprint(tcp.Port))
	}
	if cfg.StateDir == "" {
		cfg.StateDir = "ringmaster-worker-data"
	}
	w := &Worker{cfg: cfg, log: log.With(zap.String("worker", cfg.ID)), lis: lis, addr: addr,
		be: model.NewCPU(cfg.Threads), data: map[string]*mnist.Dataset{}, drain: make(chan struct{}),
		incarnation: newIncarnation()}
	return w, nil
}

// ID returns the worker's id.
func (w *Worker) ID() string { return w.cfg.ID }

// Addr returns the advertised ring address.
func (w *Worker) Addr() string { return w.addr }

// Run serves until ctx is cancelled or a fatal error occurs. The worker's
// registration disappears with it: at once on a clean stop (the lease is
// revoked), within the lease TTL if the process dies.
func (w *Worker) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if w.cfg.HealthListen != "" {
		hs, err := health.Serve(w.cfg.HealthListen, w.ready)
		if err != nil {
			return err
		}
		defer hs.Close()
		w.log.Info("serving probes", zap.String("addr", hs.Addr()))
	}
	cred, err := w.credential(ctx)
	if err != nil {
		return err
	}
	var clientTLS *tls.Config
	var ringSec *allreduce.Security
	if cred != nil {
		if clientTLS, err = cred.ClientTLS(pki.HasRole(pki.RoleCoordinator)); err != nil {
			return err
		}
		if ringSec, err = ringSecurity(cred); err != nil {
			return err
		}
	}
	w.hub = allreduce.NewHub(w.log, ringSec)
	w.srv = grpc.NewServer(allreduce.ServerOptions(ringSec)...)
	w.hub.Register(w.srv)
	var wg sync.WaitGroup
	defer wg.Wait()
	serveErr := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		serveErr <- w.srv.Serve(w.lis)
	}()
	defer w.srv.Stop()

	info, err := w.coordinatorInfo(ctx, clientTLS)
	if err != nil {
		return err
	}
	w.keys = state.Keys{Prefix: info.EtcdPrefix}
	if len(w.cfg.EtcdEndpoints) > 0 {
		info.EtcdEndpoints = w.cfg.EtcdEndpoints
	}
	etcdTLS, err := pki.ClientFor(pki.SchemeOf(info.EtcdEndpoints[0]), w.cfg.EtcdTLS, cred)
	if err != nil {
		return fmt.Errorf("worker: etcd at %s: %w", info.EtcdEndpoints[0], err)
	}
	w.etcd, err = clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: w.cfg.RequestTimeout, TLS: etcdTLS,
		Logger: w.log.Named("etcd-client").WithOptions(zap.IncreaseLevel(zap.ErrorLevel)),
		// Reconnect within a second of etcd coming back (gRPC's default
		// backoff grows to two minutes): a restarted etcd gives leases
		// only their TTL to be renewed.
		DialOptions: []grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: time.Second}})}})
	if err != nil {
		return fmt.Errorf("worker: connecting to etcd %v: %w", info.EtcdEndpoints, err)
	}
	defer w.etcd.Close()
	natsTLS, err := pki.ClientFor(pki.SchemeOf(info.NatsUrl), w.cfg.NATSTLS, cred)
	if err != nil {
		return fmt.Errorf("worker: NATS at %s: %w", info.NatsUrl, err)
	}
	if w.nc, err = events.Connect(info.NatsUrl, "ringmaster-worker-"+w.cfg.ID, natsTLS); err != nil {
		return err
	}
	defer w.nc.Close()
	w.pub = events.NewPublisher(w.nc, events.PublisherToken(w.cfg.ID))

	// Each pass registers under a fresh lease and serves claims until the
	// lease is lost (for example etcd was unreachable for longer than the
	// TTL); then whatever job was running is abandoned, as the coordinator
	// has declared this worker lost, and the worker registers anew.
	for {
		err := w.serveLease(ctx)
		if ctx.Err() != nil || errors.Is(err, errDrained) {
			return nil
		}
		select {
		case err := <-serveErr:
			return fmt.Errorf("worker: ring server: %w", err)
		default:
		}
		w.log.Warn("registration lost; registering again", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(time.Second):
		}
	}
}

func (w *Worker) coordinatorInfo(ctx context.Context, clientTLS *tls.Config) (*pb.InfoResponse, error) {
	var opts []grpc.DialOption
	if clientTLS != nil {
		opts = append(opts, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
	}
	conn, err := apiclient.Dial(w.cfg.Coordinator, opts...)
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	defer conn.Close()
	cli := pb.NewCoordinatorClient(conn)
	backoff := 200 * time.Millisecond
	for {
		cctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
		info, err := cli.Info(cctx, &pb.InfoRequest{}, grpc.WaitForReady(true))
		cancel()
		if err == nil {
			return info, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		w.log.Warn("coordinator not reachable yet; retrying", zap.String("coordinator", w.cfg.Coordinator), zap.Error(err))
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// register puts this worker's registration under a new lease (of which
// kctx's end stops the keep-alive) and returns the lease, the revision of
// the registration and the keep-alive channel.
func (w *Worker) register(ctx, kctx context.Context) (clientv3.LeaseID, int64, <-chan *clientv3.LeaseKeepAliveResponse, error) {
	ttl := max(int64(w.cfg.LeaseTTL/time.Second), 1)
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	defer cancel()
	lease, err := w.etcd.Grant(rctx, ttl)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("granting a lease: %w", err)
	}
	host, _ := os.Hostname()
	reg := &pb.Worker{Id: w.cfg.ID, Addr: w.addr, Devices: []string{w.cfg.Device}, Version: version.Version,
		RegisteredMs: time.Now().UnixMilli(), Hostname: host, LeaseTtlS: ttl, Incarnation: w.incarnation}
	key := w.keys.Worker(w.cfg.ID)
	// Delete first so that each registration gets a new create revision.
	_, err = w.etcd.Delete(rctx, key)
	var put *clientv3.PutResponse
	if err == nil {
		put, err = w.etcd.Put(rctx, key, state.Marshal(reg), clientv3.WithLease(lease.ID))
	}
	if err != nil {
		_, _ = w.etcd.Revoke(rctx, lease.ID)
		return 0, 0, nil, fmt.Errorf("registering: %w", err)
	}
	w.leaseTTL.Store(int64(time.Duration(ttl) * time.Second))
	w.renewed.Store(time.Now().UnixNano())
	ka, err := w.etcd.KeepAlive(kctx, lease.ID)
	if err != nil {
		return 0, 0, nil, fmt.Errorf("keeping the lease alive: %w", err)
	}
	w.log.Info("registered", zap.String("ring_addr", w.addr), zap.Int64("lease_ttl_s", ttl), zap.Int64("revision", put.Header.Revision),
		zap.String("incarnation", w.incarnation))
	return lease.ID, put.Header.Revision, ka, nil
}

// serveLease registers the worker under a new lease and runs jobs for the
// claims the coordinator writes, until ctx ends or the worker is fenced.
func (w *Worker) serveLease(ctx context.Context) error {
	kctx, stopKeepAlive := context.WithCancel(ctx)
	defer stopKeepAlive()
	var lease clientv3.LeaseID
	defer func() {
		// A clean stop deregisters at once rather than after the TTL.
		if lease != 0 {
			rctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
			_, _ = w.etcd.Revoke(rctx, lease)
			cancel()
		}
	}()
	lease, regRev, ka, err := w.register(ctx, kctx)
	if err != nil {
		return err
	}

	claimKey := w.keys.Claim(w.cfg.ID)
	rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
	cur, err := w.etcd.Get(rctx, claimKey)
	cancel()
	if err != nil {
		return fmt.Errorf("reading my claim: %w", err)
	}
	wch := w.etcd.Watch(kctx, claimKey, clientv3.WithRev(cur.Header.Revision+1))

	var run *jobRun
	defer func() { run.stop() }()
	handle := func(kv []byte, modRev int64, deleted bool) {
		if deleted || modRev < regRev {
			// Deleted, or left over from an earlier incarnation (the
			// coordinator releases those).
			if run != nil {
				w.log.Info("claim released; stopping the job", zap.String("job", run.jobID))
			}
			run.stop()
			run = nil
			return
		}
		c := &pb.Claim{}
		if err := state.Unmarshal(kv, c); err != nil {
			w.log.Error("undecodable claim", zap.Error(err))
			return
		}
		if run != nil && run.jobID == c.JobId && !run.finished() {
			// A new generation of the job this worker trains: the run
			// moves its trainer onto the new ring.
			run.update(c, string(kv))
			return
		}
		run.stop()
		run = w.startJob(ctx, c, string(kv))
	}
	if len(cur.Kvs) > 0 {
		handle(cur.Kvs[0].Value, cur.Kvs[0].ModRevision, false)
	}
	drain := w.drain
	var retry <-chan time.Time // reconnecting the lease keep-alive
	var lostAt time.Time
	for {
		// Draining, the worker waits for its job's run to leave the ring.
		var runDone <-chan struct{}
		if drain == nil && run != nil {
			runDone = run.done
		}
		if drain == nil && (run == nil || run.finished()) {
			w.log.Info("drained; leaving")
			return errDrained
		}
		select {
		case <-drain:
			drain = nil
			if run != nil {
				w.log.Info("draining: leaving the job at the next step boundary", zap.String("job", run.jobID))
			}
		case <-runDone:
		case <-ctx.Done():
			return ctx.Err()
		case resp, ok := <-ka:
			if ok && resp != nil && resp.TTL > 0 {
				w.renewed.Store(time.Now().UnixNano())
			}
			if !ok {
				// etcd is unreachable (or the lease is gone). Training
				// does not need it between decisions: the job goes on
				// while the worker finds out which.
				ka, lostAt = nil, time.Now()
				w.log.Warn("lost contact with etcd; the job goes on while the worker reconnects")
				retry = time.After(100 * time.Millisecond)
			}
		case <-retry:
			retry = nil
			rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
			ttl, err := w.etcd.TimeToLive(rctx, lease)
			cancel()
			switch {
			case err != nil:
				retry = time.After(250 * time.Millisecond)
			case ttl.TTL <= 0 && (run == nil || run.finished()):
				return fmt.Errorf("the lease expired while etcd was unreachable (for %v)", time.Since(lostAt).Round(time.Millisecond))
			case ttl.TTL <= 0:
				// The registration expired while this worker could not
				// reach etcd, but its job goes on. Whether the
				// coordinator moved the job on without it is for the
				// claim to say: register again (the same incarnation,
				// so the coordinator knows the state is still here)
				// and read the claim before anything else is written.
				old := lease
				nl, _, nka, err := w.register(ctx, kctx)
				if err != nil {
					w.log.Warn("registering again failed; retrying", zap.Error(err))
					retry = time.After(250 * time.Millisecond)
					break
				}
				lease, ka = nl, nka
				w.log.Warn("the registration expired while etcd was unreachable; registered again, the job goes on unless its claim moved",
					zap.Duration("unreachable", time.Since(lostAt)), zap.Int64("old_lease", int64(old)))
				rctx, cancel := context.WithTimeout(ctx, w.cfg.RequestTimeout)
				cur, err := w.etcd.Get(rctx, claimKey)
				cancel()
				switch {
				case err != nil:
					// The watch delivers what changed.
				case len(cur.Kvs) == 0:
					handle(nil, 0, true)
				default:
					handle(cur.Kvs[0].Value, cur.Kvs[0].ModRevision, false)
				}
			default:
				w.renewed.Store(time.Now().UnixNano())
				if ka, err = w.etcd.KeepAlive(kctx, lease); err != nil {
					ka, retry = nil, time.After(250*time.Millisecond)
				} else {
					w.log.Info("reconnected to etcd; the registration held", zap.Duration("after", time.Since(lostAt)))
				}
			}
		case wr, ok := <-wch:
			if !ok {
				return errors.New("claim watch closed")
			}
			if err := wr.Err(); err != nil {
				return fmt.Errorf("claim watch: %w", err)
			}
			for _, ev := range wr.Events {
				handle(ev.Kv.Value, ev.Kv.ModRevision, ev.Type == clientv3.EventTypeDelete)
			}
		}
	}
}

func newIncarnation() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func validID(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.') {
			return false
		}
	}
	return true
}
