package e2e

import (
	"fmt"
	"math"
	"os"
	"strings"
	"testing"
	"time"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/versitygw"
)

// A job checkpoints to S3 (versitygw) through worker processes; the CLI
// lists its checkpoints with validity and finds a corrupted one. Resumed on
// 3 workers instead of 2, the job skips the corrupt checkpoint for the
// previous one (and clears it); resumed again from a chosen step (after
// --discard-newer, which is refused without) on 2 workers, it finishes.
// Every resumed run continues the uninterrupted run's losses: the global
// batch is the same, only the summation order differs.
func TestCheckpointsInS3ResumeOnMoreWorkers(t *testing.T) {
	srv := versitygw.Start(t, "ckpt")
	for _, kv := range versitygw.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v) // the coordinator and the worker processes read the store
	}
	c := startCluster(t, func(cfg *coordinator.Config) { cfg.Policy.S3Endpoints = []string{srv.Addr + "/ckpt"} })
	losses := c.recordLosses()
	c.startWorker("a0", testLease)
	c.startWorker("a1", testLease)
	c.waitWorkers("a0", "a1")
	const steps = 42
	spec := fmt.Sprintf(`
name: s3job
model: cnn
workers: 2
batch_size: 8
optimizer: {lr: 0.05, momentum: 0.9}
steps: %d
seed: 5
checkpoint: {every_steps: 6, keep: 20, store: "%s"}
log_every: 1000
`, steps, srv.URL("ckpt", "runs"))

	// The reference: an uninterrupted run.
	out, err := c.cli("submit", writeSpec(t, c.dir, spec))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	ref := strings.TrimSpace(out)
	c.waitState(ref, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	want := map[int64]float64{}
	waitFor(t, 10*time.Second, "reference metrics", func() error {
		for _, s := range losses.of(ref) {
			want[s.step] = s.loss
		}
		if len(want) != steps {
			return fmt.Errorf("have %d of %d steps", len(want), steps)
		}
		return nil
	})
	// checkLosses compares the losses of a generation with the reference.
	checkLosses := func(id string, gen uint64, from int64) {
		t.Helper()
		var got []stepLoss
		waitFor(t, 10*time.Second, fmt.Sprintf("metrics of generation %d", gen), func() error {
			got = got[:0]
			for _, s := range losses.of(id) {
				if s.gen == gen {
					got = append(got, s)
				}
			}
			if len(got) == 0 || got[0].step != from+1 {
				return fmt.Errorf("%d steps so far, first %v; want the first to be %d", len(got), got, from+1)
			}
			return nil
		})
		// Right after the resume only the order of float sums differs
		// (1e-7 seen); a sample skipped or repeated, or another batch, moves
		// the loss by 1e-2 at once. Later, SGD amplifies the rounding
		// (2e-4 seen after 30 steps), so the bound widens.
		near, worst := 0.0, 0.0
		for _, s := range got {
			d := math.Abs(s.loss-want[s.step]) / math.Abs(want[s.step])
			if s.step <= from+10 {
				near = max(near, d)
			}
			worst = max(worst, d)
		}
		t.Logf("generation %d from step %d: %d steps; relative loss difference to the uninterrupted run: %.2g in the first 10 steps, %.2g at worst",
			gen, from, len(got), near, worst)
		if near > 1e-4 || worst > 1e-2 {
			t.Errorf("generation %d: losses differ from the uninterrupted run by %.2g in the first 10 steps (want <= 1e-4) and %.2g at worst (want <= 1e-2)", gen, near, worst)
		}
	}
	// stopAfter cancels the job once it has committed a checkpoint past step.
	stopAfter := func(id string, step int64) int64 {
		t.Helper()
		var newest int64
		waitFor(t, 5*time.Minute, fmt.Sprintf("a checkpoint after step %d", step), func() error {
			j := c.job(id)
			if n := len(j.Checkpoints); n > 0 && j.Checkpoints[n-1].Step > step {
				newest = j.Checkpoints[n-1].Step
				return nil
			}
			if j.Status.State != pb.JobState_JOB_STATE_RUNNING && j.Status.State != pb.JobState_JOB_STATE_PENDING {
				t.Fatalf("job ended early: %v", j.Status)
			}
			return fmt.Errorf("checkpoints %v", j.Checkpoints)
		})
		if out, err := c.cli("cancel", id); err != nil || !strings.Contains(out, "cancelled") {
			t.Fatalf("cancel: %v %s", err, out)
		}
		j := c.job(id)
		return max(newest, j.Checkpoints[len(j.Checkpoints)-1].Step)
	}

	// The same job, cancelled after its checkpoint at step 12 (or 18).
	out, err = c.cli("submit", writeSpec(t, c.dir, spec))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	id := strings.TrimSpace(out)
	newest := stopAfter(id, 6)
	out, err = c.cli("checkpoints", id)
	if err != nil {
		t.Fatalf("checkpoints: %v\n%s", err, out)
	}
	t.Logf("coordinator checkpoints %s:\n%s", id, out)
	if !strings.Contains(out, "s3://ckpt/runs/"+id) || !strings.Contains(out, "\n6 ") || !strings.Contains(out, fmt.Sprintf("\n%d ", newest)) || strings.Contains(out, " NO ") {
		t.Errorf("checkpoints output lacks the store, steps 6 and %d, or shows an invalid one:\n%s", newest, out)
	}

	// A byte flipped in the newest checkpoint is found by --verify.
	dir := fmt.Sprintf("runs/%s/step-%012d/", id, newest)
	entries, err := os.ReadDir(srv.ObjectPath("ckpt", dir))
	if err != nil {
		t.Fatal(err)
	}
	flipped := false
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), "data-") {
			p := srv.ObjectPath("ckpt", dir+e.Name())
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			b[len(b)/2] ^= 1
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			flipped = true
		}
	}
	if !flipped {
		t.Fatalf("no data object under %s", dir)
	}
	out, err = c.cli("checkpoints", id, "--verify")
	if err != nil || !strings.Contains(out, fmt.Sprintf("\n%d ", newest)) || !strings.Contains(out, "NO") || !strings.Contains(out, "corrupt") {
		t.Errorf("checkpoints --verify does not flag step %d: %v\n%s", newest, err, out)
	}
	if out, err := c.cli("resume", id, "--step", "6"); err == nil || !strings.Contains(err.Error(), "--discard-newer") {
		t.Errorf("resume --step 6 with newer checkpoints: %v %s", err, out)
	}
	if out, err := c.cli("resume", id, "--step", "7"); err == nil || !strings.Contains(err.Error(), "no checkpoint at step 7") {
		t.Errorf("resume from a step without a checkpoint: %v %s", err, out)
	}

	// Resumed on 3 workers: the corrupt checkpoint is skipped for the one
	// before it, and cleared so that this run saves that step again.
	out, err = c.cli("resume", id, "--workers", "3")
	if err != nil || !strings.Contains(out, "pending") || !strings.Contains(out, "3 idle workers") {
		t.Fatalf("resume: %v: %s", err, out)
	}
	c.startWorker("a2", testLease)
	second := stopAfter(id, newest)
	j := c.job(id)
	if len(j.Assignment.Ranks) != 3 || j.Assignment.Generation != 2 {
		t.Errorf("resumed assignment %v, want 3 ranks in generation 2", j.Assignment)
	}
	checkLosses(id, 2, newest-6)
	out, err = c.cli("checkpoints", id, "--verify")
	if err != nil || strings.Contains(out, " NO ") || !strings.Contains(out, fmt.Sprintf("\n%d ", newest)) {
		t.Errorf("the corrupt checkpoint at %d was not replaced by a valid one: %v\n%s", newest, err, out)
	}

	// Resumed from step 12 on 2 workers: the checkpoints after it go.
	if out, err := c.cli("resume", id, "--step", "12", "--workers", "2"); err == nil || !strings.Contains(err.Error(), "--discard-newer") {
		t.Fatalf("resume --step 12 with checkpoints up to %d: %v %s", second, err, out)
	}
	out, err = c.cli("resume", id, "--step", "12", "--workers", "2", "--discard-newer")
	if err != nil || !strings.Contains(out, "step 12") || !strings.Contains(out, "2 idle workers") {
		t.Fatalf("resume --step 12: %v: %s", err, out)
	}
	done := c.waitState(id, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	if len(done.Assignment.Ranks) != 2 || done.Assignment.Generation != 3 {
		t.Errorf("assignment %v, want 2 ranks in generation 3", done.Assignment)
	}
	if r := done.Status.Result; r == nil || r.Steps != steps {
		t.Errorf("result %v, want %d steps", r, steps)
	}
	checkLosses(id, 3, 12)
	out, err = c.cli("checkpoints", id, "--verify")
	if err != nil || strings.Contains(out, " NO ") || !strings.Contains(out, fmt.Sprintf("\n%d ", steps)) || !strings.Contains(out, "\n12 ") {
		t.Errorf("after the last run: %v\n%s", err, out)
	}
}
