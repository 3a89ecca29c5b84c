package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/cli"
	rmstate "github.com/ringmaster/ringmaster/internal/state"
)

// controlBench measures the control plane at scale: the real coordinator
// (its own process, with its embedded etcd and NATS) and simulated
// workers in this process, each with a real lease kept alive, that take
// the claims the coordinator writes and, as rank 0, write progress once a
// second and the result at the end, as real workers do.
type controlBench struct {
	workers, jobs, finished, jobWorkers int
	jobTime, retention, window          time.Duration
	dir, cpuProfile                     string
	compact                             bool
}

func newControlCommand() *cobra.Command {
	b := &controlBench{}
	cmd := &cobra.Command{
		Use:   "control [--workers 1000] [--jobs 200] [--finished 10000]",
		Short: "Scheduling latency, coordinator CPU, etcd operations and database size with many workers and many finished jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if b.workers < b.jobs*b.jobWorkers {
				return fmt.Errorf("--workers %d cannot run --jobs %d of %d workers each", b.workers, b.jobs, b.jobWorkers)
			}
			return b.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.IntVar(&b.workers, "workers", 1000, "simulated workers (each with its own lease)")
	f.IntVar(&b.jobs, "jobs", 200, "jobs running at once (a finished one is replaced at once)")
	f.IntVar(&b.jobWorkers, "job-workers", 5, "workers per job")
	f.IntVar(&b.finished, "finished", 10000, "finished jobs after which the second measurement is taken")
	f.DurationVar(&b.jobTime, "job-time", 2*time.Second, "how long a simulated job trains on average (each one from half to one and a half times it)")
	f.DurationVar(&b.retention, "retention", 30*time.Second, "the coordinator's --job-retention")
	f.DurationVar(&b.window, "window", 10*time.Second, "length of each measurement window")
	f.StringVar(&b.dir, "dir", "", "working directory (default: a temporary one)")
	f.StringVar(&b.cpuProfile, "cpu-profile", "", "write the coordinator process's CPU profile to this file")
	f.BoolVar(&b.compact, "compact", true, "compact etcd's history before each measurement window, as its periodic compaction does in a long run")
	return cmd
}

// newHiddenServeCommand lets this binary run the coordinator process.
func newHiddenServeCommand() *cobra.Command {
	for _, c := range cli.NewCoordinatorCommand().Commands() {
		if c.Name() == "serve" {
			c.Hidden = true
			return c
		}
	}
	panic("ringbench: the coordinator has no serve command")
}

type window struct {
	cpuMs, ops float64
	secs       float64
	jobs       int64 // jobs finished during the window
}

