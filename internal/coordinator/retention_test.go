package coordinator

import (
	"context"
	"fmt"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// specNeeding is a job that needs n workers (there are none here, so it
// stays pending until cancelled).
func specNeeding(n int) []byte {
	return []byte(fmt.Sprintf(`
name: r
model: cnn
dataset: {name: mnist}
workers: %d
batch_size: 32
optimizer: {lr: 0.05}
steps: 10
`, n))
}

// The scheduler's reads do not grow with finished jobs: with one pending
// job, its full read of the state (at each periodic resync) takes the
// same keys before and after 100 jobs finished. Finished jobs leave etcd
// after the retention period; a job resumed in time is kept.
func TestFinishedJobsLeaveTheSchedulerAndExpire(t *testing.T) {
	const retention = 2 * time.Second
	c, err := Start(Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), JobRetention: retention,
		ReconcileInterval: 50 * time.Millisecond, ResyncInterval: 200 * time.Millisecond}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dialOpt, err := c.AdminDialOption()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Addr(), dialOpt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	api := pb.NewCoordinatorClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	submit := func() string {
		t.Helper()
		r, err := api.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: specNeeding(4)})
		if err != nil {
			t.Fatal(err)
		}
		return r.JobId
	}
	waitState := func(id string, want pb.JobState) {
		t.Helper()
		for {
			j, err := api.GetJob(ctx, &pb.GetJobRequest{JobId: id})
			if err != nil {
				t.Fatal(err)
			}
			if j.Status.State == want {
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	// reads waits for two resyncs after now and returns what the last
	// full read took.
	reads := func() int64 {
		time.Sleep(3 * c.cfg.ResyncInterval)
		return c.loadedKeys.Load()
	}

	pending := submit()
	before := reads()
	if before < 3 {
		t.Fatalf("the scheduler's read took %d keys; want at least the pending job's marker, spec and status", before)
	}
	resumed := ""
	for i := range 100 {
		id := submit()
		if _, err := api.CancelJob(ctx, &pb.CancelJobRequest{JobId: id}); err != nil {
			t.Fatal(err)
		}
		waitState(id, pb.JobState_JOB_STATE_CANCELLED)
		if i == 99 {
			resumed = id
		}
	}
	if after := reads(); after != before {
		t.Errorf("the scheduler's read took %d keys with 100 finished jobs, %d without: it must not grow", after, before)
	} else {
		t.Logf("the scheduler's read takes %d keys with and without 100 finished jobs", after)
	}
	if _, err := api.ResumeJob(ctx, &pb.ResumeJobRequest{JobId: resumed}); err != nil {
		t.Fatal(err)
	}

	// The finished jobs expire; the pending and the resumed one stay.
	deadline := time.Now().Add(retention + 10*time.Second)
	for {
		l, err := api.ListJobs(ctx, &pb.ListJobsRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if len(l.Jobs) == 2 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d jobs listed %v after the retention; want the pending and the resumed one", len(l.Jobs), retention)
		}
		time.Sleep(100 * time.Millisecond)
	}
	time.Sleep(retention + time.Second)
	for _, id := range []string{pending, resumed} {
		j, err := api.GetJob(ctx, &pb.GetJobRequest{JobId: id})
		if err != nil {
			t.Fatalf("job %s: %v", id, err)
		}
		if j.Status.State != pb.JobState_JOB_STATE_PENDING {
			t.Errorf("job %s is %v, want pending", id, j.Status.State)
		}
	}
	resp, err := c.etcd.Get(ctx, c.keys.Jobs(), clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Count != 4 {
		t.Errorf("%d keys left under %s; want the spec and status of 2 jobs", resp.Count, c.keys.Jobs())
	}
}

// State from layout 2 (progress and checkpoint records under the job's
// keys) is upgraded: the progress moves to progress/<job>, on the lease it
// had, and the records go (the store lists the checkpoints).
func TestMigrateMovesProgressOutOfTheJob(t *testing.T) {
	c, err := Start(Config{Listen: "127.0.0.1:0", DataDir: t.TempDir(), JobRetention: time.Hour}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	k := c.keys
	// The leader upgrades (an empty etcd) when it is elected: wait for it,
	// so that the upgrade below is the test's own.
	for {
		resp, err := c.etcd.Get(ctx, k.Layout())
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	lease, err := c.etcd.Grant(ctx, 3600)
	if err != nil {
		t.Fatal(err)
	}
	done := `{"generation": "1", "step": "7", "done": true}`
	for _, kv := range [][2]string{
		{k.Spec("old"), `{"name": "old", "workers": 1}`},
		{k.Status("old"), `{"state": "JOB_STATE_SUCCEEDED"}`},
		{k.LegacyProgress("old"), done},
		{k.Checkpoints("old") + "000000000005", `{"step": "5", "url": "file:///x"}`},
	} {
		if _, err := c.etcd.Put(ctx, kv[0], kv[1], clientv3.WithLease(lease.ID)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.etcd.Put(ctx, k.Layout(), "2"); err != nil {
		t.Fatal(err)
	}
	if err := c.migrate(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := c.etcd.Get(ctx, k.Progress("old"))
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != done || resp.Kvs[0].Lease != int64(lease.ID) {
		t.Fatalf("progress/old after the upgrade: %v, %v; want the old value on lease %x", resp.Kvs, err, lease.ID)
	}
	if resp, err := c.etcd.Get(ctx, k.LegacyProgress("old")); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("the old progress key is still there: %v, %v", resp.Kvs, err)
	}
	if resp, err := c.etcd.Get(ctx, k.Checkpoints("old"), clientv3.WithPrefix()); err != nil || len(resp.Kvs) != 0 {
		t.Errorf("the checkpoint records of layout 3 are still there: %v, %v", resp.Kvs, err)
	}
	if resp, err := c.etcd.Get(ctx, k.Layout()); err != nil || string(resp.Kvs[0].Value) != layoutVersion {
		t.Errorf("layout after the upgrade: %v, %v", resp.Kvs, err)
	}
}
