package jobspec

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// noEndpointEnv makes an s3:// URL without endpoint= mean AWS S3, whatever
// the environment of the test.
func noEndpointEnv(t *testing.T) {
	t.Setenv("AWS_ENDPOINT_URL_S3", "")
	t.Setenv("AWS_ENDPOINT_URL", "")
}

var testPolicy = Policy{
	FileRoots:    []string{"/srv/ckpt"},
	S3Endpoints:  []string{"minio:9000", "s3.example.com:443/team-a"},
	DatasetRoots: []string{"/data"},
}

// problem returns the problem Parse reports for field, or fails.
func problem(t *testing.T, err error, field string) string {
	t.Helper()
	var se *Error
	if !errors.As(err, &se) {
		t.Fatalf("error %T is not *jobspec.Error: %v", err, err)
	}
	for _, p := range se.Problems {
		if p.Field == field {
			return p.Problem
		}
	}
	t.Fatalf("no problem with %s in:\n%v", field, err)
	return ""
}

func TestPolicyRefuses(t *testing.T) {
	noEndpointEnv(t)
	const cnn = "name: j\nmodel: cnn\n"
	const gpt = "name: j\nmodel: gpt\ncheckpoint: {store: file:///srv/ckpt}\n"
	cases := []struct {
		name, yaml string
		field      string
		hint       string // part of the problem
	}{
		{"file store outside the roots", cnn + "checkpoint: {store: file:///var/lib/other}\n", "checkpoint.store", "outside"},
		{"file store escaping with ..", cnn + "checkpoint: {store: file:///srv/ckpt/../../etc}\n", "checkpoint.store", "outside"},
		{"file store escaping with escaped ..", cnn + "checkpoint: {store: file:///srv/ckpt/%2e%2e/etc}\n", "checkpoint.store", "outside"},
		{"file store in a sibling sharing the prefix", cnn + "checkpoint: {store: file:///srv/ckpt-other}\n", "checkpoint.store", "outside"},
		{"file store above the root", cnn + "checkpoint: {store: file:///srv}\n", "checkpoint.store", "outside"},
		{"resume URL outside the roots", cnn + "resume: file:///home/u/ckpt/j-1/step-000000000010\n", "resume", "outside"},
		{"init_from URL outside the roots", cnn + "init_from: file:///home/u/ckpt/j-1\n", "init_from", "outside"},
		{"S3 endpoint not allowed", cnn + "checkpoint: {store: 's3://b/p?endpoint=evil.example:9000'}\n", "checkpoint.store", "evil.example:9000"},
		{"S3 endpoint on another port", cnn + "checkpoint: {store: 's3://b/p?endpoint=minio:9001'}\n", "checkpoint.store", "not allowed"},
		{"S3 endpoint by default (AWS)", cnn + "checkpoint: {store: 's3://b/p'}\n", "checkpoint.store", "s3.amazonaws.com:443"},
		{"S3 bucket not allowed", cnn + "checkpoint: {store: 's3://team-b/p?endpoint=s3.example.com:443'}\n", "checkpoint.store", `bucket "team-b" is not allowed`},
		{"S3 bucket on the default port", cnn + "checkpoint: {store: 's3://team-b/p?endpoint=s3.example.com'}\n", "checkpoint.store", "not allowed"},
		{"S3 resume not allowed", cnn + "resume: 's3://b/j/step-000000000010?endpoint=evil:1'\n", "resume", "not allowed"},
		{"credentials file still refused", cnn + "checkpoint: {store: 's3://b/p?endpoint=minio:9000&credentials_file=/etc/shadow'}\n", "checkpoint.store", "credentials_file= is not allowed"},
		{"secrets in the URL still refused", cnn + "checkpoint: {store: 's3://k:s@b/p?endpoint=minio:9000'}\n", "checkpoint.store", "AWS_ACCESS_KEY_ID"},
		{"mnist path outside the roots", cnn + "checkpoint: {store: file:///srv/ckpt}\ndataset: {path: /etc}\n", "dataset.path", "outside"},
		{"mnist path in a sibling sharing the prefix", cnn + "checkpoint: {store: file:///srv/ckpt}\ndataset: {path: /database/mnist}\n", "dataset.path", "outside"},
		{"mnist path escaping with ..", cnn + "checkpoint: {store: file:///srv/ckpt}\ndataset: {path: /data/../etc}\n", "dataset.path", "outside"},
		{"glob outside the roots", gpt + "dataset: {path: /etc/*.bin}\n", "dataset.path", "outside"},
		{"glob whose fixed part is a sibling prefix", gpt + "dataset: {path: /data*/x_*.bin}\n", "dataset.path", "outside"},
		{"glob escaping with ..", gpt + "dataset: {path: /data/../etc/*.bin}\n", "dataset.path", "outside"},
		{"glob escaping with .. after a wildcard", gpt + "dataset: {path: /data/*/../../etc/passwd}\n", "dataset.path", "outside"},
		{"validation glob outside the roots", gpt + "dataset: {path: /data/x_*.bin, val_path: /tmp/v_*.bin}\n", "dataset.val_path", "outside"},
		{"file:// dataset outside the roots", gpt + "dataset: {path: 'file:///etc/x_*.bin'}\n", "dataset.path", "outside"},
		{"s3 dataset endpoint not allowed", gpt + "dataset: {path: 's3://b/x_*.bin?endpoint=evil:9000'}\n", "dataset.path", "not allowed"},
		{"s3 dataset bucket not allowed", gpt + "dataset: {path: 's3://team-b/x_*.bin?endpoint=s3.example.com:443'}\n", "dataset.path", "not allowed"},
		{"s3 dataset credentials still refused", gpt + "dataset: {path: 's3://b/x_*.bin?endpoint=minio:9000&profile=prod'}\n", "dataset.path", "profile= is not allowed"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := testPolicy
			_, err := Parse([]byte(c.yaml), Options{CheckPaths: true, Policy: &p})
			if err == nil {
				t.Fatalf("Parse accepted %q", c.yaml)
			}
			if got := problem(t, err, c.field); !strings.Contains(got, c.hint) {
				t.Errorf("%s: %q does not say %q", c.field, got, c.hint)
			}
		})
	}
}

