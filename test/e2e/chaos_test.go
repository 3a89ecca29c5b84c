package e2e

import (
	"bufio"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/mnist"
)

// chaosLease is the workers' lease in the chaos tests: the default TTL,
// which bounds how fast a hung worker is noticed.
const chaosLease = 3 * time.Second

// chaosDigits keeps the chaos jobs short: one epoch of digits 0 and 1.
var chaosDigits = []int{0, 1}

// chaosSpec is the chaos tests' job. Its seed is fixed: the chaos seed
// picks the faults, not the training run (with this learning rate some
// initialisations do not learn at all, faults or not).
func chaosSpec(workers string, maxRestarts int) string {
	return fmt.Sprintf(`
name: chaos
model: cnn
dataset: {name: mnist, digits: [0, 1]}
workers: %s
batch_size: 32
optimizer: {lr: 0.05, momentum: 0.9}
epochs: 1
seed: 1
max_restarts: %d
checkpoint: {every_steps: 20, keep: 2}
log_every: 1000
`, workers, maxRestarts)
}

// chaosSeed is the seed of a chaos test: RINGMASTER_CHAOS_SEED replays a
// failure, otherwise a new one each run. Failures print it.
func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("RINGMASTER_CHAOS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("RINGMASTER_CHAOS_SEED=%q: %v", s, err)
		}
		return v
	}
	return uint64(time.Now().UnixNano() % 1e9)
}

// chaosCluster starts a cluster whose workers log every committed step.
type chaosCluster struct {
	*cluster
	samples string
	seed    uint64
	rng     *rand.Rand
	// workerFlags are added to every worker's command line.
	workerFlags []string
	// epochs is how many epochs the job under test trains (0: 1).
	epochs int
}

func startChaos(t *testing.T) *chaosCluster {
	seed := chaosSeed(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("replay with RINGMASTER_CHAOS_SEED=%d", seed)
		}
	})
	t.Logf("chaos seed %d", seed)
	return chaosOn(t, startCluster(t), seed)
}

// chaosOn makes c a chaos cluster.
func chaosOn(t *testing.T, c *cluster, seed uint64) *chaosCluster {
	return &chaosCluster{cluster: c, samples: filepath.Join(c.dir, "samples.log"), seed: seed, rng: rand.New(rand.NewPCG(seed, 0))}
}

func (c *chaosCluster) startWorker(id string) {
	c.t.Helper()
	c.cluster.startWorker(id, chaosLease, append([]string{"--sample-log", c.samples}, c.workerFlags...)...)
}

// startWorkers starts workers ids and waits until they are registered.
func (c *chaosCluster) startWorkers(ids ...string) {
	c.t.Helper()
	for _, id := range ids {
		c.startWorker(id)
	}
	c.waitWorkers(ids...)
}

// workerOfRank returns the worker that holds rank r of the job now.
func (c *chaosCluster) workerOfRank(id string, r int) string {
	c.t.Helper()
	j := c.job(id)
	if j.Assignment == nil || r >= len(j.Assignment.Ranks) {
		c.t.Fatalf("job %s has no rank %d: %v", id, r, j.Assignment)
	}
	return j.Assignment.Ranks[r].WorkerId
}

// waitStep waits until the job has committed step (from NATS metrics).
func (c *chaosCluster) waitStep(losses *lossLog, id string, step int64) {
	c.t.Helper()
	waitFor(c.t, 3*time.Minute, fmt.Sprintf("step %d of job %s", step, id), func() error {
		got := losses.of(id)
		if len(got) > 0 && got[len(got)-1].step >= step {
			return nil
		}
		if j := c.job(id); j.Status.State != pb.JobState_JOB_STATE_RUNNING && j.Status.State != pb.JobState_JOB_STATE_PENDING {
			c.t.Fatalf("job ended early: %v", j.Status)
		}
		return fmt.Errorf("%d steps so far", len(got))
	})
}

// signal sends sig to a worker process.
func (c *chaosCluster) signal(id string, sig syscall.Signal) {
	c.t.Helper()
	c.mu.Lock()
	cmd := c.workers[id]
	c.mu.Unlock()
	if err := cmd.Process.Signal(sig); err != nil {
		c.t.Fatal(err)
	}
}

