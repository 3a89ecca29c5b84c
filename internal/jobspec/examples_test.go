package jobspec

import (
	"os"
	"path/filepath"
	"testing"
)

// Every example job spec in examples/ is valid, and there is one for every
// model.
func TestExamplesParse(t *testing.T) {
	files, err := filepath.Glob("../../examples/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no examples found: %v", err)
	}
	models := map[string]bool{}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		s, err := Parse(data, Options{DefaultStore: "file:///var/lib/ringmaster/checkpoints"})
		if err != nil {
			t.Errorf("%s: %v", filepath.Base(f), err)
			continue
		}
		models[s.Model] = true
	}
	for _, m := range knownModels {
		if !models[m] {
			t.Errorf("no example trains the %s model", m)
		}
	}
}
