package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/ringmaster/ringmaster/pkg/model"
)

// trainBench measures one worker's training throughput: the real model of
// pkg/model on the CPU backend, the step the trainer takes (zero the
// gradients, forward and backward, SGD update), on a fixed synthetic batch.
type trainBench struct {
	cfg            model.Config
	batch          int
	steps, warmup  int
	threads        int
	lr             float32
	rounds         int
	peer           bool
	python, script string
	peerTimeout    time.Duration
	out            io.Writer
}

func newTrainCommand() *cobra.Command {
	b := &trainBench{}
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "train --model cnn|lstm|gpt [--batch N] [--steps N] [--layers L --dim C --heads H --ctx T --vocab V --hidden H] [--peer]",
		Short: "Training throughput of one worker (samples/s, tokens/s), against PyTorch's torch_train.py with --peer",
		Long: `Trains the model of pkg/model on one worker using --threads cores (default:
all) and prints, per round,

  train model=cnn batch=64 steps=20 sec_per_step=... samples_per_s=...

(and tokens_per_s for the language models). A step is what the trainer
does: zero the gradients, forward and backward over the batch, one SGD
update (lr --lr, no momentum, as the PyTorch peer). The batch is synthetic
and fixed, of the peer's shape: N(0,1) images with random labels for the
CNN, random tokens and targets for the language models; throughput does not
depend on the values. --warmup steps are not timed; sec_per_step is the
median of the --steps timed ones, as the peer reports it.

--peer runs /usr/bin/python3 torch_train.py THREADS after each round,
alternating, and prints PyTorch's figure and the ratio for the CNN at batch
64 and the GPT with 4 layers, width 128, 4 heads, context 64, vocabulary 256
(the configurations the peer trains); without python3 or torch it says so
and skips. Without --peer-script the script is ../shared/bench/torch_train.py
beside the repository (the nearest directory at or above the working
directory whose go.mod is module ` + modulePath + `); --peer
fails when that script is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b.out = cmd.OutOrStdout()
			stop, err := startCPUProfile(cpuProfile)
			if err != nil {
				return err
			}
			defer stop()
			return b.run(cmd.Context())
		},
	}
	f := cmd.Flags()
	f.StringVar(&b.cfg.Name, "model", "cnn", "model: "+strings.Join(model.Names(), ", "))
	f.IntVar(&b.cfg.Layers, "layers", 0, "LSTM layers or transformer blocks (default: the model's default configuration)")
	f.IntVar(&b.cfg.Dim, "dim", 0, "embedding width (lstm) or model width (gpt)")
	f.IntVar(&b.cfg.Heads, "heads", 0, "attention heads (gpt)")
	f.IntVar(&b.cfg.Ctx, "ctx", 0, "sequence length (lstm, gpt)")
	f.IntVar(&b.cfg.Vocab, "vocab", 0, "vocabulary (lstm, gpt)")
	f.IntVar(&b.cfg.Hidden, "hidden", 0, "LSTM hidden size (default dim) or GPT MLP width (default 4·dim)")
	f.BoolVar(&b.cfg.TieEmbeddings, "tie-embeddings", false, "share the GPT's head with its token embedding")
	f.IntVar(&b.batch, "batch", 0, "samples (images or sequences) per step (default 64 for cnn, 16 for lstm and gpt)")
	f.IntVar(&b.steps, "steps", 20, "timed steps per round")
	f.IntVar(&b.warmup, "warmup", 3, "untimed steps before each round")
	f.IntVar(&b.threads, "threads", 0, "cores to use (default GOMAXPROCS)")
	f.Float32Var(&b.lr, "lr", 0.01, "SGD learning rate")
	f.IntVar(&b.rounds, "rounds", 1, "rounds, each with a fresh model (and the peer after it with --peer)")
	f.BoolVar(&b.peer, "peer", false, "also run PyTorch's torch_train.py after each round and print the ratio")
	f.StringVar(&b.python, "python", "/usr/bin/python3", "python with torch, for --peer")
	f.StringVar(&b.script, "peer-script", "", "the PyTorch peer, for --peer (default: ../shared/bench/torch_train.py beside the repository holding the working directory)")
	f.DurationVar(&b.peerTimeout, "peer-timeout", 10*time.Minute, "give up on one run of the peer after this long")
	f.StringVar(&cpuProfile, "cpuprofile", "", "write a CPU profile of the whole run to this file")
	return cmd
}

// config fills in the model's default configuration for the sizes not
// given, and the default batch.
func (b *trainBench) config() error {
	def, err := model.DefaultConfig(b.cfg.Name)
	if err != nil {
		return err
	}
	if b.cfg.Name != "cnn" {
		for _, p := range []struct{ v, d *int }{{&b.cfg.Vocab, &def.Vocab}, {&b.cfg.Ctx, &def.Ctx}, {&b.cfg.Layers, &def.Layers},
			{&b.cfg.Dim, &def.Dim}, {&b.cfg.Heads, &def.Heads}} {
			if *p.v == 0 {
				*p.v = *p.d
			}
		}
		switch {
		case b.cfg.Hidden != 0:
		case b.cfg.Name == "lstm" && b.cfg.Dim == def.Dim:
			b.cfg.Hidden = def.Hidden
		case b.cfg.Name == "lstm":
			b.cfg.Hidden = b.cfg.Dim
		case b.cfg.Name == "gpt":
			b.cfg.Hidden = 4 * b.cfg.Dim
		}
	}
	if b.batch == 0 {
		b.batch = 64
		if b.cfg.Name != "cnn" {
			b.batch = 16
		}
	}
	if b.batch < 1 || b.steps < 1 || b.warmup < 0 || b.rounds < 1 {
		return fmt.Errorf("--batch %d, --steps %d, --rounds %d must be positive and --warmup %d not negative", b.batch, b.steps, b.rounds, b.warmup)
	}
	if b.threads <= 0 {
		b.threads = runtime.GOMAXPROCS(0)
	}
	return b.cfg.Validate()
}

// peerMetric is what torch_train.py prints for a configuration it trains,
// or "" when it trains no such configuration.
func (b *trainBench) peerMetric() string {
	switch {
	case b.cfg == model.Config{Name: "cnn"} && b.batch == 64:
		return "samples_per_s"
	case b.cfg == model.Config{Name: "gpt", Vocab: 256, Ctx: 64, Layers: 4, Dim: 128, Heads: 4, Hidden: 512} && b.batch == 16:
		return "tokens_per_s"
	}
	return ""
}

type trainResult struct {
	secPerStep float64 // median
	samples    float64 // per second
	tokens     float64 // per second; 0 for the CNN
}

func (b *trainBench) run(ctx context.Context) error {
	if err := b.config(); err != nil {
		return err
	}
	metric := ""
	if b.peer {
		if err := b.pythonAvailable(); err != nil {
			fmt.Fprintf(b.out, "peer: skipped: %v\n", err)
		} else if metric = b.peerMetric(); metric == "" {
			fmt.Fprintf(b.out, "peer: skipped: torch_train.py trains only the CNN at batch 64 and the GPT with 4 layers, width 128, 4 heads, context 64, vocabulary 256 at batch 16\n")
		} else if err := b.findScript(); err != nil {
			return err
		}
	}
	var sizes string
	switch b.cfg.Name {
	case "gpt":
		sizes = fmt.Sprintf("layers=%d dim=%d heads=%d ctx=%d vocab=%d hidden=%d", b.cfg.Layers, b.cfg.Dim, b.cfg.Heads, b.cfg.Ctx, b.cfg.Vocab, b.cfg.Hidden)
	case "lstm":
		sizes = fmt.Sprintf("layers=%d dim=%d hidden=%d ctx=%d vocab=%d", b.cfg.Layers, b.cfg.Dim, b.cfg.Hidden, b.cfg.Ctx, b.cfg.Vocab)
	}
	var ours, theirs []float64
	for round := 1; round <= b.rounds; round++ {
		r, err := b.measure(ctx, uint64(round))
		if err != nil {
			return err
		}
		line := fmt.Sprintf("train model=%s batch=%d steps=%d threads=%d ", b.cfg.Name, b.batch, b.steps, b.threads)
		if sizes != "" {
			line += sizes + " "
		}
		line += fmt.Sprintf("sec_per_step=%.5f samples_per_s=%.1f", r.secPerStep, r.samples)
		if r.tokens > 0 {
			line += fmt.Sprintf(" tokens_per_s=%.1f", r.tokens)
		}
		fmt.Fprintln(b.out, line)
		if metric == "" {
			continue
		}
		peer, err := b.runPeer(ctx, metric)
		if err != nil {
			fmt.Fprintf(b.out, "peer: skipped: %v\n", err)
			metric = ""
			continue
		}
		mine := r.samples
		if metric == "tokens_per_s" {
			mine = r.tokens
		}
		ours, theirs = append(ours, mine), append(theirs, peer)
		fmt.Fprintf(b.out, "peer torch %s=%.1f ratio=%.2fx\n", metric, peer, mine/peer)
	}
	if len(ours) > 1 {
		fmt.Fprintf(b.out, "median over %d rounds: ours %s=%.1f torch %.1f ratio_of_medians=%.2fx\n",
			len(ours), metric, medianF(ours), medianF(theirs), medianF(ours)/medianF(theirs))
	}
	return nil
}

// measure builds a fresh model and times steps of training on one fixed
// batch, after the warm-up.
func (b *trainBench) measure(ctx context.Context, seed uint64) (trainResult, error) {
	m, err := model.New(b.cfg, model.NewCPU(b.threads), seed)
	if err != nil {
		return trainResult{}, err
	}
	batch := syntheticBatch(m.Config(), b.batch, seed)
	scale := 1 / float32(batch.Terms())
	opt := &model.SGD{LR: b.lr}
	step := func() error {
		m.ZeroGrads()
		if _, err := m.ForwardBackward(batch, scale); err != nil {
			return err
		}
		opt.Step(m.Params(), m.Grads())
		return ctx.Err()
	}
	for range b.warmup {
		if err := step(); err != nil {
			return trainResult{}, err
		}
	}
	times := make([]float64, b.steps)
	for i := range times {
		start := time.Now()
		if err := step(); err != nil {
			return trainResult{}, err
		}
		times[i] = time.Since(start).Seconds()
	}
	sec := medianF(times)
	r := trainResult{secPerStep: sec, samples: float64(b.batch) / sec}
	if b.cfg.Name != "cnn" {
		r.tokens = float64(b.batch*m.Config().Ctx) / sec
	}
	return r, nil
}

// syntheticBatch is a batch of the peer's shape: N(0,1) images and random
// labels, or random tokens and random targets over the whole context.
func syntheticBatch(cfg model.Config, n int, seed uint64) model.Batch {
	r := rand.New(rand.NewPCG(seed, 0x747261696e)) // "train"
	if cfg.Name == "cnn" {
		b := model.Batch{N: n, X: make([]float32, n*model.CNNInputSize), Targets: make([]int32, n)}
		for i := range b.X {
			b.X[i] = float32(r.NormFloat64())
		}
		for i := range b.Targets {
			b.Targets[i] = int32(r.IntN(model.CNNClasses))
		}
		return b
	}
	T := cfg.Ctx
	b := model.Batch{N: n, T: T, Tokens: make([]int32, n*T), Targets: make([]int32, n*T)}
	for i := range b.Tokens {
		b.Tokens[i], b.Targets[i] = int32(r.IntN(cfg.Vocab)), int32(r.IntN(cfg.Vocab))
	}
	return b
}

var peerLine = regexp.MustCompile(`\b(samples_per_s|tokens_per_s)=([0-9.eE+-]+)`)

// pythonAvailable says why the peer cannot run, if there is no python.
func (b *trainBench) pythonAvailable() error {
	if _, err := exec.LookPath(b.python); err != nil {
		return fmt.Errorf("no python at %s (install Debian's python3-torch, see shared/BENCHMARKS.md): %w", b.python, err)
	}
	return nil
}

// modulePath is this repository's module.
const modulePath = "github.com/ringmaster/ringmaster"

// findScript checks --peer-script, or, without it, finds the default:
// ../shared/bench/torch_train.py beside the repository root, the nearest
// directory at or above the working directory whose go.mod is
// modulePath's.
func (b *trainBench) findScript() error {
	if b.script != "" {
		if _, err := os.Stat(b.script); err != nil {
			return fmt.Errorf("--peer-script: %w", err)
		}
		return nil
	}
	wd, err := os.Getwd()
	if err != nil {
		return fmt.Errorf("--peer: finding torch_train.py: %w; pass --peer-script PATH", err)
	}
	root := repoRoot(wd)
	if root == "" {
		return fmt.Errorf("--peer: no go.mod of %s at or above %s to find ../shared/bench/torch_train.py beside; pass --peer-script PATH", modulePath, wd)
	}
	p := filepath.Join(filepath.Dir(root), "shared", "bench", "torch_train.py")
	if _, err := os.Stat(p); err != nil {
		return fmt.Errorf("--peer: no PyTorch peer beside the repository %s: %w; pass --peer-script PATH", root, err)
	}
	b.script = p
	return nil
}

// repoRoot is the nearest directory at or above dir holding a go.mod whose
// module is modulePath, or "".
func repoRoot(dir string) string {
	for {
		if data, err := os.ReadFile(filepath.Join(dir, "go.mod")); err == nil && modfileModule(data) == modulePath {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return ""
		}
		dir = parent
	}
}

// modfileModule is the path on the module line of a go.mod.
func modfileModule(data []byte) string {
	for line := range strings.Lines(string(data)) {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`+"`")
		}
	}
	return ""
}

// runPeer runs torch_train.py with the same number of threads and returns
// its figure for metric.
func (b *trainBench) runPeer(ctx context.Context, metric string) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, b.peerTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.python, b.script, strconv.Itoa(b.threads))
	out, err := cmd.CombinedOutput()
	if err != nil {
		tail := strings.TrimSpace(string(out))
		if i := strings.LastIndexByte(tail, '\n'); i >= 0 {
			tail = tail[i+1:]
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return 0, fmt.Errorf("%s %s ran longer than --peer-timeout %v", b.python, b.script, b.peerTimeout)
		}
		return 0, fmt.Errorf("%s %s: %v: %s", b.python, b.script, err, tail)
	}
	for _, m := range peerLine.FindAllStringSubmatch(string(out), -1) {
		if m[1] == metric {
			return strconv.ParseFloat(m[2], 64)
		}
	}
	return 0, fmt.Errorf("%s printed no %s= line:\n%s", b.script, metric, out)
}

// medianF is the median of x (the mean of the middle two for an even count).
func medianF(x []float64) float64 {
	s := slices.Clone(x)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}
