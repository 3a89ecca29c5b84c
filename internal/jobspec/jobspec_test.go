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

func TestParseRefuses(t *testing.T) {
	base := "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n"
	cases := []struct {
		name, yaml string
		field      string // the field the error must name
		hint       string // part of the fix the error must suggest
	}{
		{"yaml syntax", "name: j\nmodel: [cnn\n", "", "YAML syntax error"},
		{"unknown model", "name: j\nmodel: resnet\n", "model", "allowed models: cnn"},
		{"missing model", "name: j\n", "model", "required"},
		{"negative lr", base + "optimizer:\n  lr: -0.1\n", "optimizer.lr", "greater than 0"},
		{"zero lr", base + "optimizer:\n  lr: 0\n", "optimizer.lr", "greater than 0"},
		{"zero workers", base + "workers: 0\n", "workers", "between 1 and"},
		{"missing dataset", base + "dataset:\n  path: /nonexistent/mnist\n", "dataset.path", "does not exist"},
		{"relative dataset", base + "dataset:\n  path: data/mnist\n", "dataset.path", "absolute path"},
		{"unknown dataset", base + "dataset:\n  name: cifar\n", "dataset.name", "allowed datasets: mnist"},
		{"unknown field", base + "learning_rate: 0.1\n", "learning_rate", "allowed fields here"},
		{"unknown nested field", base + "optimizer:\n  lrr: 0.1\n", "optimizer.lrr", "allowed fields here: lr, min_lr_ratio, momentum"},
		{"wrong type", base + "workers: two\n", "", "wrong type"},
		{"unknown schedule", base + "optimizer:\n  schedule: step\n", "optimizer.schedule", "allowed: constant, cosine"},
		{"negative warmup", base + "optimizer:\n  warmup_steps: -1\n", "optimizer.warmup_steps", "0 or more"},
		{"steps and epochs", base + "steps: 10\nepochs: 2\n", "steps", "either steps or epochs"},
		{"bad store", "name: j\nmodel: cnn\ncheckpoint:\n  store: ftp://x/y\n", "checkpoint.store", "not supported"},
		{"s3 store without bucket", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3:///p\n", "checkpoint.store", "no bucket"},
		{"s3 store with a typo", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3://b/p?endpont=h:1\n", "checkpoint.store", "allowed: endpoint"},
		{"s3 store with secrets", "name: j\nmodel: cnn\ncheckpoint:\n  store: s3://k:s@b/p\n", "checkpoint.store", "AWS_ACCESS_KEY_ID"},
		{"unknown if_busy", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n  if_busy: queue\n", "checkpoint.if_busy", "wait or skip"},
		{"unknown checksum", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n  checksum: md5\n", "checkpoint.checksum", "crc32c, sha256"},
		{"negative keep_every", "name: j\nmodel: cnn\ncheckpoint:\n  store: file:///tmp/c\n  keep_every: -1\n", "checkpoint.keep_every", "0 (none)"},
		{"relative file store", "name: j\nmodel: cnn\ncheckpoint:\n  store: file://rel/path\n", "checkpoint.store", "absolute path"},
		{"no store", "name: j\nmodel: cnn\n", "checkpoint.store", "file:///"},
		{"bad name", "name: 'a b'\nmodel: cnn\n", "name", "letters, digits"},
		{"bad timeout", base + "collective_timeout: soon\n", "collective_timeout", "duration"},
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
	f.Fuzz(func(t *testing.T, data []byte) {
		s, err := Parse(data, Options{DefaultStore: "file:///x"})
		if err == nil && (s.Name == "" || s.Model == "" || s.Workers < 1 || !(s.Optimizer.Lr > 0)) {
			t.Fatalf("accepted an invalid spec: %+v", s)
		}
	})
}
