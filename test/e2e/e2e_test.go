package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/coordinator"
)

const smallJob = `
name: small
model: cnn
workers: 2
batch_size: 8
optimizer:
  lr: 0.05
  momentum: 0.9
steps: 24
seed: 11
checkpoint:
  every_steps: 8
  keep: 5
log_every: 1000
`

// A job runs end to end through the CLI: submit, list, status, workers;
// both workers train, checkpoints are recorded, the result is stored.
func TestJobRunsEndToEnd(t *testing.T) {
	c := startCluster(t)
	c.startWorker("w0", testLease)
	c.startWorker("w1", testLease)
	c.waitWorkers("w0", "w1")
	losses := c.recordLosses()

	// Keep 2: retention removes the checkpoint of step 8, and its record.
	out, err := c.cli("submit", writeSpec(t, c.dir, strings.Replace(smallJob, "keep: 5", "keep: 2", 1)))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	id := strings.TrimSpace(out)
	if !strings.HasPrefix(id, "small-") {
		t.Fatalf("submit printed %q, want a job id", out)
	}
	j := c.waitState(id, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	if r := j.Status.Result; r == nil || r.Steps != 24 || r.TestSamples != 10000 || r.TestAccuracy <= 0.1 || !strings.Contains(r.LastCheckpoint, id) {
		t.Errorf("result = %+v", j.Status.Result)
	}
	var steps []int64
	for _, ck := range j.Checkpoints {
		steps = append(steps, ck.Step)
	}
	if fmt.Sprint(steps) != "[16 24]" {
		t.Errorf("checkpoints recorded at %v, want [16 24] (8 was removed by retention)", steps)
	}
	if len(j.Assignment.Ranks) != 2 || j.Assignment.Generation != 1 {
		t.Errorf("assignment = %v", j.Assignment)
	}
	// The first and last steps' metrics went out on NATS.
	waitFor(t, 10*time.Second, "step metrics", func() error {
		got := losses.of(id)
		if len(got) == 0 || got[len(got)-1].step != 24 {
			return fmt.Errorf("%d metrics, last %v", len(got), got)
		}
		return nil
	})

	out, err = c.cli("list")
	if err != nil || !strings.Contains(out, id) || !strings.Contains(out, "succeeded") || !strings.Contains(out, "24/24") {
		t.Errorf("list: %v\n%s", err, out)
	}
	out, err = c.cli("status", id)
	if err != nil || !strings.Contains(out, "test accuracy") || !strings.Contains(out, "rank 1") {
		t.Errorf("status: %v\n%s", err, out)
	}
	// The workers are idle again.
	out, err = c.cli("workers")
	if err != nil || !strings.Contains(out, "w0") || !strings.Contains(out, "w1") || strings.Contains(out, id) {
		t.Errorf("workers: %v\n%s", err, out)
	}
	// watch on a finished job prints the final state and exits 0.
	out, err = c.cli("watch", id)
	if err != nil || !strings.Contains(out, "succeeded") {
		t.Errorf("watch: %v\n%s", err, out)
	}
}

// Workers killed after the checkpoint at step K; the job fails, new workers
// join, `coordinator resume` restarts it from K, and every later step has
// exactly the loss of an uninterrupted run.
func TestResumeAfterKilledWorkersIsExact(t *testing.T) {
	c := startCluster(t)
	losses := c.recordLosses()
	c.startWorker("a0", testLease)
	c.startWorker("a1", testLease)
	c.waitWorkers("a0", "a1")

	// The reference: an uninterrupted run.
	out, err := c.cli("submit", writeSpec(t, c.dir, smallJob))
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
		if len(want) != 24 {
			return fmt.Errorf("have %d of 24 steps", len(want))
		}
		return nil
	})

	// The same job, interrupted; with no failures to absorb it fails at
	// the first lost worker instead of recovering by itself.
	out, err = c.cli("submit", writeSpec(t, c.dir, smallJob+"max_restarts: 0\n"))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	id := strings.TrimSpace(out)
	// Rank 0 records progress every second and at each checkpoint, and
	// the steps after step 16 may all fall within one second: wait for a
	// checkpoint and progress past the first one.
	waitFor(t, 5*time.Minute, "the checkpoint at step 8 and a step past it", func() error {
		j := c.job(id)
		if len(j.Checkpoints) > 0 && j.Progress != nil && j.Progress.Step > j.Checkpoints[0].Step {
			return nil
		}
		if j.Status.State != pb.JobState_JOB_STATE_RUNNING && j.Status.State != pb.JobState_JOB_STATE_PENDING {
			t.Fatalf("job ended early: %v", j.Status)
		}
		return fmt.Errorf("progress %v", j.Progress)
	})
	c.kill("a0")
	c.kill("a1")
	killed := time.Now()
	// Every rank vanished at once and none reported a failure: the
	// coordinator first waits UnreachableGrace for them (they may only
	// have lost etcd), then fails the job.
	failed := c.waitState(id, pb.JobState_JOB_STATE_FAILED, 30*time.Second+coordinator.UnreachableGrace)
	t.Logf("job failed %v after the kill: %s", time.Since(killed), failed.Status.Message)
	if !strings.Contains(failed.Status.Message, "lost") {
		t.Errorf("failure message %q does not say the workers were lost", failed.Status.Message)
	}
	k := failed.Checkpoints[len(failed.Checkpoints)-1].Step
	if k >= 24 {
		t.Fatalf("the job finished before the kill (checkpoint %d)", k)
	}

	c.startWorker("b0", testLease)
	c.startWorker("b1", testLease)
	c.waitWorkers("b0", "b1")
	if out, err := c.cli("resume", id); err != nil || !strings.Contains(out, "pending") {
		t.Fatalf("resume: %v: %s", err, out)
	}
	done := c.waitState(id, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	if done.Assignment.Generation != 2 {
		t.Errorf("resumed under generation %d, want 2", done.Assignment.Generation)
	}

	var after []stepLoss
	waitFor(t, 10*time.Second, "resumed metrics", func() error {
		after = after[:0]
		for _, s := range losses.of(id) {
			if s.gen == 2 {
				after = append(after, s)
			}
		}
		if len(after) == 0 || after[len(after)-1].step != 24 {
			return fmt.Errorf("%d resumed steps so far", len(after))
		}
		return nil
	})
	if after[0].step != k+1 {
		t.Errorf("the resumed run started at step %d, want %d (right after the checkpoint)", after[0].step, k+1)
	}
	for _, s := range losses.of(id) {
		if s.loss != want[s.step] {
			t.Errorf("generation %d step %d: loss %v, uninterrupted run had %v", s.gen, s.step, s.loss, want[s.step])
		}
	}
	t.Logf("resumed from step %d; steps %d..24 match the uninterrupted run bit for bit", k, k+1)
}

