package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"runtime"
	"runtime/debug"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"google.golang.org/grpc"

	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/pkg/allreduce"
)

// allreduceOpts are the flags shared by the parent and its rank processes.
type allreduceOpts struct {
	world     int
	sizes     string
	iters     int
	warmup    int
	timeout   time.Duration
	slice     int
	directMax int
	wire      string
	mem       bool
	cpu       bool
	profile   string
	tls       bool
	caDir     string // the CA the parent made for --tls (ranks' flag)
}

func (o *allreduceOpts) flags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.IntVar(&o.world, "world", 4, "number of ranks (processes)")
	f.StringVar(&o.sizes, "sizes", "4K,64K,1M,16M,64M", "buffer sizes in bytes (K, M, G suffixes are powers of 2)")
	f.IntVar(&o.iters, "iters", 0, "timed iterations per size (0: max(3, min(50, 2e8/bytes)), as the peer scripts)")
	f.IntVar(&o.warmup, "warmup", 2, "untimed iterations per size")
	f.DurationVar(&o.timeout, "timeout", 30*time.Second, "collective deadline")
	f.IntVar(&o.slice, "slice", 0, "ring frame size in bytes (0: library default)")
	f.IntVar(&o.directMax, "direct-max", 0, "largest collective sent directly to every peer (0: library default, -1: never)")
	f.StringVar(&o.wire, "wire", "f32", "wire encoding: f32 or bf16")
	f.StringVar(&o.profile, "cpuprofile", "", "write each rank's CPU profile to this path plus .rankN")
	f.BoolVar(&o.mem, "mem", false, "also report each rank's peak extra resident memory during the calls, as a multiple of the buffer")
	f.BoolVar(&o.tls, "tls", false, "run the ring over mutual TLS with worker certificates, as workers do by default (a CA made for the run)")
	f.StringVar(&o.caDir, "ca-dir", "", "internal: the run's CA directory")
	_ = f.MarkHidden("ca-dir")
	f.BoolVar(&o.cpu, "cpu", false, "also report the CPU time (user+system) of all ranks together per timed iteration, in ms: a figure that, unlike sec, hardly depends on what else the machine runs")
}

func (o *allreduceOpts) args() []string {
	return []string{"--world", strconv.Itoa(o.world), "--sizes", o.sizes, "--iters", strconv.Itoa(o.iters),
		"--warmup", strconv.Itoa(o.warmup), "--timeout", o.timeout.String(), "--slice", strconv.Itoa(o.slice),
		"--direct-max", strconv.Itoa(o.directMax), "--wire", o.wire, "--mem=" + strconv.FormatBool(o.mem), "--cpu=" + strconv.FormatBool(o.cpu), "--cpuprofile", o.profile,
		"--tls=" + strconv.FormatBool(o.tls), "--ca-dir", o.caDir}
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(strings.ToUpper(f))
		mult := 1
		switch {
		case strings.HasSuffix(f, "K"):
			mult, f = 1<<10, f[:len(f)-1]
		case strings.HasSuffix(f, "M"):
			mult, f = 1<<20, f[:len(f)-1]
		case strings.HasSuffix(f, "G"):
			mult, f = 1<<30, f[:len(f)-1]
		}
		n, err := strconv.Atoi(f)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("bad size %q", f)
		}
		if (n*mult)%4 != 0 {
			return nil, fmt.Errorf("size %d is not a whole number of float32", n*mult)
		}
		out = append(out, n*mult)
	}
	return out, nil
}

func newAllReduceCmd() *cobra.Command {
	o := &allreduceOpts{}
	cmd := &cobra.Command{
		Use:   "allreduce",
		Short: "All-reduce (sum, float32) across --world rank processes over gRPC on loopback",
		Long: `Starts --world copies of this program as rank processes on loopback, which
set up a ring through real gRPC connections and time AllReduce for each size.
Each iteration is a barrier then one timed all-reduce; sec is the median over
iterations, the maximum over ranks; algbw = bytes/sec/1e9 and busbw = algbw *
2(n-1)/n, as nccl-tests and the peer scripts in shared/bench print them.`,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAllReduceParent(cmd.Context(), o, cmd.OutOrStdout())
		},
	}
	o.flags(cmd)
	return cmd
}

func newAllReduceRankCmd() *cobra.Command {
	o := &allreduceOpts{}
	var rank int
	cmd := &cobra.Command{
		Use:    "allreduce-rank",
		Hidden: true,
		Short:  "One rank of the allreduce benchmark (started by allreduce)",
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runAllReduceRank(cmd.Context(), o, rank, os.Stdin, os.Stdout)
		},
	}
	o.flags(cmd)
	cmd.Flags().IntVar(&rank, "rank", 0, "this process's rank")
	return cmd
}

