package coordinator

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/jobspec"
)

func startForPolicy(t *testing.T, cfg Config) (*Coordinator, pb.CoordinatorClient) {
	t.Helper()
	cfg.Listen = "127.0.0.1:0"
	c, err := Start(cfg, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	dial, err := c.AdminDialOption()
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(c.Addr(), dial)
	if err != nil {
		c.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		conn.Close()
		c.Close()
	})
	return c, pb.NewCoordinatorClient(conn)
}

// A spec that names a store or a dataset outside the coordinator's
// submission policy is refused as an invalid argument naming the field
// and the flag that allows it; nothing reaches etcd and nothing is created
// or probed outside the roots. A spec inside the policy is accepted.
func TestSubmitOutsidePolicyIsRefused(t *testing.T) {
	dataDir, outside := t.TempDir(), t.TempDir()
	c, api := startForPolicy(t, Config{DataDir: dataDir})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	base := "name: p\nmodel: cnn\nworkers: 1\nsteps: 10\n"
	for _, tc := range []struct{ name, spec, field, flag string }{
		{"file store", base + "checkpoint: {store: 'file://" + filepath.Join(outside, "ckpt") + "'}\n", "checkpoint.store", jobspec.FlagFileRoot},
		{"file store escaping with ..", base + "checkpoint: {store: 'file://" + dataDir + "/../" + filepath.Base(outside) + "/ckpt'}\n", "checkpoint.store", jobspec.FlagFileRoot},
		{"s3 store", base + "checkpoint: {store: 's3://b/p?endpoint=127.0.0.1:9'}\n", "checkpoint.store", jobspec.FlagS3Endpoint},
		{"mnist path", base + "dataset: {path: '" + outside + "'}\n", "dataset.path", jobspec.FlagDatasetRoot},
		{"token glob", "name: p\nmodel: gpt\ndataset: {path: '" + outside + "/*'}\n", "dataset.path", jobspec.FlagDatasetRoot},
	} {
		_, err := api.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte(tc.spec)})
		if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), tc.field) || !strings.Contains(err.Error(), tc.flag) {
			t.Errorf("%s: got %v; want InvalidArgument naming %s and %s", tc.name, err, tc.field, tc.flag)
		}
	}
	for _, prefix := range []string{c.keys.Jobs(), c.keys.Active()} {
		resp, err := c.etcd.Get(ctx, prefix, clientv3.WithPrefix(), clientv3.WithCountOnly())
		if err != nil {
			t.Fatal(err)
		}
		if resp.Count != 0 {
			t.Errorf("%d keys under %s after refused submissions", resp.Count, prefix)
		}
	}
	if _, err := os.Stat(filepath.Join(outside, "ckpt")); !os.IsNotExist(err) {
		t.Errorf("the refused store's directory: %v; want it never created", err)
	}

	// Inside the policy: DATA_DIR/checkpoints and DATA_DIR/datasets are
	// the roots; the rest of the data directory (etcd, the CA) is not.
	mnist := filepath.Join(dataDir, "datasets", "mnist")
	if err := os.MkdirAll(mnist, 0o755); err != nil {
		t.Fatal(err)
	}
	pkiSpec := base + "checkpoint: {store: 'file://" + filepath.Join(dataDir, "pki") + "'}\n"
	if _, err := api.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte(pkiSpec)}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("a store in the data directory's pki: %v; want InvalidArgument", err)
	}
	spec := base + "checkpoint: {store: 'file://" + filepath.Join(dataDir, "checkpoints", "mine") + "'}\ndataset: {path: '" + mnist + "'}\n"
	if _, err := api.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte(spec)}); err != nil {
		t.Errorf("a spec inside the policy: %v", err)
	}
}

// A job recorded with a store the policy no longer allows (here: by a
// coordinator with a wider policy) is not opened: listing its checkpoints
// fails and its directory is not created.
func TestStoreOutsidePolicyIsNotOpened(t *testing.T) {
	dataDir, outside := t.TempDir(), t.TempDir()
	store := filepath.Join(outside, "ckpt")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	c1, api := startForPolicy(t, Config{DataDir: dataDir, Policy: jobspec.Policy{FileRoots: []string{outside}}})
	r, err := api.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte("name: p\nmodel: cnn\nworkers: 2\nsteps: 10\ncheckpoint: {store: 'file://" + store + "'}\n")})
	if err != nil {
		t.Fatal(err)
	}
	c1.Close()

	_, api = startForPolicy(t, Config{DataDir: dataDir})
	_, err = api.ListCheckpoints(ctx, &pb.ListCheckpointsRequest{JobId: r.JobId})
	if status.Code(err) != codes.FailedPrecondition || !strings.Contains(err.Error(), "policy") {
		t.Errorf("ListCheckpoints: %v; want FailedPrecondition about the policy", err)
	}
	j, err := api.GetJob(ctx, &pb.GetJobRequest{JobId: r.JobId})
	if err != nil || !strings.Contains(j.GetCheckpointsError(), "policy") {
		t.Errorf("GetJob: %v, checkpoints error %q", err, j.GetCheckpointsError())
	}
	if _, err := os.Stat(store); !os.IsNotExist(err) {
		t.Errorf("the store's directory: %v; want it never created", err)
	}
}

// The policy's defaults: DATA_DIR/checkpoints and DATA_DIR/datasets, and
// the default store allowed wherever it is.
func TestPolicyDefaults(t *testing.T) {
	dataDir := t.TempDir()
	ckpt := filepath.Join(dataDir, "checkpoints")
	for _, tc := range []struct {
		cfg       Config
		fileRoots []string
		endpoints []string
	}{
		{Config{DataDir: dataDir}, []string{ckpt}, nil},
		{Config{DataDir: dataDir, DefaultStore: "file:///srv/ckpt"}, []string{ckpt, "/srv/ckpt"}, nil},
		{Config{DataDir: dataDir, DefaultStore: "file://" + dataDir + "/x", Policy: jobspec.Policy{FileRoots: []string{"/mnt"}}}, []string{"/mnt", dataDir + "/x"}, nil},
		{Config{DataDir: dataDir, DefaultStore: "s3://ckpt/runs?endpoint=minio:9000"}, []string{ckpt}, []string{"minio:9000/ckpt"}},
		{Config{DataDir: dataDir, DefaultStore: "s3://ckpt/runs?endpoint=minio:9000", Policy: jobspec.Policy{S3Endpoints: []string{"minio:9000"}}}, []string{ckpt}, []string{"minio:9000"}},
	} {
		cfg := tc.cfg
		if err := cfg.setDefaults(); err != nil {
			t.Fatalf("%+v: %v", tc.cfg, err)
		}
		p := cfg.Policy
		datasets := filepath.Join(dataDir, "datasets")
		if !slices.Equal(p.FileRoots, tc.fileRoots) || !slices.Equal(p.DatasetRoots, []string{datasets}) || !slices.Equal(p.S3Endpoints, tc.endpoints) {
			t.Errorf("DefaultStore %q: policy %+v; want file roots %v, dataset roots [%s], endpoints %v", cfg.DefaultStore, p, tc.fileRoots, datasets, tc.endpoints)
		}
	}
	for _, p := range []jobspec.Policy{{S3Endpoints: []string{"minio"}}, {FileRoots: []string{""}}} {
		cfg := Config{DataDir: dataDir, Policy: p}
		if err := cfg.setDefaults(); err == nil {
			t.Errorf("policy %+v accepted", p)
		}
	}
}
