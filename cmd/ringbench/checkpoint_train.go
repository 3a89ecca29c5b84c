package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// ckptTrain measures what checkpoints cost a real training loop: a model
// from pkg/model with AdamW, trained on synthetic tokens, checkpointed
// every K steps in four modes run alternately (round robin, the order
// rotating every round):
//
//	none   no checkpoints: the plain step time
//	sync   Manager.Save after the optimizer step: the loop waits for the
//	       whole save
//	save   AsyncSaver.Save after the optimizer step: the loop waits for the
//	       copy into the host buffer
//	begin  AsyncSaver.Begin after the optimizer step, Pending.Wait before
//	       the next optimizer step: the copy overlaps the next forward and
//	       backward pass
type ckptTrain struct {
	cfg                model.Config
	batch, every, ckpt int
	rounds, workers    int
	verbose            bool // print every step time
}

type trainMode int

const (
	modeNone trainMode = iota
	modeSync
	modeSave
	modeBegin
)

var modeNames = []string{"none", "sync", "save", "begin"}

// stepTimes are one mode's steps in one round.
type stepTimes struct {
	step    []time.Duration // every step, forward to checkpoint call
	ckpt    []int           // indexes of the steps that checkpointed
	blocked []time.Duration // per checkpoint: Save, or Begin + Wait
	waited  []time.Duration // per checkpoint (begin): the Wait alone
}

func (b *ckptBench) runTrain(ctx context.Context, mgr *checkpoint.Manager, tb ckptTrain) error {
	be := model.NewCPU(tb.workers)
	m, err := model.New(tb.cfg, be, 1)
	if err != nil {
		return err
	}
	params, grads := m.Params(), m.Grads()
	opt := model.NewAdamW(be, len(params))
	opt.NoDecay = model.NoDecayRanges(m.Tensors())
	cfg := m.Config()
	st := &checkpoint.State{World: 1, Meta: map[string]string{"bench": "train"}}
	for _, ti := range m.Tensors() {
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "model." + ti.Name, Shape: ti.Shape, Data: ti.Slice(params)})
	}
	for _, buf := range opt.Buffers() {
		for _, ti := range m.Tensors() {
			st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "optim." + buf.Name + "." + ti.Name, Shape: ti.Shape, Data: ti.Slice(buf.Data)})
		}
	}
	if st.Bytes() < 100_000_000 {
		return fmt.Errorf("the model's state is %d bytes; the stall target is stated for at least 100 MB (raise --layers or --dim)", st.Bytes())
	}
	x := rand.New(rand.NewPCG(7, 7))
	batch := model.Batch{N: tb.batch, Tokens: make([]int32, tb.batch*cfg.Ctx), Targets: make([]int32, tb.batch*cfg.Ctx)}
	for i := range batch.Tokens {
		batch.Tokens[i], batch.Targets[i] = int32(x.IntN(cfg.Vocab)), int32(x.IntN(cfg.Vocab))
	}
	scale := 1 / float32(batch.Terms())

	var mu sync.Mutex
	var uploadErr error
	var uploads []time.Duration
	saver := checkpoint.NewAsyncSaver(mgr, checkpoint.WaitIfBusy, func(r checkpoint.Result) {
		mu.Lock()
		defer mu.Unlock()
		if r.Err != nil && uploadErr == nil {
			uploadErr = r.Err
		}
		uploads = append(uploads, r.Upload)
	})
	defer saver.Close()
	step := int64(0)
	nextStep := func() int64 { step++; return step }
	// The first asynchronous save allocates the host buffer: not timed.
	st.Step = nextStep()
	if _, err := saver.Save(ctx, st); err != nil {
		return err
	}
	if err := saver.Wait(ctx); err != nil {
		return err
	}

	run := func(mode trainMode) (stepTimes, error) {
		var out stepTimes
		var pending *checkpoint.Pending
		var begun time.Duration
		// One warm-up step, then K steps per checkpoint, each interval
		// starting with the checkpoint step.
		steps := tb.every * (tb.ckpt + 1)
		for i := range steps {
			t0 := time.Now()
			m.ZeroGrads()
			if _, err := m.ForwardBackward(batch, scale); err != nil {
				return out, err
			}
			if pending != nil {
				w, err := pending.Wait(ctx)
				if err != nil {
					return out, err
				}
				out.waited = append(out.waited, w)
				out.blocked = append(out.blocked, begun+w)
				pending = nil
			}
			opt.Step(params, grads)
			if i > 0 && i%tb.every == 0 && i <= tb.every*tb.ckpt && mode != modeNone {
				st.Step = nextStep()
				st.Meta["optimizer_steps"] = fmt.Sprint(opt.Steps())
				c0 := time.Now()
				switch mode {
				case modeSync:
					_, err = mgr.Save(ctx, st)
					out.blocked = append(out.blocked, time.Since(c0))
				case modeSave:
					var d time.Duration
					d, err = saver.Save(ctx, st)
					out.blocked = append(out.blocked, d)
				case modeBegin:
					pending, err = saver.Begin(ctx, st)
					begun = time.Since(c0)
				}
				if err != nil {
					return out, err
				}
				out.ckpt = append(out.ckpt, i)
			}
			if i > 0 { // the warm-up step is not reported
				out.step = append(out.step, time.Since(t0))
			} else {
				out.step = append(out.step, -1)
			}
		}
		// The next mode starts with no upload in flight.
		return out, saver.Wait(ctx)
	}

	fmt.Fprintf(b.out, "training loop: %s %d layers, width %d, %d heads, context %d, batch %d; AdamW; state %d bytes (%.0f MB: parameters and both moments); %d CPU workers\n",
		cfg.Name, cfg.Layers, cfg.Dim, cfg.Heads, cfg.Ctx, tb.batch, st.Bytes(), float64(st.Bytes())/1e6, tb.workers)
	fmt.Fprintf(b.out, "checkpoint every %d steps, %d checkpoints per mode per round, %d rounds, modes alternated\n", tb.every, tb.ckpt, tb.rounds)
	all := make([][]stepTimes, 4)
	for r := range tb.rounds {
		for k := range 4 {
			mode := trainMode((k + r) % 4)
			times, err := run(mode)
			if err != nil {
				return fmt.Errorf("mode %s: %w", modeNames[mode], err)
			}
			all[mode] = append(all[mode], times)
			if tb.verbose {
				fmt.Fprintf(b.out, "  round %d %-5s steps %s checkpoints at %v blocked %s\n", r, modeNames[mode], secs(times.step), times.ckpt, secs(times.blocked))
			}
		}
		mu.Lock()
		err := uploadErr
		mu.Unlock()
		if err != nil {
			return fmt.Errorf("asynchronous upload: %w", err)
		}
	}
	b.reportTrain(all, tb, uploads)
	return nil
}

