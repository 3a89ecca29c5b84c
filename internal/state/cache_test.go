package state_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/embedded"
	"github.com/ringmaster/ringmaster/internal/state"
)

// The watch-driven view equals a fresh read of the hot state after a
// random history of registrations, claims, submissions, status changes,
// finished jobs moved off the active set, resumed jobs, damaged values and
// progress writes.
func TestCacheFollowsEtcd(t *testing.T) {
	// The maps are refreshed along the way too.
	defer state.SetRefreshSlack(0)()
	e, err := embedded.StartEtcd(embedded.EtcdConfig{Dir: t.TempDir()}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.LocalEndpoint()}, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := state.Keys{Prefix: "/cachetest/"}
	rng := rand.New(rand.NewPCG(1, 2))
	put := func(key, val string) {
		t.Helper()
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}
	txn := func(ops ...clientv3.Op) {
		t.Helper()
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			t.Fatal(err)
		}
	}
	submit := func(id string) {
		txn(clientv3.OpPut(k.Spec(id), state.Marshal(&pb.JobSpec{Name: id, Workers: 2})),
			clientv3.OpPut(k.Status(id), state.Marshal(&pb.JobStatus{State: pb.JobState_JOB_STATE_PENDING, CreatedMs: rng.Int64N(1000)})),
			clientv3.OpPut(k.ActiveJob(id), ""))
	}
	// Some state before the cache exists.
	for i := range 5 {
		put(k.Worker(fmt.Sprint("w", i)), state.Marshal(&pb.Worker{Addr: "a"}))
		submit(fmt.Sprint("j", i))
	}
	put(k.Claim("w1"), state.Marshal(&pb.Claim{JobId: "j1", Generation: 1}))
	put(k.Claim("w2"), "{damaged")

	cache, err := state.LoadCache(ctx, cli, k, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer cache.Close()
	jobsW, workersW := cache.Watches()
	// follow applies events until both watches are through what was
	// written: a last write on each range marks it.
	follow := func() {
		t.Helper()
		c, err := cli.Put(ctx, k.Claim("w-sync"), state.Marshal(&pb.Claim{JobId: "none"}))
		if err != nil {
			t.Fatal(err)
		}
		w, err := cli.Put(ctx, k.Worker("w-sync"), state.Marshal(&pb.Worker{Addr: "z"}))
		if err != nil {
			t.Fatal(err)
		}
		for cache.JobsRev() < c.Header.Revision || cache.WorkersRev() < w.Header.Revision {
			select {
			case wr := <-jobsW:
				if _, err := cache.ApplyJobs(ctx, wr); err != nil {
					t.Fatal(err)
				}
			case wr := <-workersW:
				if _, err := cache.ApplyWorkers(ctx, wr); err != nil {
					t.Fatal(err)
				}
			case <-ctx.Done():
				t.Fatalf("the cache stopped at revisions %d (jobs) and %d (workers), want %d and %d", cache.JobsRev(), cache.WorkersRev(),
					c.Header.Revision, w.Header.Revision)
			}
		}
	}
	var finished []string
	next := 5
	for step := range 400 {
		w := fmt.Sprint("w", rng.IntN(12))
		j := fmt.Sprint("j", rng.IntN(next))
		switch r := rng.IntN(100); {
		case r < 15:
			put(k.Worker(w), state.Marshal(&pb.Worker{Addr: fmt.Sprint("a", step), Incarnation: fmt.Sprint(step)}))
		case r < 22:
			if _, err := cli.Delete(ctx, k.Worker(w)); err != nil {
				t.Fatal(err)
			}
		case r < 35:
			put(k.Claim(w), state.Marshal(&pb.Claim{JobId: j, Generation: uint64(step)}))
		case r < 42:
			if _, err := cli.Delete(ctx, k.Claim(w)); err != nil {
				t.Fatal(err)
			}
		case r < 47:
			put(k.Claim(w), "not json")
		case r < 55:
			id := fmt.Sprint("j", next)
			next++
			submit(id)
		case r < 65:
			put(k.Status(j), state.Marshal(&pb.JobStatus{State: pb.JobState_JOB_STATE_RUNNING, CreatedMs: int64(step), Message: fmt.Sprint(step)}))
			put(k.Assignment(j), state.Marshal(&pb.Assignment{Generation: uint64(step)}))
		case r < 70:
			put(k.Report(j, int32(rng.IntN(3))), state.Marshal(&pb.RankReport{Error: "x"}))
		case r < 73:
			put(k.Assignment(j), "[broken")
		case r < 78:
			put(k.Result(j), state.Marshal(&pb.Progress{Done: true, Step: int64(step)}))
		case r < 85:
			// Progress is not part of the view.
			put(k.Progress(j), state.Marshal(&pb.Progress{Step: int64(step)}))
		case r < 93:
			// Finish: the marker goes, the keys are put again, reports
			// deleted, as the coordinator does.
			resp, err := cli.Get(ctx, k.Job(j), clientv3.WithPrefix())
			if err != nil {
				t.Fatal(err)
			}
			ops := []clientv3.Op{clientv3.OpPut(k.Status(j), state.Marshal(&pb.JobStatus{State: pb.JobState_JOB_STATE_SUCCEEDED})),
				clientv3.OpDelete(k.ActiveJob(j)), clientv3.OpDelete(k.Reports(j), clientv3.WithPrefix())}
			for _, kv := range resp.Kvs {
				if key := string(kv.Key); key != k.Status(j) && !strings.HasPrefix(key, k.Reports(j)) {
					ops = append(ops, clientv3.OpPut(key, string(kv.Value)))
				}
			}
			txn(ops...)
			finished = append(finished, j)
		default:
			// Resume a finished job: keys put back with the marker.
			if len(finished) == 0 {
				continue
			}
			f := finished[rng.IntN(len(finished))]
			txn(clientv3.OpPut(k.Status(f), state.Marshal(&pb.JobStatus{State: pb.JobState_JOB_STATE_PENDING, Resume: true})),
				clientv3.OpPut(k.ActiveJob(f), ""))
		}
		if step%50 == 0 {
			// Follow part of the way now and then, so that events arrive
			// both one by one and in bursts.
			follow()
		}
	}
	follow()
	want, err := state.ReadActive(ctx, cli, k)
	if err != nil {
		t.Fatal(err)
	}
	got := cache.Snapshot()
	if a, b := describe(k, got), describe(k, want); a != b {
		t.Errorf("the cache differs from a fresh read:\ncache:\n%s\nread:\n%s", a, b)
	}
	if len(want.Jobs) < 5 || len(want.Damaged) == 0 {
		t.Errorf("the history left %d active jobs and %d damaged keys; the test wants both", len(want.Jobs), len(want.Damaged))
	}
	// The progress of a job is read on demand.
	for id := range got.Jobs {
		if err := cache.FetchProgress(ctx, []string{id}); err != nil {
			t.Fatal(err)
		}
		if p, q := got.Jobs[id].Progress, want.Jobs[id].Progress; (p == nil) != (q == nil) || (p != nil && p.Step != q.Step) {
			t.Errorf("job %s: fetched progress %v, read %v", id, p, q)
		}
	}
}