// commit is one line of the sample log.
type commit struct {
	step, epoch, lo, hi int64
	world, rank         int
	gen                 uint64
	worker              string
}

// checkExactlyOnce reads the sample log of job id and checks that the
// committed steps consumed every sample of every epoch exactly once: each
// step's part of the epoch's order is the same on every rank that
// committed it, and the steps tile each epoch without gap or overlap. It
// returns how many steps were committed under more than one generation
// (steps redone after a failure).
func (c *chaosCluster) checkExactlyOnce(id string, n int64, epochs int) (redone int) {
	c.t.Helper()
	f, err := os.Open(c.samples)
	if err != nil {
		c.t.Fatal(err)
	}
	defer f.Close()
	byStep := map[int64][]commit{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var cm commit
		var job string
		if _, err := fmt.Sscan(sc.Text(), &job, &cm.step, &cm.epoch, &cm.lo, &cm.hi, &cm.world, &cm.rank, &cm.gen, &cm.worker); err != nil {
			c.t.Fatalf("sample log line %q: %v", sc.Text(), err)
		}
		if job == id {
			byStep[cm.step] = append(byStep[cm.step], cm)
		}
	}
	var steps []int64
	for s := range byStep {
		steps = append(steps, s)
	}
	sort.Slice(steps, func(a, b int) bool { return steps[a] < steps[b] })
	next := struct{ epoch, pos int64 }{0, 0}
	for i, s := range steps {
		if s != int64(i+1) {
			c.t.Fatalf("step %d is missing from the log (have %v...)", i+1, steps[:i+1])
		}
		cs := byStep[s]
		gens := map[uint64]bool{}
		for _, cm := range cs {
			gens[cm.gen] = true
			if cm.epoch != cs[0].epoch || cm.lo != cs[0].lo || cm.hi != cs[0].hi {
				c.t.Fatalf("step %d: ranks disagree on its samples: %+v and %+v", s, cs[0], cm)
			}
		}
		if len(gens) > 1 {
			redone++
		}
		cm := cs[0]
		if next.pos == n {
			next.epoch, next.pos = next.epoch+1, 0
		}
		if cm.epoch != next.epoch || cm.lo != next.pos {
			c.t.Fatalf("step %d consumed epoch %d [%d, %d), want it to start at epoch %d position %d: a sample was skipped or repeated",
				s, cm.epoch, cm.lo, cm.hi, next.epoch, next.pos)
		}
		next.pos = cm.hi
	}
	if next.epoch != int64(epochs-1) || next.pos != n {
		c.t.Fatalf("the log ends at epoch %d position %d, want the end of epoch %d (%d samples)", next.epoch, next.pos, epochs-1, n)
	}
	return redone
}

// trainSamples is the size of the chaos jobs' training set.
func trainSamples(t *testing.T) int64 {
	dir, err := mnist.DefaultDir()
	if err != nil {
		t.Fatal(err)
	}
	ds, err := mnist.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	var n int64
	for _, l := range ds.Train.Labels {
		for _, d := range chaosDigits {
			if int(l) == d {
				n++
			}
		}
	}
	return n
}

// checkRecovered asserts what every chaos scenario must end with.
func (c *chaosCluster) checkRecovered(id string, failures int) *pb.Job {
	c.t.Helper()
	j := c.waitState(id, pb.JobState_JOB_STATE_SUCCEEDED, 5*time.Minute)
	if acc := j.Status.Result.GetTestAccuracy(); acc < 0.98 {
		c.t.Errorf("test accuracy %.4f, want at least 0.98", acc)
	}
	if int(j.Status.Restarts) != failures {
		c.t.Errorf("the job absorbed %d failures, want %d", j.Status.Restarts, failures)
	}
	redone := c.checkExactlyOnce(id, trainSamples(c.t), max(c.epochs, 1))
	if redone > failures {
		c.t.Errorf("%d steps redone after %d failures, want at most one per failure", redone, failures)
	}
	var events []string
	for _, h := range j.Status.History {
		events = append(events, fmt.Sprintf("gen %d step %d %s: %s", h.Generation, h.Step, h.Event, h.Detail))
	}
	c.t.Logf("history:\n%s", strings.Join(events, "\n"))
	c.t.Logf("finished on generation %d with %d ranks, %d steps redone, accuracy %.4f",
		j.Assignment.Generation, len(j.Assignment.Ranks), redone, j.Status.Result.GetTestAccuracy())
	c.checkNoLeak(j)
	return j
}