// A killed worker's registration disappears within its lease TTL and
// `coordinator workers` stops listing it.
func TestKilledWorkerLeavesWithinTTL(t *testing.T) {
	const ttl = 2 * time.Second
	c := startCluster(t)
	c.startWorker("doomed", ttl)
	probes := freeAddr(t)
	c.startWorker("survivor", ttl, "--health-listen", probes)
	c.waitWorkers("doomed", "survivor")
	// A registered worker with a confirmed lease is ready.
	waitFor(t, 10*time.Second, "the survivor's /readyz", func() error {
		if code, body := probe(t, probes, "/readyz"); code != http.StatusOK || !strings.Contains(body, "ready") {
			return fmt.Errorf("%d %q", code, body)
		}
		return nil
	})
	// Let a few keep-alives happen, so the lease is refreshed, not fresh.
	time.Sleep(ttl)
	c.kill("doomed")
	killed := time.Now()
	waitFor(t, 3*ttl, "the killed worker's key to expire", func() error {
		for _, id := range c.workerIDs() {
			if id == "doomed" {
				return fmt.Errorf("still registered")
			}
		}
		return nil
	})
	gone := time.Since(killed)
	t.Logf("registration of the killed worker gone %v after SIGKILL (TTL %v)", gone, ttl)
	// etcd expires a lease at most TTL after its last keep-alive, and
	// revokes expired leases on a 500 ms sweep.
	if gone > ttl+500*time.Millisecond+100*time.Millisecond {
		t.Errorf("took %v, more than the TTL %v plus etcd's 500 ms expiry sweep", gone, ttl)
	}
	out, err := c.cli("workers")
	if err != nil || strings.Contains(out, "doomed") || !strings.Contains(out, "survivor") {
		t.Errorf("workers after the kill: %v\n%s", err, out)
	}
}

// Malformed specs are refused at submission with errors that name the
// field; the coordinator keeps serving.
func TestMalformedSpecsAreRefused(t *testing.T) {
	c := startCluster(t)
	base := "name: bad\nmodel: cnn\n"
	cases := []struct{ name, spec, field string }{
		{"yaml syntax", "name: bad\nmodel: [cnn\n", "YAML syntax error"},
		{"unknown model", "name: bad\nmodel: resnet9000\n", "model"},
		{"negative lr", base + "optimizer:\n  lr: -0.5\n", "optimizer.lr"},
		{"zero workers", base + "workers: 0\n", "workers"},
		{"missing dataset", base + "dataset:\n  path: " + c.dir + "/no/such/mnist\n", "dataset.path"},
		{"dataset outside the policy", base + "dataset:\n  path: /etc\n", "dataset.path"},
		{"store outside the policy", base + "checkpoint:\n  store: file:///etc/ringmaster\n", "checkpoint.store"},
		{"unknown field", base + "epoch: 3\n", "epoch"},
		{"resume from unknown job", base + "resume: nosuchjob-abc\n", "resume"},
	}
	for _, tc := range cases {
		out, err := c.cli("submit", writeSpec(t, c.dir, tc.spec))
		if err == nil {
			t.Errorf("%s: accepted, printed %q", tc.name, out)
			continue
		}
		if !strings.Contains(err.Error(), tc.field) {
			t.Errorf("%s: error does not name %q: %v", tc.name, tc.field, err)
		}
		t.Logf("%s: %v", tc.name, err)
	}
	// Still serving: a good spec is accepted and listed.
	out, err := c.cli("submit", writeSpec(t, c.dir, "name: fine\nmodel: cnn\nsteps: 1\n"))
	if err != nil {
		t.Fatalf("good spec after bad ones: %v %s", err, out)
	}
	id := strings.TrimSpace(out)
	if out, err := c.cli("list"); err != nil || !strings.Contains(out, id) || strings.Contains(out, "bad-") {
		t.Errorf("list: %v\n%s", err, out)
	}
	// It waits for workers; cancel it.
	if out, err := c.cli("cancel", id); err != nil || !strings.Contains(out, "cancelled") {
		t.Errorf("cancel: %v %s", err, out)
	}
	if _, err := c.cli("resume", "nope-123"); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("resume of an unknown job: %v", err)
	}
}
