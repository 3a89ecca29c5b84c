package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/model"
)

type ckptBench struct {
	size, stallSize   int64
	store             string
	iterations        int
	partSize          int64
	parallel, tensors int
	out               io.Writer
	train             *ckptTrain // --train-model: the training-loop measurement instead
	verbose           bool
}

func newCheckpointCommand() *cobra.Command {
	b := &ckptBench{}
	var size, stall, part, cpuProfile string
	tb := ckptTrain{cfg: model.Config{Vocab: 256, Ctx: 64}}
	cmd := &cobra.Command{
		Use:   "checkpoint --size 512M --store URL",
		Short: "Save and load GB/s of checkpoints against a plain copy of the same bytes, and the training stall of asynchronous saves",
		Long: `Measures, in one run and alternating with the peers:

  file:// store   save and load of a checkpoint of --size bytes against a plain
                  buffered write and read of the same bytes (bufio, 1 MiB);
  s3:// store     save and load against one plain multipart PUT (and a GET) of
                  the same bytes with minio-go to the same server;
  both            the time the training loop is blocked by an asynchronous save
                  of --stall-size bytes against the same save done synchronously.

With --train-model, it measures instead what checkpoints cost a real training
loop: the model (pkg/model, AdamW, synthetic tokens) trains with no
checkpoints, with a synchronous save every --every steps, with
AsyncSaver.Save and with AsyncSaver.Begin/Pending.Wait, the modes alternated
for --rounds rounds; it prints each mode's stall (the extra time of the
checkpoint step over a plain step, median) against the synchronous save's,
the time the loop was blocked, the slowdown of the step that overlaps the
copy and the mean step time of each mode.

--store versitygw starts a versitygw S3 server on loopback serving a temporary
directory and uses it (a missing versitygw is installed first with go install,
as the tests do; see internal/versitygw).
A file store that fsyncs (the default) is compared with the plain write
followed by fsync (and, without a target, the plain write), one with
?fsync=false with the plain write alone. Each line gives the median over
--iterations, after one round not counted, and [min-max]; GB/s is 1e9
bytes per second.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var err error
			if b.size, err = parseSize(size); err != nil {
				return err
			}
			if b.stallSize, err = parseSize(stall); err != nil {
				return err
			}
			if b.partSize, err = parseSize(part); err != nil {
				return err
			}
			b.out = cmd.OutOrStdout()
			b.verbose = tb.verbose
			if tb.cfg.Name != "" {
				if tb.cfg.Name != "gpt" {
					tb.cfg.Heads = 0
				}
				b.train = &tb
			}
			stop, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stop()
			return b.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&size, "size", "512M", "checkpoint size (K, M, G: powers of 1024)")
	f.StringVar(&stall, "stall-size", "128M", "state size of the asynchronous-stall measurement (at least 100 MB)")
	f.StringVar(&b.store, "store", "", "store URL: file:///dir, s3://bucket/prefix?endpoint=..., or versitygw")
	f.IntVar(&b.iterations, "iterations", 9, "measurements of each kind")
	f.StringVar(&part, "part-size", "16M", "part size of the checkpoint transfers")
	f.IntVar(&b.parallel, "parallel", checkpoint.DefaultParallelism, "parts in flight")
	f.IntVar(&b.tensors, "tensors", 16, "tensors the state is split into")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	f.StringVar(&tb.cfg.Name, "train-model", "", "measure the stall in a training loop of this model (gpt, lstm)")
	f.IntVar(&tb.cfg.Layers, "layers", 8, "--train-model: layers")
	f.IntVar(&tb.cfg.Dim, "dim", 512, "--train-model: width")
	f.IntVar(&tb.cfg.Heads, "heads", 8, "--train-model: attention heads (gpt)")
	f.IntVar(&tb.batch, "batch", 4, "--train-model: sequences per step")
	f.IntVar(&tb.every, "every", 4, "--train-model: checkpoint every this many steps")
	f.IntVar(&tb.ckpt, "checkpoints", 3, "--train-model: checkpoints per mode and round")
	f.IntVar(&tb.rounds, "rounds", 3, "--train-model: rounds of the four modes")
	f.IntVar(&tb.workers, "workers", 2, "--train-model: CPU backend workers")
	f.BoolVar(&tb.verbose, "verbose", false, "print every round's times (with --train-model: every step's)")
	_ = cmd.MarkFlagRequired("store")
	return cmd
}

func parseSize(s string) (int64, error) {
	mult := int64(1)
	t := strings.ToUpper(strings.TrimSuffix(strings.TrimSuffix(s, "B"), "i"))
	switch {
	case strings.HasSuffix(t, "K"):
		mult = 1 << 10
	case strings.HasSuffix(t, "M"):
		mult = 1 << 20
	case strings.HasSuffix(t, "G"):
		mult = 1 << 30
	}
	n, err := strconv.ParseInt(strings.TrimRight(t, "KMG"), 10, 64)
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("size %q: write it like 512M", s)
	}
	return n * mult, nil
}

// state is a checkpoint state of size bytes in a flat buffer cut into
// tensors, as a model's parameters are.
func state(size int64, tensors int, step int64) *checkpoint.State {
	flat := make([]float32, size/4)
	x := rand.New(rand.NewPCG(uint64(size), 1))
	for i := range flat {
		flat[i] = float32(x.NormFloat64())
	}
	st := &checkpoint.State{Step: step, World: 1, Meta: map[string]string{"bench": "checkpoint"}}
	per := (len(flat) + tensors - 1) / tensors
	for i := 0; i < len(flat); i += per {
		t := flat[i:min(i+per, len(flat))]
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: fmt.Sprintf("t%03d", i/per), Shape: []int{len(t)}, Data: t})
	}
	return st
}

// flatBytes is the state's bytes: its tensors are consecutive slices of
// one buffer.
func flatBytes(st *checkpoint.State) []byte {
	f := st.Tensors[0].Data[:st.Bytes()/4]
	return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(f))), 4*len(f))
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func gbps(bytes int64, d time.Duration) float64 { return float64(bytes) / d.Seconds() / 1e9 }

func (b *ckptBench) run(ctx context.Context) error {
	if b.stallSize < 100_000_000 {
		return fmt.Errorf("--stall-size %d: the stall target is stated for at least 100 MB of state", b.stallSize)
	}
	storeURL := b.store
	if storeURL == "versitygw" {
		dir, err := os.MkdirTemp("", "ringbench-s3-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		srv, err := versitygw.Run(ctx, filepath.Join(dir, "data"))
		if err != nil {
			return err
		}
		defer srv.Close()
		if err := srv.MakeBucket(ctx, "bench"); err != nil {
			return err
		}
		for _, kv := range versitygw.Env() {
			k, v, _ := strings.Cut(kv, "=")
			os.Setenv(k, v)
		}
		storeURL = srv.URL("bench", "ringbench")
	}
	store, err := checkpoint.Open(storeURL)
	if err != nil {
		return err
	}
	log := zap.NewNop()
	mgr := checkpoint.NewManager(store, "bench", 1<<20, log, checkpoint.PartSize(b.partSize), checkpoint.Parallelism(b.parallel))
	// Start clean, and leave nothing behind.
	cleanup := func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		objs, _ := store.List(cctx, "")
		for _, o := range objs {
			if strings.HasPrefix(o.Key, "bench/") || strings.HasPrefix(o.Key, "peer-") {
				_ = store.Delete(cctx, o.Key)
			}
		}
	}
	cleanup()
	defer cleanup()

	if b.train != nil {
		fmt.Fprintf(b.out, "checkpoint stall in a training loop: store %s, part %d x %d in flight\n", store.URL(), b.partSize, b.parallel)
		return b.runTrain(ctx, mgr, *b.train)
	}
	fmt.Fprintf(b.out, "checkpoint benchmark: store %s, %d bytes in %d tensors, part %d x %d in flight, %d iterations, medians\n",
		store.URL(), b.size, b.tensors, b.partSize, b.parallel, b.iterations)
	st := state(b.size, b.tensors, 0)
	var peer peerIO
	switch s := store.(type) {
	case *checkpoint.FileStore:
		p, err := s.Path("peer-copy.bin")
		if err != nil {
			return err
		}
		peer = &filePeer{path: p}
	case *checkpoint.S3Store:
		cfg, err := checkpoint.ParseS3URL(s.URL())
		if err != nil {
			return err
		}
		if peer, err = newS3Peer(cfg); err != nil {
			return err
		}
	default:
		return fmt.Errorf("no peer for store %T", store)
	}

	var pw, pr, ow, or []time.Duration
	var pwSync []time.Duration
	step := int64(0)
	// One round of each first, not counted: the first touch of the page
	// cache and of fresh buffers is slower than the rest on any side.
	for i := -1; i < b.iterations; i++ {
		step++
		st.Step = step
		var w, r time.Duration
		ours := func() error {
			settle(b.size)
			start := time.Now()
			if _, err := mgr.Save(ctx, st); err != nil {
				return err
			}
			w = time.Since(start)
			start = time.Now()
			got, _, err := mgr.LoadStep(ctx, step)
			if err != nil {
				return err
			}
			r = time.Since(start)
			if got.Bytes() != st.Bytes() {
				return errors.New("loaded a different size")
			}
			return mgr.Delete(ctx, step)
		}
		var tw, tws, tr time.Duration
		theirs := func() (err error) {
			tw, tws, tr, err = peer.writeRead(ctx, flatBytes(st))
			return err
		}
		// Alternate which goes first.
		first, second := ours, theirs
		if i%2 != 0 {
			first, second = theirs, ours
		}
		if err := first(); err != nil {
			return err
		}
		if err := second(); err != nil {
			return err
		}
		if b.verbose {
			fmt.Fprintf(b.out, "  round %d: save %.3f s, load %.3f s; peer write %.3f s, write+fsync %.3f s, read %.3f s\n",
				i, w.Seconds(), r.Seconds(), tw.Seconds(), tws.Seconds(), tr.Seconds())
		}
		if i >= 0 {
			ow, or = append(ow, w), append(or, r)
			pw, pwSync, pr = append(pw, tw), append(pwSync, tws), append(pr, tr)
		}
	}
	line := func(what string, d []time.Duration, ref []time.Duration, target string) {
		m := median(d)
		extra := fmt.Sprintf("  [%.3f-%.3f]", slices.Min(d).Seconds(), slices.Max(d).Seconds())
		if ref != nil {
			extra += fmt.Sprintf("  %.2fx the peer%s", median(ref).Seconds()/m.Seconds(), target)
		}
		fmt.Fprintf(b.out, "  %-44s %8.3f s  %6.2f GB/s%s\n", what, m.Seconds(), gbps(b.size, m), extra)
	}
	const target = " (target >= 0.80)"
	line(peer.name()+" write", pw, nil, "")
	if fs, ok := store.(*checkpoint.FileStore); ok {
		// Like against like: a store that fsyncs before it commits (the
		// default) against the plain write followed by fsync; one with
		// fsync=false against the plain write alone. A store that fsyncs
		// is also shown against the plain write, without a target.
		line(peer.name()+" write + fsync", pwSync, nil, "")
		if fs.Syncs() {
			line("ringmaster save (fsync) vs write + fsync", ow, pwSync, target)
			line("ringmaster save (fsync) vs write", ow, pw, " (no fsync on the peer's side)")
		} else {
			line("ringmaster save (fsync=false) vs write", ow, pw, target)
		}
	} else {
		line("ringmaster save", ow, pw, target)
	}
	line(peer.name()+" read", pr, nil, "")
	line("ringmaster load", or, pr, target)
	return b.stall(ctx, mgr, step)
}

// stall compares the time an asynchronous save blocks its caller (the copy
// into the reused host buffer) with the same save done synchronously.
func (b *ckptBench) stall(ctx context.Context, mgr *checkpoint.Manager, step int64) error {
	st := state(b.stallSize, b.tensors, 0)
	results := make(chan checkpoint.Result, 1)
	saver := checkpoint.NewAsyncSaver(mgr, checkpoint.WaitIfBusy, func(r checkpoint.Result) { results <- r })
	defer saver.Close()
	var syncs, stalls, uploads []time.Duration
	var firstStall time.Duration
	for i := -1; i < b.iterations; i++ {
		step++
		st.Step = step
		settle(b.stallSize)
		stall, err := saver.Save(ctx, st)
		if err != nil {
			return err
		}
		r := <-results
		if r.Err != nil {
			return r.Err
		}
		if i < 0 {
			firstStall = stall // allocates the host buffer
		} else {
			stalls, uploads = append(stalls, stall), append(uploads, r.Upload)
		}
		if err := mgr.Delete(ctx, step); err != nil {
			return err
		}
		if i < 0 {
			continue
		}
		step++
		st.Step = step
		settle(b.stallSize)
		start := time.Now()
		if _, err := mgr.Save(ctx, st); err != nil {
			return err
		}
		syncs = append(syncs, time.Since(start))
		if err := mgr.Delete(ctx, step); err != nil {
			return err
		}
	}
	s, a := median(syncs), median(stalls)
	fmt.Fprintf(b.out, "asynchronous save of %d bytes (%.0f MB):\n", b.stallSize, float64(b.stallSize)/1e6)
	fmt.Fprintf(b.out, "  %-44s %8.3f s\n", "synchronous save (training blocked)", s.Seconds())
	fmt.Fprintf(b.out, "  %-44s %8.3f s  %.1f%% of the synchronous save\n", "AsyncSaver.Save: caller blocked (the copy)", a.Seconds(), 100*a.Seconds()/s.Seconds())
	fmt.Fprintf(b.out, "  %-44s %8.3f s\n", "asynchronous save: first (allocates buffer)", firstStall.Seconds())
	fmt.Fprintf(b.out, "  %-44s %8.3f s\n", "asynchronous save: background upload", median(uploads).Seconds())
	fmt.Fprintln(b.out, "  (the trainer uses Begin/Wait, which does not block for the copy either; the stall target is measured in a training loop: --train-model gpt)")
	return nil
}

// peerIO writes and reads the same bytes the plain way.
type peerIO interface {
	name() string
	// writeRead writes data, reads it back into a new buffer, and returns
	// the write time, the write time with fsync (0 if not applicable) and
	// the read time.
	writeRead(ctx context.Context, data []byte) (w, wsync, r time.Duration, err error)
}

type filePeer struct{ path string }

func (p *filePeer) name() string { return "plain buffered file" }

func (p *filePeer) writeRead(_ context.Context, data []byte) (w, wsync, r time.Duration, err error) {
	path := p.path
	defer os.Remove(path)
	write := func(sync bool) (time.Duration, error) {
		settle(int64(len(data)))
		start := time.Now()
		f, err := os.Create(path)
		if err != nil {
			return 0, err
		}
		bw := bufio.NewWriterSize(f, 1<<20)
		if _, err := io.Copy(bw, bytes.NewReader(data)); err != nil {
			f.Close()
			return 0, err
		}
		if err := bw.Flush(); err != nil {
			f.Close()
			return 0, err
		}
		if sync {
			if err := f.Sync(); err != nil {
				f.Close()
				return 0, err
			}
		}
		return time.Since(start), f.Close()
	}
	if wsync, err = write(true); err != nil {
		return
	}
	os.Remove(path)
	if w, err = write(false); err != nil {
		return
	}
	start := time.Now()
	f, err := os.Open(path)
	if err != nil {
		return
	}
	defer f.Close()
	buf := make([]byte, len(data))
	if _, err = io.ReadFull(bufio.NewReaderSize(f, 1<<20), buf); err != nil {
		return
	}
	r = time.Since(start)
	return
}

type s3Peer struct {
	c      *minio.Client
	bucket string
	key    string
}

func newS3Peer(cfg checkpoint.S3Config) (*s3Peer, error) {
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	creds := credentials.NewChainCredentials([]credentials.Provider{&credentials.EnvAWS{}, &credentials.EnvMinio{},
		&credentials.FileAWSCredentials{Filename: cfg.CredentialsFile, Profile: cfg.Profile}})
	tr, err := minio.DefaultTransport(!cfg.Insecure)
	if err != nil {
		return nil, err
	}
	c, err := minio.New(endpoint, &minio.Options{Creds: creds, Secure: !cfg.Insecure, Region: cfg.Region, BucketLookup: lookup, Transport: http.RoundTripper(tr)})
	if err != nil {
		return nil, err
	}
	key := "peer-copy.bin"
	if cfg.Prefix != "" {
		key = cfg.Prefix + "/" + key
	}
	return &s3Peer{c: c, bucket: cfg.Bucket, key: key}, nil
}

func (p *s3Peer) name() string { return "minio-go multipart PUT/GET" }

func (p *s3Peer) writeRead(ctx context.Context, data []byte) (w, wsync, r time.Duration, err error) {
	defer p.c.RemoveObject(context.WithoutCancel(ctx), p.bucket, p.key, minio.RemoveObjectOptions{})
	settle(int64(len(data)))
	start := time.Now()
	if _, err = p.c.PutObject(ctx, p.bucket, p.key, bytes.NewReader(data), int64(len(data)), minio.PutObjectOptions{}); err != nil {
		return
	}
	w = time.Since(start)
	start = time.Now()
	obj, err := p.c.GetObject(ctx, p.bucket, p.key, minio.GetObjectOptions{})
	if err != nil {
		return
	}
	defer obj.Close()
	buf := make([]byte, len(data))
	if _, err = io.ReadFull(obj, buf); err != nil {
		return
	}
	r = time.Since(start)
	return
}

// settle prepares the machine the same way before every timed write, ours
// or a peer's. It flushes every dirty page to disk, so that no write pays
// for the dirty data of the one before (the kernel throttles writers when
// dirty pages pile up), and then writes and deletes a scratch file of the
// size about to be written, so that the write finds that much free memory
// recently used. On virtual machines that hand free memory back to the
// host (virtio-balloon free page reporting, as on the development VM),
// memory free for more than about 2 s costs a host fault per page when it
// is touched again: there a plain 512 MiB write took 77 to 94 ms right
// after another and 411 to 943 ms after a 3 s pause, which would measure
// the hypervisor's timing rather than the code under test.
func settle(size int64) {
	syscall.Sync()
	f, err := os.CreateTemp("", "ringbench-warm-")
	if err != nil {
		return
	}
	defer os.Remove(f.Name())
	defer f.Close()
	chunk := make([]byte, 4<<20)
	for left := size; left > 0; left -= int64(len(chunk)) {
		if _, err := f.Write(chunk[:min(int64(len(chunk)), left)]); err != nil {
			return
		}
	}
}