// trainingLine is a worker log's line for joining a ring generation.
var trainingLine = regexp.MustCompile(`\ttraining\t\{.*"world": (\d+), "generation": (\d+).*"goroutines": (\d+)`)

// checkNoLeak compares, in the log of each worker that trained on the
// first generation and on the last, its goroutines when it joined each:
// a survivor of a ring that did not grow holds no more goroutines than
// before (a small margin covers connections that come and go).
func (c *chaosCluster) checkNoLeak(j *pb.Job) {
	c.t.Helper()
	const margin = 3
	for _, r := range j.Assignment.Ranks {
		b, err := os.ReadFile(filepath.Join(c.dir, r.WorkerId+".log"))
		if err != nil {
			c.t.Fatal(err)
		}
		var joins [][]string
		for _, line := range strings.Split(string(b), "\n") {
			if m := trainingLine.FindStringSubmatch(line); m != nil {
				joins = append(joins, m[1:])
			}
		}
		if len(joins) < 2 || joins[0][1] != "1" {
			continue // a replacement, or no change of ring
		}
		first, last := joins[0], joins[len(joins)-1]
		w0, _ := strconv.Atoi(first[0])
		w1, _ := strconv.Atoi(last[0])
		g0, _ := strconv.Atoi(first[2])
		g1, _ := strconv.Atoi(last[2])
		c.t.Logf("%s: %d goroutines on generation 1 (world %d), %d on generation %s (world %d)", r.WorkerId, g0, w0, g1, last[1], w1)
		if w1 <= w0 && g1 > g0+margin {
			c.t.Errorf("survivor %s leaked goroutines: %d when it joined generation 1, %d when it joined generation %s", r.WorkerId, g0, g1, last[1])
		}
	}
}

func (c *chaosCluster) submit(spec string) string {
	c.t.Helper()
	out, err := c.cli("submit", writeSpec(c.t, c.dir, spec))
	if err != nil {
		c.t.Fatalf("submit: %v: %s", err, out)
	}
	return strings.TrimSpace(out)
}

// kill -9 of a random rank (rank 0 included) at a random step: the
// survivors rebuild the ring in place and finish the job.
func TestChaosKillRecoversInPlace(t *testing.T) {
	c := startChaos(t)
	c.startWorkers("k0", "k1", "k2")
	losses := c.recordLosses()
	id := c.submit(chaosSpec("3", 3))
	rank, step := c.rng.IntN(3), int64(5+c.rng.IntN(60))
	c.waitStep(losses, id, step)
	victim := c.workerOfRank(id, rank)
	t.Logf("kill -9 of %s (rank %d) at step %d", victim, rank, step)
	c.kill(victim)
	j := c.checkRecovered(id, 1)
	for _, r := range j.Assignment.Ranks {
		if r.WorkerId == victim {
			t.Errorf("the killed worker %s is in the final ring", victim)
		}
	}
}

// A kill, then a second one while the ring recovers from the first.
func TestChaosTwoKillsInARow(t *testing.T) {
	c := startChaos(t)
	c.startWorkers("t0", "t1", "t2")
	losses := c.recordLosses()
	id := c.submit(chaosSpec("3", 3))
	step := int64(5 + c.rng.IntN(40))
	c.waitStep(losses, id, step)
	first, second := c.rng.IntN(3), c.rng.IntN(2)
	v1 := c.workerOfRank(id, first)
	var v2 string
	for _, r := range c.job(id).Assignment.Ranks {
		if r.WorkerId != v1 {
			if second == 0 {
				v2 = r.WorkerId
				break
			}
			second--
		}
	}
	gap := time.Duration(c.rng.IntN(300)) * time.Millisecond
	t.Logf("kill -9 of %s at step %d, then of %s %v later", v1, step, v2, gap)
	c.kill(v1)
	time.Sleep(gap)
	c.kill(v2)
	c.checkRecovered(id, 2)
}