func medianOf(d []time.Duration) time.Duration {
	if len(d) == 0 {
		return 0
	}
	return median(d)
}

func (b *ckptBench) reportTrain(all [][]stepTimes, tb ckptTrain, uploads []time.Duration) {
	// The plain step of each round: the median of its "none" steps.
	plain := make([]time.Duration, tb.rounds)
	var plainAll []time.Duration
	for r, t := range all[modeNone] {
		var s []time.Duration
		for _, d := range t.step {
			if d >= 0 {
				s = append(s, d)
			}
		}
		plain[r] = median(s)
		plainAll = append(plainAll, s...)
	}
	p := median(plainAll)
	fmt.Fprintf(b.out, "  plain step (no checkpoints): %.3f s (per round: %s)\n", p.Seconds(), secs(plain))
	// Per checkpoint, against the plain step of its round: the time the
	// loop was blocked, the extra time of the checkpoint step and of the
	// next one (begin's Wait is in it, and so is the copy it overlaps), and
	// the extra time of the K steps from the checkpoint step on, which also
	// holds what the background upload took from training.
	type row struct{ blocked, ckpt, next, interval, overlapped []time.Duration }
	rows := make([]row, 4)
	means := make([][]float64, 4)
	for mode := modeNone; mode <= modeBegin; mode++ {
		for r, t := range all[mode] {
			var sum time.Duration
			var n int
			for _, d := range t.step {
				if d >= 0 {
					sum += d
					n++
				}
			}
			means[mode] = append(means[mode], (sum.Seconds()/float64(n))/plain[r].Seconds())
			rw := &rows[mode]
			for j, i := range t.ckpt {
				rw.ckpt = append(rw.ckpt, t.step[i]-plain[r])
				rw.next = append(rw.next, t.step[i+1]-plain[r])
				var iv time.Duration
				for _, d := range t.step[i : i+tb.every] {
					iv += d - plain[r]
				}
				rw.interval = append(rw.interval, iv)
				if mode == modeBegin {
					rw.overlapped = append(rw.overlapped, t.step[i+1]-t.waited[j]-plain[r])
				}
			}
			rw.blocked = append(rw.blocked, t.blocked...)
		}
	}
	fmt.Fprintf(b.out, "  medians over %d checkpoints per mode; (%%) of the synchronous save's figure\n", len(rows[modeSync].blocked))
	fmt.Fprintf(b.out, "  %-44s %16s %22s %22s\n", "", "sync save", "AsyncSaver.Save", "Begin/Wait")
	line := func(what string, pick func(row) []time.Duration) {
		ref := median(pick(rows[modeSync]))
		out := fmt.Sprintf("  %-44s %14.3f s", what, ref.Seconds())
		for _, mode := range []trainMode{modeSave, modeBegin} {
			v := median(pick(rows[mode]))
			out += fmt.Sprintf(" %9.3f s (%6.1f%%)", v.Seconds(), 100*v.Seconds()/ref.Seconds())
		}
		fmt.Fprintln(b.out, out)
	}
	line("stall: loop blocked (Save; Begin + Wait)", func(r row) []time.Duration { return r.blocked })
	line("checkpoint step - plain step", func(r row) []time.Duration { return r.ckpt })
	line("next step - plain step", func(r row) []time.Duration { return r.next })
	line(fmt.Sprintf("%d steps from the checkpoint - %d plain", tb.every, tb.every), func(r row) []time.Duration { return r.interval })
	o := median(rows[modeBegin].overlapped)
	fmt.Fprintf(b.out, "  Begin/Wait: the step overlapping the copy, minus its Wait, over a plain step: %+.3f s (%+.1f%% of a plain step)\n", o.Seconds(), 100*o.Seconds()/p.Seconds())
	for mode := modeNone; mode <= modeBegin; mode++ {
		fmt.Fprintf(b.out, "  mean step of mode %-5s over the plain step of its round: %s\n", modeNames[mode], ratios(means[mode]))
	}
	fmt.Fprintf(b.out, "  background upload (median): %.3f s\n", medianOf(uploads).Seconds())
	fmt.Fprintf(b.out, "  stall target: <= 5%% of the synchronous save's\n")
}

func secs(d []time.Duration) string {
	s := make([]string, len(d))
	for i, x := range d {
		s[i] = fmt.Sprintf("%.3f", x.Seconds())
	}
	return fmt.Sprint(s)
}

func ratios(f []float64) string {
	s := slices.Clone(f)
	slices.Sort(s)
	out := fmt.Sprintf("median %.3fx (", s[len(s)/2])
	for i, x := range f {
		if i > 0 {
			out += ", "
		}
		out += fmt.Sprintf("%.3f", x)
	}
	return out + ")"
}