// A refused location names the server flag that allows it, and an empty
// list allows nothing of its kind.
func TestPolicyErrorsNameTheFlag(t *testing.T) {
	noEndpointEnv(t)
	const cnn = "name: j\nmodel: cnn\n"
	const gpt = "name: j\nmodel: gpt\ncheckpoint: {store: 's3://b/c?endpoint=minio:9000'}\n"
	cases := []struct {
		name   string
		policy Policy
		yaml   string
		field  string
		flag   string
	}{
		{"file store, no roots", Policy{}, cnn + "checkpoint: {store: file:///srv/ckpt}\n", "checkpoint.store", FlagFileRoot},
		{"file store, outside", testPolicy, cnn + "checkpoint: {store: file:///x}\n", "checkpoint.store", FlagFileRoot},
		{"s3 store, no endpoints", Policy{}, cnn + "checkpoint: {store: 's3://b/p?endpoint=minio:9000'}\n", "checkpoint.store", FlagS3Endpoint},
		{"s3 store, not allowed", testPolicy, cnn + "checkpoint: {store: 's3://b/p?endpoint=m:1'}\n", "checkpoint.store", FlagS3Endpoint + " m:1/b"},
		{"dataset, no roots", Policy{S3Endpoints: []string{"minio:9000"}}, gpt + "dataset: {path: /data/x_*.bin}\n", "dataset.path", FlagDatasetRoot},
		{"dataset, outside", testPolicy, gpt + "dataset: {path: /x/x_*.bin}\n", "dataset.path", FlagDatasetRoot},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Parse([]byte(c.yaml), Options{Policy: &c.policy})
			if got := problem(t, err, c.field); !strings.Contains(got, c.flag) {
				t.Errorf("%s: %q does not name %q", c.field, got, c.flag)
			}
		})
	}
}

func TestPolicyAllows(t *testing.T) {
	noEndpointEnv(t)
	const cnn = "name: j\nmodel: cnn\n"
	const gpt = "name: j\nmodel: gpt\ncheckpoint: {store: file:///srv/ckpt}\n"
	for _, y := range []string{
		cnn + "checkpoint: {store: file:///srv/ckpt}\n",
		cnn + "checkpoint: {store: file:///srv/ckpt/team/../runs}\n",
		cnn + "checkpoint: {store: 'file:///srv/ckpt/runs?fsync=false'}\n",
		cnn + "checkpoint: {store: 's3://any/p?endpoint=minio:9000&path_style=true'}\n",
		cnn + "checkpoint: {store: 's3://any/p?endpoint=http://MINIO:9000'}\n",
		cnn + "checkpoint: {store: 's3://team-a/p?endpoint=s3.example.com:443'}\n",
		cnn + "checkpoint: {store: 's3://team-a/p?endpoint=s3.example.com'}\n",
		cnn + "checkpoint: {store: file:///srv/ckpt}\nresume: file:///srv/ckpt/j-1/step-000000000010\n",
		cnn + "checkpoint: {store: file:///srv/ckpt}\ninit_from: 's3://team-a/j-1/step-000000000010?endpoint=https://s3.example.com'\n",
		cnn + "checkpoint: {store: file:///srv/ckpt}\ndataset: {path: /data/mnist}\n",
		cnn + "checkpoint: {store: file:///srv/ckpt}\ndataset: {path: /data}\n",
		gpt + "dataset: {path: /data/go/go_train_*.bin, val_path: /data/go/go_val_*.bin}\n",
		gpt + "dataset: {path: '/data/go_train_[0-9]*.bin'}\n",
		gpt + "dataset: {path: 'file:///data/go_train_*.bin'}\n",
		gpt + "dataset: {path: 's3://corpus/go_train_*.bin?endpoint=minio:9000'}\n",
	} {
		p := testPolicy
		if _, err := Parse([]byte(y), Options{Policy: &p}); err != nil {
			t.Errorf("Parse(%q): %v", y, err)
		}
	}
}