func (b *controlBench) run(ctx context.Context) error {
	dir := b.dir
	if dir == "" {
		d, err := os.MkdirTemp("", "ringbench-control-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	addr := l.Addr().String()
	l.Close()
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"serve", "--listen", addr, "--data-dir", filepath.Join(dir, "coord"),
		"--job-retention", b.retention.String(), "--log-level", "warn", "--log-file", filepath.Join(dir, "coordinator.log")}
	if b.cpuProfile != "" {
		args = append(args, "--cpu-profile", b.cpuProfile)
	}
	coord := exec.Command(exe, args...)
	coord.Stdout, coord.Stderr = os.Stderr, os.Stderr
	setDeathSignal(coord)
	if err := coord.Start(); err != nil {
		return err
	}
	defer func() {
		// SIGTERM, so that a profile is written; SIGKILL if it hangs.
		_ = coord.Process.Signal(syscall.SIGTERM)
		t := time.AfterFunc(30*time.Second, func() { _ = coord.Process.Kill() })
		_ = coord.Wait()
		t.Stop()
	}()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	api := pb.NewCoordinatorClient(conn)
	var info *pb.InfoResponse
	if err := waitUntil(ctx, time.Minute, func() (bool, error) {
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		info, err = api.Info(rctx, &pb.InfoRequest{}, grpc.WaitForReady(true))
		return err == nil, nil
	}); err != nil {
		return fmt.Errorf("the coordinator did not answer: %w", err)
	}
	etcdURL := info.EtcdEndpoints[0]
	etcd, err := clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		return err
	}
	defer etcd.Close()
	keys := rmstate.Keys{Prefix: info.EtcdPrefix}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	// Workers: a lease each, kept alive at the real rate (a third of the
	// default 3 s TTL).
	for i := range b.workers {
		id := fmt.Sprintf("sim%05d", i)
		lease, err := etcd.Grant(ctx, 3)
		if err != nil {
			return err
		}
		ka, err := etcd.KeepAlive(ctx, lease.ID)
		if err != nil {
			return err
		}
		go func() {
			for range ka {
			}
		}()
		reg := &pb.Worker{Id: id, Addr: "127.0.0.1:1", Devices: []string{"cpu"}, LeaseTtlS: 3, Incarnation: id, RegisteredMs: time.Now().UnixMilli()}
		if _, err := etcd.Put(ctx, keys.Worker(id), rmstate.Marshal(reg), clientv3.WithLease(lease.ID)); err != nil {
			return err
		}
	}
	fmt.Fprintf(os.Stderr, "ringbench control: %d workers registered\n", b.workers)

	var (
		mu        sync.Mutex
		submitted = map[string]time.Time{}
		claimed   = map[string]int{}
		latencies []time.Duration
		finished  atomic.Int64
		wg        sync.WaitGroup
	)
	spec := []byte(fmt.Sprintf("name: sim\nmodel: cnn\ndataset: {name: mnist}\nworkers: %d\nbatch_size: 8\nsteps: 10\n", b.jobWorkers))
	submit := func() error {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		t0 := time.Now()
		r, err := api.SubmitJob(rctx, &pb.SubmitJobRequest{SpecYaml: spec})
		if err != nil {
			return err
		}
		mu.Lock()
		if _, seen := submitted[r.JobId]; !seen {
			submitted[r.JobId] = t0
		}
		mu.Unlock()
		return nil
	}
	submitErr := make(chan error, 1)
	trySubmit := func() {
		if err := submit(); err != nil && ctx.Err() == nil {
			select {
			case submitErr <- err:
			default:
			}
		}
	}
	// Rank 0 of a simulated job: progress once a second, then the result,
	// each guarded by its claim as a real rank 0 writes them.
	train := func(w, job string, gen uint64, claimRev int64) {
		defer wg.Done()
		start := time.Now()
		// Durations spread evenly, so that jobs do not finish in waves
		// (the 200 first start together): the load is steady from the
		// first window on.
		d := b.jobTime/2 + rand.N(b.jobTime)
		for step := int64(1); ; step++ {
			done := time.Since(start) >= d
			p := &pb.Progress{Generation: gen, Step: step, TotalSteps: 10, UpdatedMs: time.Now().UnixMilli(), Done: done}
			if done {
				p.Result = &pb.JobResult{Steps: step}
			}
			ops := []clientv3.Op{clientv3.OpPut(keys.Progress(job), rmstate.Marshal(p))}
			if done {
				ops = append(ops, clientv3.OpPut(keys.Result(job), rmstate.Marshal(p)))
			}
			rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			_, err := etcd.Txn(rctx).If(clientv3.Compare(clientv3.ModRevision(keys.Claim(w)), "=", claimRev)).
				Then(ops...).Commit()
			cancel()
			if err != nil || done {
				if done && err == nil {
					finished.Add(1)
				}
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(min(time.Second, max(d-time.Since(start), 0))):
			}
		}
	}
	// A finished job is replaced once the coordinator has released its
	// workers, so that every submission finds enough idle workers: the
	// latency measured is the scheduler's, not a wait for a free worker.
	released := map[string]int{}
	wch := etcd.Watch(ctx, keys.Claims(), clientv3.WithPrefix(), clientv3.WithPrevKV())
	wg.Add(1)
	go func() {
		defer wg.Done()
		for wr := range wch {
			for _, ev := range wr.Events {
				if ev.Type == clientv3.EventTypeDelete {
					c := &pb.Claim{}
					if ev.PrevKv == nil || rmstate.Unmarshal(ev.PrevKv.Value, c) != nil {
						continue
					}
					mu.Lock()
					released[c.JobId]++
					all := released[c.JobId] == b.jobWorkers
					if all {
						delete(released, c.JobId)
					}
					mu.Unlock()
					if all {
						go trySubmit()
					}
					continue
				}
				c := &pb.Claim{}
				if rmstate.Unmarshal(ev.Kv.Value, c) != nil || c.Generation != 1 {
					continue
				}
				w := strings.TrimPrefix(string(ev.Kv.Key), keys.Claims())
				mu.Lock()
				claimed[c.JobId]++
				if claimed[c.JobId] == b.jobWorkers {
					if t0, ok := submitted[c.JobId]; ok {
						latencies = append(latencies, time.Since(t0))
					}
					delete(claimed, c.JobId)
				}
				mu.Unlock()
				if c.Rank == 0 {
					wg.Add(1)
					go train(w, c.JobId, c.Generation, ev.Kv.ModRevision)
				}
			}
		}
	}()
	defer func() { cancel(); wg.Wait() }()
	for range b.jobs {
		if err := submit(); err != nil {
			return err
		}
	}

	// compact drops etcd's history up to now, as the embedded etcd's
	// periodic compaction does every few minutes of a long run (this one
	// is too short for it): without it, etcd's index of every revision
	// written grows through the run, and so does the CPU it takes.
	compact := func() error {
		if !b.compact {
			return nil
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		st, err := etcd.Status(rctx, etcdURL)
		if err != nil {
			return err
		}
		_, err = etcd.Compact(rctx, st.Header.Revision)
		return err
	}
	measure := func(label string) (window, error) {
		if err := compact(); err != nil {
			return window{}, err
		}
		cpu0, err := procCPUMs(coord.Process.Pid)
		if err != nil {
			return window{}, err
		}
		ops0, err := etcdOps(ctx, etcdURL)
		if err != nil {
			return window{}, err
		}
		t0, f0 := time.Now(), finished.Load()
		select {
		case <-ctx.Done():
			return window{}, ctx.Err()
		case err := <-submitErr:
			return window{}, err
		case <-time.After(b.window):
		}
		cpu1, err := procCPUMs(coord.Process.Pid)
		if err != nil {
			return window{}, err
		}
		ops1, err := etcdOps(ctx, etcdURL)
		if err != nil {
			return window{}, err
		}
		w := window{cpuMs: cpu1 - cpu0, ops: ops1 - ops0, secs: time.Since(t0).Seconds(), jobs: finished.Load() - f0}
		fmt.Fprintf(os.Stderr, "ringbench control: %s: %d finished, %.1f jobs/s, coordinator CPU %.0f ms/s (%.1f ms a job), etcd %.0f ops/s (%.1f a job)\n",
			label, finished.Load(), float64(w.jobs)/w.secs, w.cpuMs/w.secs, w.cpuMs/float64(max(w.jobs, 1)), w.ops/w.secs, w.ops/float64(max(w.jobs, 1)))
		return w, nil
	}
	waitFinished := func(n int64) error {
		for finished.Load() < n {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case err := <-submitErr:
				return err
			case <-time.After(100 * time.Millisecond):
			}
		}
		return nil
	}
	if err := waitFinished(100); err != nil {
		return err
	}
	early, err := measure("after 100 finished jobs")
	if err != nil {
		return err
	}
	if err := waitFinished(int64(b.finished)); err != nil {
		return err
	}
	late, err := measure(fmt.Sprintf("after %d finished jobs", b.finished))
	if err != nil {
		return err
	}
	// The embedded etcd compacts its history every 10 minutes; compact
	// now, as it would, and measure what the keys take.
	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	st, err := etcd.Status(rctx, etcdURL)
	if err != nil {
		return err
	}
	if _, err := etcd.Compact(rctx, st.Header.Revision, clientv3.WithCompactPhysical()); err != nil {
		return err
	}
	if st, err = etcd.Status(rctx, etcdURL); err != nil {
		return err
	}
	cnt, err := etcd.Get(rctx, keys.Prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		return err
	}
	mu.Lock()
	lat := slices.Clone(latencies)
	mu.Unlock()
	// The first --jobs submissions arrive together, one after another:
	// their latency, and that of the steady state after them, are also
	// given apart.
	first := slices.Clone(lat[:min(b.jobs, len(lat))])
	rest := slices.Clone(lat[min(b.jobs, len(lat)):])
	slices.Sort(lat)
	slices.Sort(first)
	slices.Sort(rest)
	pct := func(l []time.Duration, p int) time.Duration {
		if len(l) == 0 {
			return 0
		}
		return l[min(len(l)-1, len(l)*p/100)]
	}
	p99, p50 := pct(lat, 99), pct(lat, 50)
	fmt.Fprintf(os.Stderr, "ringbench control: schedule p50/p99 of the first %d submissions %.1f/%.1f ms, of the %d after them %.1f/%.1f ms, max %.1f ms\n",
		len(first), ms(pct(first, 50)), ms(pct(first, 99)), len(rest), ms(pct(rest, 50)), ms(pct(rest, 99)), ms(lat[len(lat)-1]))
	perJob := func(w window, v float64) float64 { return v / float64(max(w.jobs, 1)) }
	fmt.Printf("workers=%d jobs=%d finished=%d schedule_p50_ms=%.1f schedule_p99_ms=%.1f coordinator_cpu_ms_per_s_at_100=%.0f coordinator_cpu_ms_per_s_at_%d=%.0f etcd_ops_per_s_at_100=%.0f etcd_ops_per_s_at_%d=%.0f etcd_ops_per_job_at_100=%.1f etcd_ops_per_job_at_%d=%.1f cpu_ms_per_job_at_100=%.1f cpu_ms_per_job_at_%d=%.1f etcd_db_bytes=%d etcd_db_in_use_bytes=%d etcd_keys=%d\n",
		b.workers, b.jobs, finished.Load(), ms(p50), ms(p99), early.cpuMs/early.secs, b.finished, late.cpuMs/late.secs,
		early.ops/early.secs, b.finished, late.ops/late.secs, perJob(early, early.ops), b.finished, perJob(late, late.ops),
		perJob(early, early.cpuMs), b.finished, perJob(late, late.cpuMs), st.DbSize, st.DbSizeInUse, cnt.Count)
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// procCPUMs is a process's user and system CPU time in milliseconds.
func procCPUMs(pid int) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, fmt.Errorf("coordinator CPU time (Linux /proc only): %w", err)
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0, errors.New("unexpected /proc stat format")
	}
	u, _ := strconv.ParseFloat(f[11], 64)
	s, _ := strconv.ParseFloat(f[12], 64)
	return (u + s) * 10, nil // USER_HZ is 100 on Linux
}

// etcdOps sums etcd's range, put, delete and txn counters from its
// metrics endpoint.
func etcdOps(ctx context.Context, clientURL string) (float64, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(rctx, http.MethodGet, strings.TrimSuffix(clientURL, "/")+"/metrics", nil)
	if err != nil {
		return 0, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("etcd metrics: %w", err)
	}
	defer resp.Body.Close()
	var total float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		for _, name := range []string{"etcd_mvcc_range_total", "etcd_mvcc_put_total", "etcd_mvcc_delete_total", "etcd_mvcc_txn_total"} {
			if strings.HasPrefix(line, name+" ") || strings.HasPrefix(line, name+"{") {
				v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
				if err == nil {
					total += v
				}
			}
		}
	}
	return total, sc.Err()
}
