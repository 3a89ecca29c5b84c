package cli

import (
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/ringmaster/ringmaster/internal/jobspec"
)

// `run` allows, besides its flags, the working directory, its data
// directory and what the spec it runs names, so that the documented
// commands (a corpus in /tmp, the default store) keep working; it allows
// nothing else.
func TestRunPolicyAllowsTheSpecItRuns(t *testing.T) {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	dataDir := filepath.Join(t.TempDir(), "data")
	spec := []byte("name: g\nmodel: gpt\ndataset:\n  path: /tmp/ringmaster-corpus/go_train_*.bin\n  val_path: /tmp/ringmaster-corpus/go_val_*.bin\n" +
		"init_from: 'file:///srv/old/job-1/step-000000000010'\n")
	l := localPolicy{jobspec.Policy{S3Endpoints: []string{"minio:9000"}, DatasetRoots: []string{"/mnt/data"}}}
	p, err := l.widen(dataDir, spec)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(); err != nil {
		t.Fatal(err)
	}
	if want := []string{"/mnt/data", wd, dataDir, "/tmp/ringmaster-corpus"}; !slices.Equal(p.DatasetRoots, want) {
		t.Errorf("dataset roots %v, want %v", p.DatasetRoots, want)
	}
	if want := []string{wd, dataDir, "/srv/old/job-1/step-000000000010"}; !slices.Equal(p.FileRoots, want) {
		t.Errorf("file roots %v, want %v", p.FileRoots, want)
	}
	if len(l.DatasetRoots) != 1 || !slices.Equal(p.S3Endpoints, []string{"minio:9000"}) {
		t.Errorf("flags changed or lost: %+v -> %+v", l.Policy, p)
	}
	if _, err := jobspec.Parse(spec, jobspec.Options{DefaultStore: "file://" + filepath.Join(dataDir, "checkpoints"), Policy: &p}); err != nil {
		t.Errorf("the spec run allows: %v", err)
	}
	if _, err := jobspec.Parse([]byte("name: g\nmodel: cnn\ncheckpoint: {store: 'file:///srv/other'}\n"), jobspec.Options{Policy: &p}); err == nil {
		t.Error("a store the spec does not name is allowed")
	}

	// A spec that does not parse widens nothing; the coordinator reports it.
	if p, err := l.widen(dataDir, []byte("name: [")); err != nil || len(p.DatasetRoots) != 3 {
		t.Errorf("unparsable spec: %+v, %v", p, err)
	}
}
