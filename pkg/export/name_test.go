package export_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/ringmaster/ringmaster/pkg/export"
)

func TestFileName(t *testing.T) {
	for job, want := range map[string]string{
		"gpt-go-pretrain-x1":    "gpt-go-pretrain-x1-step-7.safetensors",
		"../../etc/cron.d/evil": "etc-cron.d-evil-step-7.safetensors",
		"/abs/path":             "abs-path-step-7.safetensors",
		"":                      "model-step-7.safetensors",
		"..":                    "model-step-7.safetensors",
		"a b\x00c\nd":           "a-b-c-d-step-7.safetensors",
	} {
		if got := export.FileName(job, 7); got != want {
			t.Errorf("FileName(%q) = %q, want %q", job, got, want)
		}
	}
}

// FuzzFileName: whatever a checkpoint's metadata says, the export's
// default name is one plain file name in the current directory.
func FuzzFileName(f *testing.F) {
	for _, s := range []string{"job", "../x", "a/b", "..", ".hidden", "-rf", strings.Repeat("x", 500), "é/\\:*?"} {
		f.Add(s, int64(3))
	}
	f.Fuzz(func(t *testing.T, job string, step int64) {
		name := export.FileName(job, step)
		if filepath.Base(name) != name || strings.ContainsAny(name, "/\\\x00") || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "-") {
			t.Fatalf("FileName(%q) = %q is not a plain file name", job, name)
		}
		if len(name) > 160 {
			t.Fatalf("FileName(%q) is %d bytes long", job, len(name))
		}
	})
}