// rankProc is one child process and its pipes.
type rankProc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
}

func runAllReduceParent(ctx context.Context, o *allreduceOpts, stdout io.Writer) error {
	sizes, err := parseSizes(o.sizes)
	if err != nil {
		return err
	}
	if o.world < 1 {
		return fmt.Errorf("--world must be at least 1")
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if o.tls {
		dir, err := os.MkdirTemp("", "ringbench-ca-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		if _, _, err := pki.LoadOrCreateCA(dir); err != nil {
			return err
		}
		o.caDir = dir
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	procs := make([]*rankProc, o.world)
	var wg sync.WaitGroup
	defer wg.Wait()
	for r := range procs {
		cmd := exec.CommandContext(ctx, self, append([]string{"allreduce-rank", "--rank", strconv.Itoa(r)}, o.args()...)...)
		cmd.Stderr = os.Stderr
		setDeathSignal(cmd)
		in, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		out, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		p := &rankProc{cmd: cmd, stdin: in, lines: make(chan string, 64)}
		procs[r] = p
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer close(p.lines)
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
		}()
	}
	defer func() {
		for _, p := range procs {
			if p != nil {
				p.stdin.Close()
				_ = p.cmd.Wait()
			}
		}
	}()
	next := func(r int, prefix string) ([]string, error) {
		select {
		case l, ok := <-procs[r].lines:
			if !ok {
				return nil, fmt.Errorf("rank %d exited early", r)
			}
			f := strings.Fields(l)
			if len(f) == 0 || f[0] != prefix {
				return nil, fmt.Errorf("rank %d said %q, expected %s", r, l, prefix)
			}
			return f[1:], nil
		case <-time.After(o.timeout + 30*time.Second):
			return nil, fmt.Errorf("rank %d said nothing for %s", r, o.timeout+30*time.Second)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	addrs := make([]string, o.world)
	for r := range procs {
		f, err := next(r, "addr")
		if err != nil {
			return err
		}
		addrs[r] = f[0]
	}
	for _, p := range procs {
		if _, err := fmt.Fprintf(p.stdin, "addrs %s\n", strings.Join(addrs, ",")); err != nil {
			return err
		}
	}
	for _, size := range sizes {
		worst, worstMem, cpu := 0.0, 0.0, 0.0
		for r := range procs {
			f, err := next(r, "result")
			if err != nil {
				return err
			}
			if len(f) < 4 {
				return fmt.Errorf("rank %d: bad result %v", r, f)
			}
			if f[0] == "error" {
				return fmt.Errorf("rank %d: %s", r, strings.Join(f[1:], " "))
			}
			sec, _ := strconv.ParseFloat(f[1], 64)
			mem, _ := strconv.ParseFloat(f[2], 64)
			c, _ := strconv.ParseFloat(f[3], 64)
			worst, worstMem, cpu = max(worst, sec), max(worstMem, mem), cpu+c
		}
		alg := float64(size) / worst / 1e9
		bus := alg * 2 * float64(o.world-1) / float64(o.world)
		line := fmt.Sprintf("allreduce world=%d bytes=%d sec=%.6f algbw=%.3f busbw=%.3f", o.world, size, worst, alg, bus)
		if o.mem && size > 0 {
			line += fmt.Sprintf(" extra_mem=%.2fx", worstMem/float64(size))
		}
		if o.cpu {
			line += fmt.Sprintf(" cpu_ms=%.3f", cpu*1e3)
		}
		fmt.Fprintln(stdout, line)
	}
	return nil
}

func runAllReduceRank(ctx context.Context, o *allreduceOpts, rank int, stdin io.Reader, stdout io.Writer) error {
	sizes, err := parseSizes(o.sizes)
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	profile := ""
	if o.profile != "" {
		profile = fmt.Sprintf("%s.rank%d", o.profile, rank)
	}
	stop, err := startCPUProfile(profile)
	if err != nil {
		return err
	}
	defer stop()
	var sec *allreduce.Security
	ids := make([]string, o.world)
	for r := range ids {
		ids[r] = fmt.Sprintf("rank%d", r)
	}
	if o.tls {
		ca, err := pki.LoadCADir(o.caDir)
		if err != nil {
			return err
		}
		cred, err := ca.Issue(pki.Identity{Role: pki.RoleWorker, Name: ids[rank]}, pki.Hosts{"127.0.0.1"}, time.Hour)
		if err != nil {
			return err
		}
		pair, err := cred.TLSCertificate()
		if err != nil {
			return err
		}
		pool, _ := cred.Pool()
		sec = allreduce.TLSSecurity(pair, pool, pki.WorkerName)
	}
	hub := allreduce.NewHub(zap.NewNop(), sec)
	srv := grpc.NewServer(allreduce.ServerOptions(sec)...)
	hub.Register(srv)
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()
	fmt.Fprintf(stdout, "addr %s\n", lis.Addr())
	sc := bufio.NewScanner(stdin)
	if !sc.Scan() {
		return errors.New("no address list on stdin")
	}
	f := strings.Fields(sc.Text())
	if len(f) != 2 || f[0] != "addrs" {
		return fmt.Errorf("bad address list %q", sc.Text())
	}
	addrs := strings.Split(f[1], ",")
	dctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	tr, err := hub.Dial(dctx, allreduce.Peering{Job: "ringbench", Generation: 1, Rank: rank, World: o.world, Addrs: addrs, Identities: ids})
	cancel()
	if err != nil {
		return err
	}
	wire := allreduce.WireF32
	if o.wire == "bf16" {
		wire = allreduce.WireBF16
	}
	comm, err := allreduce.New(allreduce.Config{Rank: rank, World: o.world, Generation: 1, Timeout: o.timeout,
		SliceBytes: o.slice, DirectMaxBytes: o.directMax, Wire: wire}, tr)
	if err != nil {
		return err
	}
	defer comm.Close()
	for _, size := range sizes {
		sec, mem, cpu, err := timeAllReduce(ctx, comm, o, size)
		if err != nil {
			fmt.Fprintf(stdout, "result error %s\n", strings.ReplaceAll(err.Error(), "\n", " "))
			return err
		}
		fmt.Fprintf(stdout, "result %d %.9f %.0f %.9f\n", size, sec, mem, cpu)
	}
	return comm.Barrier(ctx)
}

// timeAllReduce checks one all-reduce for correctness, then times
// iterations of barrier + all-reduce and returns the median, the peak
// resident memory above what the process held before (buffer included),
// and the process's CPU seconds per iteration (barrier included).
func timeAllReduce(ctx context.Context, comm *allreduce.Comm, o *allreduceOpts, size int) (float64, float64, float64, error) {
	n := size / 4
	buf := make([]float32, n)
	w, r := comm.World(), comm.Rank()
	for i := range buf {
		buf[i] = float32(r + 1)
	}
	if err := comm.AllReduce(ctx, buf, allreduce.Sum); err != nil {
		return 0, 0, 0, err
	}
	want := float32(w * (w + 1) / 2)
	for i, v := range buf {
		if v != want {
			return 0, 0, 0, fmt.Errorf("rank %d: element %d of %d is %v after the all-reduce, want %v", r, i, n, v, want)
		}
	}
	for i := range buf {
		buf[i] = 1
	}
	iters := o.iters
	if iters <= 0 {
		iters = max(3, min(50, int(2e8/float64(max(size, 1)))))
	}
	for range o.warmup {
		if err := comm.AllReduce(ctx, buf, allreduce.Sum); err != nil {
			return 0, 0, 0, err
		}
	}
	var base float64
	if o.mem {
		runtime.GC()
		debug.FreeOSMemory()
		_ = os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) // resets the peak (VmHWM)
		base = procStatus("VmRSS")
	}
	times := make([]float64, 0, iters)
	cpu0 := cpuSeconds()
	for range iters {
		if err := comm.Barrier(ctx); err != nil {
			return 0, 0, 0, err
		}
		start := time.Now()
		if err := comm.AllReduce(ctx, buf, allreduce.Sum); err != nil {
			return 0, 0, 0, err
		}
		times = append(times, time.Since(start).Seconds())
	}
	cpu := (cpuSeconds() - cpu0) / float64(iters)
	var extra float64
	if o.mem {
		extra = procStatus("VmHWM") - base
	}
	slices.Sort(times)
	med := times[len(times)/2]
	if len(times)%2 == 0 {
		med = (times[len(times)/2-1] + times[len(times)/2]) / 2
	}
	return med, extra, cpu, nil
}

// procStatus reads a memory line of /proc/self/status, in bytes (0 where
// there is no /proc).
func procStatus(key string) float64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, key+":") {
			f := strings.Fields(l)
			if len(f) >= 2 {
				kb, _ := strconv.ParseFloat(f[1], 64)
				return kb * 1024
			}
		}
	}
	return 0
}