// describe renders what the planner sees of a snapshot, progress aside.
func describe(k state.Keys, s *state.Snapshot) string {
	var lines []string
	for id, w := range s.Workers {
		lines = append(lines, fmt.Sprintf("worker %s %s rev %d/%d", id, w.Value.Addr, w.CreateRev, w.ModRev))
	}
	for id, c := range s.Claims {
		lines = append(lines, fmt.Sprintf("claim %s %s gen %d rev %d", id, c.Value.JobId, c.Value.Generation, c.ModRev))
	}
	for id, j := range s.Jobs {
		var keys []string
		for _, kv := range j.KVs {
			if !strings.HasPrefix(string(kv.Key), k.Progresses()) {
				keys = append(keys, fmt.Sprintf("%s@%d", kv.Key, kv.ModRevision))
			}
		}
		slices.Sort(keys)
		st, res := "-", "-"
		if j.Status.Value != nil {
			st = fmt.Sprintf("%v@%d", j.Status.Value.State, j.Status.ModRev)
		}
		if j.Result != nil {
			res = fmt.Sprint(j.Result.Step)
		}
		lines = append(lines, fmt.Sprintf("job %s spec %v status %s assignment %v result %s reports %d damaged %v keys %v",
			id, j.Spec != nil, st, j.Assignment != nil, res, len(j.Reports), s.DamagedJobs[id], keys))
	}
	for key := range s.Damaged {
		lines = append(lines, "damaged "+key)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
