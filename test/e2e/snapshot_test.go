package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/coordinator"
)

// `coordinator snapshot save` backs the control plane's state up while it
// serves; `snapshot restore` turns the file into a new data directory whose
// coordinator serves the same jobs. A damaged snapshot is refused.
func TestSnapshotSaveAndRestore(t *testing.T) {
	c := startCluster(t)
	out, err := c.cli("submit", writeSpec(t, c.dir, `
name: backed-up
model: cnn
dataset: {name: mnist, digits: [0, 1]}
workers: 3
batch_size: 16
epochs: 1
`))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	id := strings.TrimSpace(out)
	file := filepath.Join(c.dir, "backup.db")
	if out, err := c.cli("snapshot", "save", file); err != nil {
		t.Fatalf("snapshot save: %v: %s", err, out)
	} else {
		t.Log(strings.TrimSpace(out))
	}

	// A damaged copy is refused by its integrity hash.
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(b)
	bad[len(bad)/2] ^= 0xff
	badFile := filepath.Join(c.dir, "damaged.db")
	if err := os.WriteFile(badFile, bad, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := c.cli("snapshot", "restore", badFile, "--data-dir", filepath.Join(c.dir, "from-damaged")); err == nil {
		t.Errorf("restoring a damaged snapshot succeeded: %s", out)
	}

	restored := filepath.Join(c.dir, "restored")
	if out, err := c.cli("snapshot", "restore", file, "--data-dir", restored); err != nil {
		t.Fatalf("snapshot restore: %v: %s", err, out)
	}
	if out, err := c.cli("snapshot", "restore", file, "--data-dir", restored); err == nil || !strings.Contains(err.Error(), "exists") {
		t.Errorf("restoring over an existing data directory: %v: %s", err, out)
	}
	// The restored directory has the snapshot's etcd (with its users) and
	// no CA: the cluster's CA is given, as a restore on another machine
	// would give it (docs/operations.md).
	caDir := filepath.Join(c.dir, "coord", "pki")
	c2, err := coordinator.Start(coordinator.Config{Listen: "127.0.0.1:0", DataDir: restored, CADir: caDir}, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	dialOpt, err := c2.AdminDialOption()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c2.Addr(), dialOpt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	j, err := pb.NewCoordinatorClient(conn).GetJob(ctx, &pb.GetJobRequest{JobId: id})
	if err != nil {
		t.Fatalf("the restored coordinator does not know job %s: %v", id, err)
	}
	if j.Spec.Name != "backed-up" || j.Spec.Workers != 3 || j.Status.State != pb.JobState_JOB_STATE_PENDING {
		t.Errorf("restored job: spec %v, state %v", j.Spec, j.Status.State)
	}

	// The same file restored into three replicas' data directories (the
	// documented restore of a replicated control plane): they form one
	// etcd cluster that serves the job from every replica.
	var peers, routes []string
	for i := range 3 {
		peers = append(peers, fmt.Sprintf("r%d=http://%s", i, freeAddr(t)))
		routes = append(routes, fmt.Sprintf("r%d=nats://%s", i, freeAddr(t)))
	}
	initial := strings.Join(peers, ",")
	for i := range 3 {
		args := []string{"snapshot", "restore", file, "--data-dir", filepath.Join(c.dir, fmt.Sprint("replica", i)), "--name", fmt.Sprint("r", i), "--initial-cluster", initial}
		if out, err := c.cli(args...); err != nil {
			t.Fatalf("snapshot restore for replica r%d: %v: %s", i, err, out)
		}
	}
	// A replica's etcd serves once a majority has started: start them
	// together.
	replicas := make([]*coordinator.Coordinator, 3)
	errs := make(chan error, 3)
	for i := range 3 {
		go func() {
			r, err := coordinator.Start(coordinator.Config{Listen: "127.0.0.1:0", DataDir: filepath.Join(c.dir, fmt.Sprint("replica", i)),
				Name: fmt.Sprint("r", i), InitialCluster: initial, NATSRoutes: strings.Join(routes, ","), CADir: caDir}, zaptest.NewLogger(t).Named(fmt.Sprint("r", i)))
			replicas[i] = r
			errs <- err
		}()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	for i, r := range replicas {
		defer r.Close()
		conn, err := grpc.NewClient(r.Addr(), dialOpt)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		cl := pb.NewCoordinatorClient(conn)
		j, err := cl.GetJob(ctx, &pb.GetJobRequest{JobId: id})
		if err != nil || j.Spec.Name != "backed-up" {
			t.Fatalf("restored replica r%d: job %s: %v, %v", i, id, j.GetSpec(), err)
		}
		st, err := cl.ClusterStatus(ctx, &pb.ClusterStatusRequest{})
		if err != nil {
			t.Fatalf("restored replica r%d: cluster status: %v", i, err)
		}
		if len(st.Members) != 3 || !st.Quorum {
			t.Errorf("restored replica r%d sees %d etcd members (quorum %v), want 3 with a quorum: %v", i, len(st.Members), st.Quorum, st.Members)
		}
	}
}

// A key in the job prefix that cannot be decoded (a bad manual edit, a
// value from a newer version) is left alone: the other jobs are scheduled
// and finish.
func TestDamagedKeyDoesNotStopScheduling(t *testing.T) {
	c := startCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cli, info := etcdOf(t, c.coord)
	if _, err := cli.Put(ctx, info.EtcdPrefix+"jobs/bogus/status", "{not a status"); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Put(ctx, info.EtcdPrefix+"jobs/bogus/spec", `{"name": "bogus", "workers": 1}`); err != nil {
		t.Fatal(err)
	}
	// Marked active, so that the scheduler reads it.
	if _, err := cli.Put(ctx, info.EtcdPrefix+"active/bogus", ""); err != nil {
		t.Fatal(err)
	}
	c.startWorker("d0", testLease)
	c.waitWorkers("d0")
	out, err := c.cli("submit", writeSpec(t, c.dir, "name: fine\nmodel: cnn\nsteps: 4\ndataset: {name: mnist, digits: [0, 1]}\n"))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	c.waitState(strings.TrimSpace(out), pb.JobState_JOB_STATE_SUCCEEDED, 2*time.Minute)
	if out, err := c.cli("list"); err != nil {
		t.Errorf("list with a damaged job: %v: %s", err, out)
	}
}

// A coordinator that stops cleanly gives up its leadership at once: the
// next one on the same data directory finds no election key of the old
// one (it would otherwise wait for that key's 5 s lease to expire).
func TestCleanStopHandsLeadershipOver(t *testing.T) {
	dir := t.TempDir()
	start := func() *coordinator.Coordinator {
		c, err := coordinator.Start(coordinator.Config{Listen: "127.0.0.1:0", DataDir: dir}, zaptest.NewLogger(t))
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	a := start()
	t.Cleanup(a.Close)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cliA, info := etcdOf(t, a)
	keys := func(cli *clientv3.Client) []string {
		t.Helper()
		resp, err := cli.Get(ctx, info.EtcdPrefix+"election/", clientv3.WithPrefix())
		if err != nil {
			t.Fatal(err)
		}
		var vals []string
		for _, kv := range resp.Kvs {
			vals = append(vals, string(kv.Value))
		}
		return vals
	}
	waitFor(t, 30*time.Second, "the first coordinator to lead", func() error {
		if len(keys(cliA)) == 0 {
			return errors.New("no election key yet")
		}
		return nil
	})
	aAddr := a.Addr()
	a.Close()
	b := start()
	defer b.Close()
	cliB, _ := etcdOf(t, b)
	for _, v := range keys(cliB) {
		if strings.HasSuffix(v, "/"+aAddr) {
			t.Errorf("the stopped coordinator's election key is still there: %s", v)
		}
	}
}

// etcdOf returns a client of the etcd that coordinator c uses (as the
// coordinators' identity, from c's CA), and c's Info; both are closed at
// the end of the test.
func etcdOf(t *testing.T, c *coordinator.Coordinator) (*clientv3.Client, *pb.InfoResponse) {
	t.Helper()
	dialOpt, err := c.AdminDialOption()
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Addr(), dialOpt)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := pb.NewCoordinatorClient(conn).Info(ctx, &pb.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: info.EtcdEndpoints, DialTimeout: 10 * time.Second, TLS: c.RootTLS()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli, info
}
