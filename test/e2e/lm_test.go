package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

// A GPT pretrained on Go sources by two worker processes, then a second
// job that names the first by its name in init_from and fine-tunes on Go
// assembly: the workers load its weights, and the job ends with a
// validation loss.
func TestGPTPretrainThenFineTune(t *testing.T) {
	c := startCluster(t)
	c.startWorker("w0", testLease)
	c.startWorker("w1", testLease)
	c.waitWorkers("w0", "w1")

	data := filepath.Join(c.dir, "corpus") // inside the cluster's submission policy
	for _, p := range []tokens.PrepareOptions{
		{Name: "go", Inputs: []string{filepath.Join(runtime.GOROOT(), "src", "strings")}, Include: []string{"*.go"}, Exclude: []string{"*_test.go"}, ValTokens: 8 << 10},
		{Name: "asm", Inputs: []string{filepath.Join(runtime.GOROOT(), "src", "runtime")}, Include: []string{"*_amd64.s"}, ValTokens: 8 << 10},
	} {
		p.OutDir, p.ShardTokens = data, 1<<16
		if _, err := tokens.Prepare(context.Background(), p); err != nil {
			t.Fatal(err)
		}
	}
	spec := func(name, corpus, extra string) string {
		return fmt.Sprintf(`name: %s
model: gpt
model_config: {layers: 1, dim: 32, heads: 2, ctx: 32}
dataset:
  path: %s
  val_path: %s
workers: 2
batch_size: 8
optimizer: {name: adamw, lr: 0.003, grad_clip: 1.0}
steps: 12
checkpoint: {every_steps: 6}
%s`, name, filepath.Join(data, corpus+"_train_*.bin"), filepath.Join(data, corpus+"_val_*.bin"), extra)
	}
	out, err := c.cli("submit", writeSpec(t, c.dir, spec("gpt-go", "go", "")))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	pre := strings.TrimSpace(out)
	j := c.waitState(pre, pb.JobState_JOB_STATE_SUCCEEDED, 3*time.Minute)
	if r := j.Status.Result; r == nil || r.Steps != 12 || r.EvalLoss <= 0 || r.TestSamples == 0 {
		t.Fatalf("pretraining result = %+v", j.Status.Result)
	}

	out, err = c.cli("submit", writeSpec(t, c.dir, spec("gpt-asm", "asm", "init_from: gpt-go\n")))
	if err != nil {
		t.Fatalf("submit: %v: %s", err, out)
	}
	ft := strings.TrimSpace(out)
	j = c.waitState(ft, pb.JobState_JOB_STATE_SUCCEEDED, 3*time.Minute)
	if j.Spec.InitFrom != pre {
		t.Errorf("init_from resolved to %q, want the pretraining job %s", j.Spec.InitFrom, pre)
	}
	if r := j.Status.Result; r == nil || r.Steps != 12 || r.EvalLoss <= 0 {
		t.Fatalf("fine-tuning result = %+v", j.Status.Result)
	}
	out, err = c.cli("status", ft)
	if err != nil || !strings.Contains(out, "validation loss") {
		t.Errorf("status: %v\n%s", err, out)
	}
	if !c.logsContain("initialised from a checkpoint") {
		t.Error("no worker logged loading the pretrained weights")
	}
	// A name that matches no job is refused at submission.
	out, err = c.cli("submit", writeSpec(t, c.dir, spec("gpt-asm2", "asm", "init_from: no-such-job\n")))
	if err == nil || !strings.Contains(err.Error()+out, "init_from") {
		t.Errorf("init_from of a missing job: %v\n%s", err, out)
	}
}