// With a policy, only allowed locations are probed: a path outside it gets
// the same answer whether it exists or not, and a glob outside it is not
// expanded.
func TestPolicyDoesNotProbeOutside(t *testing.T) {
	inside, outside := t.TempDir(), t.TempDir()
	for _, d := range []string{inside, outside} {
		if err := os.WriteFile(filepath.Join(d, "go_train_000.bin"), []byte("x"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p := &Policy{FileRoots: []string{inside}, DatasetRoots: []string{inside}}
	spec := func(model, path string) []byte {
		return []byte("name: j\nmodel: " + model + "\ncheckpoint: {store: 'file://" + inside + "'}\ndataset: {path: " + path + "}\n")
	}
	parse := func(y []byte) error {
		_, err := Parse(y, Options{CheckPaths: true, Policy: p})
		return err
	}
	if err := parse(spec("gpt", filepath.Join(inside, "go_train_*.bin"))); err != nil {
		t.Fatalf("a glob inside the roots that matches: %v", err)
	}
	if got := problem(t, parse(spec("gpt", filepath.Join(inside, "nope_*.bin"))), "dataset.path"); !strings.Contains(got, "matches no shard") {
		t.Errorf("a glob inside the roots that matches nothing: %q", got)
	}
	for _, c := range []struct{ model, exists, missing string }{
		{"gpt", filepath.Join(outside, "go_train_*.bin"), filepath.Join(outside, "nope_*.bin")},
		{"cnn", outside, filepath.Join(outside, "nope")},
	} {
		a := problem(t, parse(spec(c.model, c.exists)), "dataset.path")
		b := problem(t, parse(spec(c.model, c.missing)), "dataset.path")
		if strings.ReplaceAll(a, c.exists, "P") != strings.ReplaceAll(b, c.missing, "P") {
			t.Errorf("%s: the answers tell an existing path from a missing one:\n%s\n%s", c.model, a, b)
		}
		if !strings.Contains(a, "outside") || strings.Contains(a, "go_train_000") {
			t.Errorf("%s: %q", c.model, a)
		}
	}
}

func TestPolicyValidate(t *testing.T) {
	for _, c := range []struct {
		p    Policy
		want string // empty: valid
	}{
		{testPolicy, ""},
		{Policy{}, ""},
		{Policy{FileRoots: []string{"rel"}}, FlagFileRoot},
		{Policy{DatasetRoots: []string{"data"}}, FlagDatasetRoot},
		{Policy{S3Endpoints: []string{"minio"}}, FlagS3Endpoint},
		{Policy{S3Endpoints: []string{"http://minio:9000"}}, FlagS3Endpoint},
		{Policy{S3Endpoints: []string{"minio:9000/a/b"}}, FlagS3Endpoint},
		{Policy{S3Endpoints: []string{"[::1]:9000/bucket"}}, ""},
	} {
		err := c.p.Validate()
		if (err == nil) != (c.want == "") || err != nil && !strings.Contains(err.Error(), c.want) {
			t.Errorf("Validate(%+v) = %v, want %q", c.p, err, c.want)
		}
	}
}

func TestGlobRoot(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"/data/go_train_*.bin", "/data"},
		{"/data/x.bin", "/data/x.bin"},
		{"/data*/x.bin", "/"},
		{"/data/a*/b/*.bin", "/data"},
		{"/data/sub/../x_?.bin", "/data"},
		{"/data/*/../../etc/passwd", "/etc/passwd"},
		{"/data/[ab]/x.bin", "/data"},
		{`/data/\*.bin`, "/data"},
	} {
		if got := globRoot(c.in); got != c.want {
			t.Errorf("globRoot(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// AllowStore and AllowDataset widen a policy to exactly the location.
func TestPolicyAllowWidens(t *testing.T) {
	noEndpointEnv(t)
	p := &Policy{}
	for _, s := range []string{"file:///srv/ckpt", "s3://bkt/runs?endpoint=minio&tls=false"} {
		if err := p.AllowStore(s); err != nil {
			t.Fatal(err)
		}
		if err := p.CheckStore(s); err != nil {
			t.Errorf("CheckStore(%q) after AllowStore: %v", s, err)
		}
	}
	if err := p.AllowDataset("/corpus/go_train_*.bin"); err != nil {
		t.Fatal(err)
	}
	if err := p.checkDataset("/corpus/go_val_*.bin"); err != nil {
		t.Errorf("checkDataset after AllowDataset: %v", err)
	}
	for _, s := range []string{"file:///srv", "s3://other/runs?endpoint=minio&tls=false", "s3://bkt/runs?endpoint=minio"} {
		if p.CheckStore(s) == nil {
			t.Errorf("CheckStore(%q) allowed", s)
		}
	}
	if p.checkDataset("/corpus2/x.bin") == nil {
		t.Error("a sibling of an allowed dataset directory is allowed")
	}
	if want := []string{"minio:80/bkt"}; strings.Join(p.S3Endpoints, ",") != strings.Join(want, ",") {
		t.Errorf("S3Endpoints = %v, want %v", p.S3Endpoints, want)
	}
}
