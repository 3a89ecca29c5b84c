package jobspec

import (
	"errors"
	"strings"
	"testing"
)

const good = `
name: mnist-cnn
model: cnn
dataset:
  name: mnist
workers: 2
batch_size: 32
optimizer:
  name: sgd
  lr: 0.05
  momentum: 0.9
  schedule: cosine
  warmup_steps: 10
epochs: 1
seed: 7
checkpoint:
  every_steps: 100
  store: file:///tmp/ckpt
  keep: 2
collective_timeout: 20s
`

func TestParseValid(t *testing.T) {
	s, err := Parse([]byte(good), Options{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if s.Name != "mnist-cnn" || s.Model != "cnn" || s.Workers != 2 || s.BatchSize != 32 {
		t.Errorf("got name=%q model=%q workers=%d batch=%d", s.Name, s.Model, s.Workers, s.BatchSize)
	}
	if s.Optimizer.Lr != 0.05 || s.Optimizer.Momentum != 0.9 || s.Seed != 7 || s.Epochs != 1 || s.Optimizer.Schedule != "cosine" || s.Optimizer.WarmupSteps != 10 {
		t.Errorf("got optimizer %+v seed %d epochs %d", s.Optimizer, s.Seed, s.Epochs)
	}
	if s.Checkpoint.EverySteps != 100 || s.Checkpoint.Keep != 2 || s.Checkpoint.Store != "file:///tmp/ckpt" {
		t.Errorf("got checkpoint %+v", s.Checkpoint)
	}
	if s.Checkpoint.Synchronous || s.Checkpoint.IfBusy != "wait" || s.Checkpoint.Checksum != "crc32c" || s.Checkpoint.KeepEvery != 0 {
		t.Errorf("checkpoint defaults: %+v", s.Checkpoint)
	}
	if s.CollectiveTimeoutMs != 20000 {
		t.Errorf("collective timeout = %d ms, want 20000", s.CollectiveTimeoutMs)
	}
}

func TestParseCheckpointPolicy(t *testing.T) {
	s, err := Parse([]byte("name: a\nmodel: cnn\ncheckpoint:\n  store: s3://bkt/runs?endpoint=minio:9000&path_style=true\n  keep: 2\n  keep_every: 1000\n  async: false\n  if_busy: skip\n  checksum: sha256\n"), Options{})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	c := s.Checkpoint
	if c.Store != "s3://bkt/runs?endpoint=minio:9000&path_style=true" || c.Keep != 2 || c.KeepEvery != 1000 || !c.Synchronous || c.IfBusy != "skip" || c.Checksum != "sha256" {
		t.Errorf("checkpoint = %+v", c)
	}
}

func TestParseDefaults(t *testing.T) {
	s, err := Parse([]byte("name: a\nmodel: cnn\n"), Options{DefaultStore: "file:///var/ckpt"})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if s.Workers != 1 || s.BatchSize != DefaultBatchSize || s.Dataset.Name != "mnist" || s.Dataset.Path != "" ||
		s.Optimizer.Name != "sgd" || s.Epochs != DefaultEpochs || s.Checkpoint.Store != "file:///var/ckpt" {
		t.Errorf("defaults not applied: %+v", s)
	}
}

func TestParseLanguageModel(t *testing.T) {
	y := `name: gpt-go
model: gpt
model_config:
  layers: 2
  dim: 64
  heads: 2
dataset:
  path: /data/go_train_*.bin
  val_path: s3://corpus/go_val_*.bin?endpoint=minio:9000
optimizer:
  name: adamw
  lr: 0.001
  beta2: 0.95
  grad_clip: 1
grad_accum: 2
init_from: other-job
collective:
  bucket_bytes: 0
  wire: bf16
`
	s, err := Parse([]byte(y), Options{DefaultStore: "file:///c"})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	cfg := ModelConfig(s)
	if cfg.Name != "gpt" || cfg.Layers != 2 || cfg.Dim != 64 || cfg.Heads != 2 || cfg.Ctx != 64 || cfg.Vocab != 256 || cfg.Hidden != 0 {
		t.Errorf("model config = %+v; want the given fields over the defaults (ctx 64, vocab 256, hidden 0: the model fills 4*dim)", cfg)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the stored config does not validate: %v", err)
	}
	o := s.Optimizer
	if o.Name != "adamw" || o.Momentum != 0 || o.WeightDecay != DefaultAdamWWeightDecay || o.Beta1 != DefaultBeta1 || o.Beta2 != 0.95 || o.Eps != DefaultEps || o.GradClip != 1 {
		t.Errorf("optimizer = %+v", o)
	}
	if s.Dataset.Name != "tokens" || s.Dataset.Path != "/data/go_train_*.bin" || s.Dataset.ValPath == "" {
		t.Errorf("dataset = %+v", s.Dataset)
	}
	if s.GradAccum != 2 || s.InitFrom != "other-job" || s.Collective.BucketBytes != 0 || s.Collective.Wire != "bf16" {
		t.Errorf("grad_accum %d, init_from %q, collective %+v", s.GradAccum, s.InitFrom, s.Collective)
	}
	d, err := Parse([]byte("name: a\nmodel: cnn\ndataset:\n  digits: [5, 6, 7, 8, 9]\n"), Options{DefaultStore: "file:///c"})
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(d.Dataset.Digits) != 5 || d.Dataset.Digits[0] != 5 || d.Collective.BucketBytes != DefaultBucketBytes || d.Collective.Wire != "f32" {
		t.Errorf("digits %v, collective %+v", d.Dataset.Digits, d.Collective)
	}
}

func TestParseRefuses(t *testing.T) {
	base := "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n"
	cases := []struct {
		name, yaml string
		field      string // the field the error must name
		hint       string // part of the fix the error must suggest
	}{
		{"yaml syntax", "name: j\nmodel: [cnn\n", "", "YAML syntax error"},
		{"unknown model", "name: j\nmodel: resnet\n", "model", "allowed models: cnn, lstm, gpt"},
		{"missing model", "name: j\n", "model", "required"},
		{"negative lr", base + "optimizer:\n  lr: -0.1\n", "optimizer.lr", "greater than 0"},
		{"zero lr", base + "optimizer:\n  lr: 0\n", "optimizer.lr", "greater than 0"},
		{"zero workers", base + "workers: 0\n", "workers", "between 1 and"},
		{"missing dataset", base + "dataset:\n  path: /nonexistent/mnist\n", "dataset.path", "does not exist"},
		{"relative dataset", base + "dataset:\n  path: data/mnist\n", "dataset.path", "absolute path"},
		{"unknown dataset", base + "dataset:\n  name: cifar\n", "dataset.name", "allowed datasets: mnist"},
		{"unknown field", base + "learning_rate: 0.1\n", "learning_rate", "allowed fields here"},
		{"unknown nested field", base + "optimizer:\n  lrr: 0.1\n", "optimizer.lrr", "grad_clip, lr, min_lr_ratio, momentum"},
		{"wrong type", base + "workers: two\n", "", "wrong type"},
		{"unknown schedule", base + "optimizer:\n  schedule: step\n", "optimizer.schedule", "allowed: constant, cosine"},
		{"negative warmup", base + "optimizer:\n  warmup_steps: -1\n", "optimizer.warmup_steps", "0 or more"},
		{"steps and epochs", base + "steps: 10\nepochs: 2\n", "steps", "either steps or epochs"},
		{"bad store", "name: j\nmodel: cnn\ncheckpoint:\n  store: ftp://x/y\n", "checkpoint.store", "not supported"},
		{"s3 store without bucket", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3:///p\n", "checkpoint.store", "no bucket"},
		{"s3 store with a typo", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3://b/p?endpont=h:1\n", "checkpoint.store", "allowed: endpoint"},
		{"s3 store with secrets", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3://k:s@b/p\n", "checkpoint.store", "AWS_ACCESS_KEY_ID"},
		{"s3 store naming a credentials file", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3://b/p?credentials_file=/etc/shadow\n", "checkpoint.store", "credentials_file= is not allowed"},
		{"s3 store naming a profile", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3://b/p?profile=prod\n", "checkpoint.store", "profile= is not allowed"},
		{"init_from naming a credentials file", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\ninit_from: s3://b/p?credentials_file=/root/.aws/credentials\n", "init_from", "credentials_file= is not allowed"},
		{"dataset naming a credentials file", "name: j\nmodel: gpt\ncheckpoint:\n  store: file:///tmp/c\ndataset:\n  path: s3://b/x_*.bin?endpoint=h:9000&credentials_file=/etc/passwd\n", "dataset.path", "credentials_file= is not allowed"},
		{"unknown if_busy", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n  if_busy: queue\n", "checkpoint.if_busy", "wait or skip"},
		{"unknown checksum", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n  checksum: md5\n", "checkpoint.checksum", "crc32c, sha256"},
		{"negative keep_every", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n  keep_every: -1\n", "checkpoint.keep_every", "0 (none)"},
		{"relative file store", "name: j\nmodel: cnn\ncheckpoint:\n  store: file://rel/path\n", "checkpoint.store", "absolute path"},
		{"no store", "name: j\nmodel: cnn\n", "checkpoint.store", "file:///"},
		{"bad name", "name: 'a b'\nmodel: cnn\n", "name", "letters, digits"},
		{"bad timeout", base + "collective_timeout: soon\n", "collective_timeout", "duration"},
		{"heads do not divide dim", "name: j\nmodel: gpt\ncheckpoint:\n  store: file:///tmp/c\ndataset:\n  path: /d/x_*.bin\nmodel_config:\n  dim: 128\n  heads: 3\n", "model_config.heads", "does not divide dim 128"},
		{"zero layers", "name: j\nmodel: lstm\ncheckpoint:\n  store: file:///tmp/c\ndataset:\n  path: /d/x_*.bin\nmodel_config:\n  layers: 0\n", "model_config.layers", "must be positive"},
		{"cnn architecture", base + "model_config:\n  layers: 2\n", "model_config.layers", "cnn does not use it"},
		{"vocab too big", "name: j\nmodel: gpt\ncheckpoint:\n  store: file:///tmp/c\ndataset:\n  path: /d/x_*.bin\nmodel_config:\n  vocab: 100000\n", "model_config.vocab", "uint16"},
		{"unknown model_config field", base + "model_config:\n  width: 2\n", "model_config.width", "allowed fields here"},
		{"tokens without path", "name: j\nmodel: gpt\ncheckpoint:\n  store: file:///tmp/c\n", "dataset.path", "coordinator prepare"},
		{"tokens path matches nothing", "name: j\nmodel: gpt\ncheckpoint:\n  store: file:///tmp/c\ndataset:\n  path: /nonexistent/go_train_*.bin\n", "dataset.path", "matches no shard"},
		{"model and dataset disagree", base + "dataset:\n  name: tokens\n", "dataset.name", "trains on the mnist dataset"},
		{"bad digit", base + "dataset:\n  digits: [0, 10]\n", "dataset.digits", "from 0 to 9"},
		{"repeated digit", base + "dataset:\n  digits: [1, 1]\n", "dataset.digits", "distinct"},
		{"digits not a list of values", base + "dataset:\n  digits: [[1]]\n", "dataset.digits", "list of single values"},
		{"unknown optimizer", base + "optimizer:\n  name: lamb\n", "optimizer.name", "allowed: sgd, adamw"},
		{"momentum with adamw", base + "optimizer:\n  name: adamw\n  momentum: 0.9\n", "optimizer.momentum", "beta1 and beta2"},
		{"beta with sgd", base + "optimizer:\n  beta2: 0.95\n", "optimizer.beta2", "adamw setting"},
		{"beta out of range", base + "optimizer:\n  name: adamw\n  beta1: 1\n", "optimizer.beta1", "[0, 1)"},
		{"zero eps", base + "optimizer:\n  name: adamw\n  eps: 0\n", "optimizer.eps", "greater than 0"},
		{"negative grad clip", base + "optimizer:\n  grad_clip: -1\n", "optimizer.grad_clip", "0 (off) or more"},
		{"grad_accum above batch", base + "batch_size: 4\ngrad_accum: 8\n", "grad_accum", "between 1 and batch_size (4)"},
		{"init_from and resume", base + "resume: a\ninit_from: b\n", "init_from", "not both"},
		{"init_from bad url", base + "init_from: ftp://x/y\n", "init_from", "not supported"},
		{"init_exclude without init_from", base + "init_exclude: [fc2.*]\n", "init_exclude", "needs init_from"},
		{"bad init_exclude glob", base + "init_from: a\ninit_exclude: ['fc[']\n", "init_exclude", "not a glob"},
		{"bad wire", base + "collective:\n  wire: fp8\n", "collective.wire", "allowed: f32, bf16"},
		{"negative bucket", base + "collective:\n  bucket_bytes: -1\n", "collective.bucket_bytes", "out of range"},
		{"empty", "", "", "empty document"},
		{"list", "- a\n- b\n", "", "mapping"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), Options{CheckPaths: true})
			if err == nil {
				t.Fatalf("Parse accepted %q", c.yaml)
			}
			var se *Error
			if !errors.As(err, &se) {
				t.Fatalf("error %T is not *jobspec.Error: %v", err, err)
			}
			found := false
			for _, p := range se.Problems {
				if p.Field == c.field && strings.Contains(p.Problem, c.hint) {
					found = true
				}
			}
			if !found {
				t.Errorf("error does not name field %q with hint %q:\n%v", c.field, c.hint, err)
			}
			if c.field != "" && !strings.Contains(err.Error(), "- "+c.field+" (line") && !strings.Contains(err.Error(), "- "+c.field+": ") {
				t.Errorf("message does not start a line with %q: %v", c.field, err)
			}
		})
	}
}

func TestParseReportsAllProblems(t *testing.T) {
	_, err := Parse([]byte("name: j\nmodel: nope\nworkers: 0\noptimizer:\n  lr: -1\ncheckpoint:\n  store: file:///x\n"), Options{})
	var se *Error
	if !errors.As(err, &se) || len(se.Problems) != 3 {
		t.Fatalf("want 3 problems (model, workers, optimizer.lr), got %v", err)
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("name: j\nmodel: cnn\n"))
	f.Add([]byte("{]"))
	// YAML aliases that expand (a "billion laughs" document).
	f.Add([]byte("a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\nc: &c [*b, *b, *b, *b]\nname: *c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, Options{DefaultStore: "file:///x"})
		if err == nil && (s.Name == "" || s.Model == "" || s.Workers < 1 || !(s.Optimizer.Lr > 0)) {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
	})
}

// A spec larger than MaxSpecBytes is refused before it is parsed.
func TestOversizedSpecIsRefused(t *testing.T) {
	big := []byte(good + "# " + strings.Repeat("x", MaxSpecBytes) + "\n")
	_, err := Parse(big, Options{DefaultStore: "file:///x"})
	if err == nil || !strings.Contains(err.Error(), "at most") {
		t.Fatalf("a %d-byte spec: %v; want a refusal naming the limit", len(big), err)
	}
}
