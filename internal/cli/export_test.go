package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
	"google.golang.org/grpc"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/jobspec"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/export"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// runCLI runs the coordinator command tree with args and returns what it
// printed.
func runCLI(args ...string) (string, error) {
	cmd := NewCoordinatorCommand()
	var out bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&out)
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), err
}

// cnnState is a checkpoint state as the trainer writes it, of a CNN whose
// parameters are random (seeded).
func cnnState(t *testing.T, step int64, job string, seed uint64) (*checkpoint.State, []float32) {
	m, err := model.New(model.Config{Name: "cnn"}, model.NewCPU(1), seed)
	if err != nil {
		t.Fatal(err)
	}
	r := rand.New(rand.NewPCG(seed, 1))
	for i := range m.Params() {
		m.Params()[i] = float32(r.NormFloat64())
	}
	st := &checkpoint.State{Step: step, World: 1, Meta: map[string]string{"job": job, "model": "cnn", "model_config": `{"name":"cnn"}`}}
	for _, ti := range m.Tensors() {
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "model." + ti.Name, Shape: ti.Shape, Data: ti.Slice(m.Params())})
	}
	return st, m.Params()
}

// exported reads an exported file back and returns its tensors flattened
// in the CNN's layout, and its metadata.
func exported(t *testing.T, path string) ([]float32, map[string]string) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tensors, md, err := export.ReadSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string][]float32{}
	for _, x := range tensors {
		byName[x.Name] = x.Data
	}
	m := model.NewCNN(model.NewCPU(1), 0)
	var flat []float32
	for _, ti := range m.Tensors() {
		flat = append(flat, byName[ti.Name]...)
	}
	return flat, md
}

func sameBits(a, b []float32) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if math.Float32bits(a[i]) != math.Float32bits(b[i]) {
			return false
		}
	}
	return true
}

// `coordinator export JOB` resolves the job's checkpoints through the
// coordinator, exports the newest valid one or --step, and says what is
// wrong when it cannot; a checkpoint URL works without a coordinator.
func TestExportCommand(t *testing.T) {
	dir := t.TempDir()
	storeDir := filepath.Join(dir, "ckpt")
	c, err := coordinator.Start(coordinator.Config{Listen: "127.0.0.1:0", DataDir: filepath.Join(dir, "coord"),
		Policy: jobspec.Policy{FileRoots: []string{storeDir}}}, zaptest.NewLogger(t))
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
	client := pb.NewCoordinatorClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	spec := "name: export-test\nmodel: cnn\ndataset: {name: mnist}\nworkers: 1\nbatch_size: 8\nsteps: 100\n" +
		"optimizer: {name: sgd, lr: 0.1}\ncheckpoint: {every_steps: 10, store: \"file://" + storeDir + "\"}\n"
	resp, err := client.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: []byte(spec)})
	if err != nil {
		t.Fatal(err)
	}
	job := resp.JobId
	addr := "--addr=" + c.Addr()
	t.Setenv(EnvCredentials, c.AdminCredentialPath())

	// No worker runs the job: its checkpoints are written here, as its
	// rank 0 would write them.
	out, err := runCLI("export", job, addr, "-o", filepath.Join(dir, "none.safetensors"))
	if err == nil || !strings.Contains(err.Error(), "has no checkpoints") {
		t.Errorf("export before any checkpoint: %v\n%s", err, out)
	}
	store, err := checkpoint.NewFileStore(storeDir)
	if err != nil {
		t.Fatal(err)
	}
	mgr := checkpoint.NewManager(store, job, 10, zaptest.NewLogger(t))
	st10, params10 := cnnState(t, 10, job, 1)
	st20, params20 := cnnState(t, 20, job, 2)
	for _, st := range []*checkpoint.State{st10, st20} {
		if _, err := mgr.Save(ctx, st); err != nil {
			t.Fatal(err)
		}
	}

	// The newest, into the default file name in the working directory.
	t.Chdir(dir)
	out, err = runCLI("export", job, addr, "--format", "safetensors")
	if err != nil {
		t.Fatalf("export %s: %v\n%s", job, err, out)
	}
	got, md := exported(t, filepath.Join(dir, job+"-step-20.safetensors"))
	if !sameBits(got, params20) || md["step"] != "20" || md["job"] != job {
		t.Errorf("default export: step %s, job %s, parameters equal: %v; want step 20 of %s\n%s", md["step"], md["job"], sameBits(got, params20), job, out)
	}
	if !strings.Contains(out, "wrote "+job+"-step-20.safetensors: 8 tensors, 421642 parameters") {
		t.Errorf("export output:\n%s", out)
	}

	// --step.
	p10 := filepath.Join(dir, "ten.safetensors")
	if out, err := runCLI("export", job, addr, "--step", "10", "-o", p10); err != nil {
		t.Fatalf("export --step 10: %v\n%s", err, out)
	}
	if got, md := exported(t, p10); !sameBits(got, params10) || md["step"] != "10" {
		t.Errorf("--step 10 exported step %s", md["step"])
	}

	// A checkpoint URL, no coordinator needed.
	infos, err := mgr.List(ctx, false)
	if err != nil || len(infos) != 2 {
		t.Fatalf("list: %v %v", infos, err)
	}
	pURL := filepath.Join(dir, "url.safetensors")
	if out, err := runCLI("export", infos[1].URL, "--addr=127.0.0.1:1", "-o", pURL); err != nil {
		t.Fatalf("export %s: %v\n%s", infos[1].URL, err, out)
	}
	if got, md := exported(t, pURL); !sameBits(got, params10) || md["step"] != "10" {
		t.Errorf("export of %s gave step %s", infos[1].URL, md["step"])
	}

	// Errors that name the fix.
	if err := os.Remove(filepath.Join(storeDir, job, "step-000000000020", "manifest.json")); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"export", job, "--format", "onnx"}, "unknown format \"onnx\"; use --format safetensors"},
		{[]string{"export", job, "--step", "15"}, "has no checkpoint at step 15; valid steps: 10"},
		{[]string{"export", job, "--step", "20"}, "at step 20 is not valid"},
		{[]string{"export", "no-such-job"}, "no-such-job"},
		{[]string{"export", "file://" + filepath.Join(dir, "nowhere")}, "no such directory"},
	} {
		out, err := runCLI(append(c.args, addr, "-o", filepath.Join(dir, "err.safetensors"))...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want an error containing %q\n%s", c.args, err, c.want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "err.safetensors")); !os.IsNotExist(err) {
		t.Errorf("a failed export left a file: %v", err)
	}

	// With step 20 broken, the newest valid one is step 10.
	p := filepath.Join(dir, "latest.safetensors")
	if out, err := runCLI("export", job, addr, "-o", p); err != nil {
		t.Fatalf("export with step 20 broken: %v\n%s", err, out)
	}
	got, md = exported(t, p)
	if !sameBits(got, params10) || md["step"] != "10" {
		t.Errorf("newest valid export gave step %s", md["step"])
	}
	var cfg model.Config
	if err := json.Unmarshal([]byte(md["model_config"]), &cfg); err != nil || cfg.Name != "cnn" {
		t.Errorf("model_config %q: %v", md["model_config"], err)
	}
}