// A stopped worker (SIGSTOP: no TCP reset, its lease no longer renewed) is
// noticed within the lease TTL and the survivors go on without it.
func TestChaosStoppedWorker(t *testing.T) {
	c := startChaos(t)
	c.startWorkers("s0", "s1", "s2")
	losses := c.recordLosses()
	id := c.submit(chaosSpec("3", 3))
	rank, step := c.rng.IntN(3), int64(5+c.rng.IntN(60))
	c.waitStep(losses, id, step)
	victim := c.workerOfRank(id, rank)
	t.Logf("SIGSTOP of %s (rank %d) at step %d", victim, rank, step)
	c.signal(victim, syscall.SIGSTOP)
	t.Cleanup(func() { c.signal(victim, syscall.SIGCONT) })
	c.checkRecovered(id, 1)
}

// kill -9 of rank 0 right after it starts a checkpoint: the job goes on,
// and the checkpoint that remains is valid or absent, never half-written.
func TestChaosKillDuringCheckpoint(t *testing.T) {
	c := startChaos(t)
	c.startWorkers("c0", "c1", "c2")
	losses := c.recordLosses()
	id := c.submit(chaosSpec("3", 3))
	step := int64(20 * (1 + c.rng.IntN(3)))
	c.waitStep(losses, id, step)
	victim := c.workerOfRank(id, 0)
	t.Logf("kill -9 of %s (rank 0) at the checkpoint of step %d", victim, step)
	c.kill(victim)
	c.checkRecovered(id, 1)
	out, err := c.cli("checkpoints", id)
	if err != nil || strings.Contains(out, "invalid") {
		t.Errorf("checkpoints: %v\n%s", err, out)
	}
}

// A worker that registers while an elastic job runs below its maximum
// joins at a step boundary: no failure, nothing redone.
func TestChaosWorkerJoinsMidEpoch(t *testing.T) {
	c := startChaos(t)
	c.startWorker("g0")
	c.startWorker("g1")
	c.waitWorkers("g0", "g1")
	losses := c.recordLosses()
	id := c.submit(chaosSpec("{min: 2, max: 3}", 3))
	step := int64(5 + c.rng.IntN(40))
	c.waitStep(losses, id, step)
	t.Logf("a third worker starts at step %d", step)
	c.startWorker("g2")
	j := c.checkRecovered(id, 0)
	if len(j.Assignment.Ranks) != 3 {
		t.Errorf("finished on %d ranks, want the new worker to have joined", len(j.Assignment.Ranks))
	}
}

// SIGTERM (a node drain, a preemption) makes a worker leave at the next
// step boundary: the job shrinks, no failure is counted, nothing is
// redone, and the worker process exits by itself.
func TestChaosWorkerLeavesOnSIGTERM(t *testing.T) {
	c := startChaos(t)
	c.startWorkers("l0", "l1", "l2")
	losses := c.recordLosses()
	id := c.submit(chaosSpec("3", 3))
	rank, step := c.rng.IntN(3), int64(5+c.rng.IntN(60))
	c.waitStep(losses, id, step)
	leaver := c.workerOfRank(id, rank)
	t.Logf("SIGTERM to %s (rank %d) at step %d", leaver, rank, step)
	c.mu.Lock()
	cmd := c.workers[leaver]
	c.mu.Unlock()
	c.signal(leaver, syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("the drained worker exited with %v", err)
		}
		c.mu.Lock()
		delete(c.workers, leaver)
		c.mu.Unlock()
	case <-time.After(2 * time.Minute):
		t.Fatalf("the worker did not exit within 2 minutes of SIGTERM")
	}
	j := c.checkRecovered(id, 0)
	left := false
	for _, h := range j.Status.History {
		left = left || h.Event == "left"
	}
	if !left {
		t.Errorf("the history does not record the worker leaving")
	}
	for _, r := range j.Assignment.Ranks {
		if r.WorkerId == leaver {
			t.Errorf("the drained worker %s is in the final ring", leaver)
		}
	}
}
