package versitygw

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// hide points the lookup at empty directories: nothing on $PATH, GOBIN and
// GOPATH fresh, no module proxy and a fresh module cache, so that an
// install fails at once instead of downloading.
func hide(t *testing.T) (gobin, gopath string) {
	t.Helper()
	gobin, gopath = t.TempDir(), t.TempDir()
	t.Setenv("PATH", t.TempDir())
	t.Setenv("GOBIN", gobin)
	t.Setenv("GOPATH", gopath)
	t.Setenv("GOMODCACHE", filepath.Join(gopath, "pkg", "mod"))
	t.Setenv("GOPROXY", "off")
	t.Setenv("GOTOOLCHAIN", "local")
	return gobin, gopath
}

func fake(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, exe)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// The binary is found in GOBIN, and in any GOPATH's bin, without
// installing.
func TestFindsInGOBINAndGOPATH(t *testing.T) {
	gobin, gopath := hide(t)
	want := fake(t, gobin)
	if p, err := findOrInstall(); err != nil || p != want {
		t.Errorf("in GOBIN: %q, %v; want %q", p, err, want)
	}

	t.Setenv("GOBIN", "")
	second := t.TempDir()
	t.Setenv("GOPATH", gopath+string(os.PathListSeparator)+second)
	want = fake(t, filepath.Join(second, "bin"))
	if p, err := findOrInstall(); err != nil || p != want {
		t.Errorf("in the second GOPATH's bin: %q, %v; want %q", p, err, want)
	}
}

// When it is nowhere, it is installed into GOBIN; an install that fails
// says which command failed.
func TestInstallFailureNamesTheCommand(t *testing.T) {
	gobin, _ := hide(t)
	_, err := findOrInstall()
	if err == nil {
		t.Fatal("installing with GOPROXY=off succeeded")
	}
	t.Log(err)
	for _, want := range []string{"GOBIN=" + gobin, "install " + Package + "@" + Version, "GOPROXY=off"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
}
