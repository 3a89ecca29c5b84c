package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The image every test looks at, built once in TestMain for linux/amd64:
// compiling the two binaries is most of the package's time.
var (
	testConfig  config
	testTag     = mustTag("ringmaster:9.8.7-test")
	built       *artifact
	archivePath string
	archiveSum  [32]byte
)

const (
	testVersion  = "v9.8.7-test"
	testRevision = "0123456789abcdef0123456789abcdef01234567"
)

var testEpoch = time.Unix(1700000000, 0).UTC()

func mustTag(s string) name.Tag {
	t, err := name.NewTag(s)
	if err != nil {
		panic(err)
	}
	return t
}

func TestMain(m *testing.M) {
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	tmp, err := os.MkdirTemp("", "image-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(tmp)
	wd, _ := os.Getwd()
	repo, err := findRepo(wd)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	testConfig = config{
		Repo:      repo,
		Platforms: []v1.Platform{{OS: "linux", Architecture: "amd64"}},
		Version:   testVersion,
		Revision:  testRevision,
		Source:    imageSource,
		Epoch:     testEpoch,
		CACerts:   defaultCACerts(),
	}
	start := time.Now()
	if built, err = build(context.Background(), testConfig); err != nil {
		fmt.Fprintln(os.Stderr, "building the test image:", err)
		return 1
	}
	archivePath = filepath.Join(tmp, "ringmaster.tar")
	if archiveSum, err = writeAndSum(archivePath, built); err != nil {
		fmt.Fprintln(os.Stderr, "writing the test image:", err)
		return 1
	}
	fmt.Fprintf(os.Stderr, "built the test image in %s\n", time.Since(start).Round(time.Millisecond))
	return m.Run()
}

func writeAndSum(path string, a *artifact) ([32]byte, error) {
	if err := writeArchiveFile(path, a, testTag, testEpoch); err != nil {
		return [32]byte{}, err
	}
	b, err := os.ReadFile(path)
	return sha256.Sum256(b), err
}

func TestConfig(t *testing.T) {
	img := built.Image
	if img == nil {
		t.Fatal("one platform built an index, want an image")
	}
	mt, err := img.MediaType()
	if err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("manifest media type = %q, %v; want %q", mt, err, types.OCIManifestSchema1)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	if got, want := c.Entrypoint, []string{"/usr/local/bin/coordinator"}; !slices.Equal(got, want) {
		t.Errorf("entrypoint = %q, want %q", got, want)
	}
	if c.User != "65532:65532" {
		t.Errorf("user = %q, want 65532:65532", c.User)
	}
	if c.WorkingDir != nonrootHome {
		t.Errorf("working dir = %q, want the user's home %s", c.WorkingDir, nonrootHome)
	}
	for _, e := range []string{
		"RINGMASTER_MNIST_DIR=/usr/share/ringmaster/mnist",
		"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt",
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
	} {
		if !slices.Contains(c.Env, e) {
			t.Errorf("env %q lacks %s", c.Env, e)
		}
	}
	for k, want := range map[string]string{
		"org.opencontainers.image.source":   imageSource,
		"org.opencontainers.image.version":  testVersion,
		"org.opencontainers.image.revision": testRevision,
	} {
		if got := c.Labels[k]; got != want {
			t.Errorf("label %s = %q, want %q", k, got, want)
		}
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform = %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if !cf.Created.Time.Equal(testEpoch) {
		t.Errorf("created = %s, want %s", cf.Created.Time, testEpoch)
	}
	if len(cf.History) != len(cf.RootFS.DiffIDs) {
		t.Errorf("%d history entries for %d layers", len(cf.History), len(cf.RootFS.DiffIDs))
	}
}

// tarEntry is a header of the image's file system, with the content of
// small files.
type tarEntry struct {
	hdr  *tar.Header
	data []byte
}

// imageFiles reads every layer's headers, checking the order and that a
// path in several layers (a shared parent) has the same metadata in each.
func imageFiles(t *testing.T, img v1.Image) map[string]tarEntry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]tarEntry{}
	for i, l := range layers {
		mt, _ := l.MediaType()
		if mt != types.OCILayer {
			t.Errorf("layer %d media type %q, want %q", i, mt, types.OCILayer)
		}
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		var prev string
		for {
			h, err := tr.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			p := "/" + strings.TrimSuffix(h.Name, "/")
			if prev != "" && compareTarPath(prev, p) >= 0 {
				t.Errorf("layer %d: %s after %s", i, p, prev)
			}
			prev = p
			if !h.ModTime.Equal(testEpoch) {
				t.Errorf("%s: time %s, want %s", p, h.ModTime, testEpoch)
			}
			if h.Uname != "" || h.Gname != "" {
				t.Errorf("%s: owner names %q:%q, want numbers only", p, h.Uname, h.Gname)
			}
			var data []byte
			if h.Size < 1<<20 {
				data, _ = io.ReadAll(tr)
			}
			if old, ok := files[p]; ok && (old.hdr.Mode != h.Mode || old.hdr.Uid != h.Uid || old.hdr.Gid != h.Gid || old.hdr.Typeflag != h.Typeflag) {
				t.Errorf("%s differs between layers: %o %d:%d and %o %d:%d", p, old.hdr.Mode, old.hdr.Uid, old.hdr.Gid, h.Mode, h.Uid, h.Gid)
			}
			files[p] = tarEntry{h, data}
		}
		rc.Close()
	}
	return files
}

func TestFiles(t *testing.T) {
	files := imageFiles(t, built.Image)
	const dir, reg = tar.TypeDir, tar.TypeReg
	for _, w := range []struct {
		path     string
		typ      byte
		mode     int64
		uid, gid int
	}{
		{"/usr/local/bin/coordinator", reg, 0o755, 0, 0},
		{"/usr/local/bin/worker", reg, 0o755, 0, 0},
		{"/usr/share/ringmaster/mnist/train-images-idx3-ubyte.gz", reg, 0o644, 0, 0},
		{"/usr/share/ringmaster/mnist/train-labels-idx1-ubyte.gz", reg, 0o644, 0, 0},
		{"/usr/share/ringmaster/mnist/t10k-images-idx3-ubyte.gz", reg, 0o644, 0, 0},
		{"/usr/share/ringmaster/mnist/t10k-labels-idx1-ubyte.gz", reg, 0o644, 0, 0},
		{"/etc/passwd", reg, 0o644, 0, 0},
		{"/etc/group", reg, 0o644, 0, 0},
		{"/etc/ssl/certs/ca-certificates.crt", reg, 0o644, 0, 0},
		{"/tmp", dir, 0o1777, 0, 0},
		{nonrootHome, dir, 0o700, 65532, 65532},
		{"/var/lib/ringmaster", dir, 0o755, 65532, 65532},
		{"/var/lib/ringmaster/data", dir, 0o700, 65532, 65532},
		{"/var/lib/ringmaster/checkpoints", dir, 0o755, 65532, 65532},
		{"/var/lib/ringmaster/worker", dir, 0o700, 65532, 65532},
		{"/var/cache/ringmaster", dir, 0o755, 65532, 65532},
		{"/usr", dir, 0o755, 0, 0},
		{"/var/lib", dir, 0o755, 0, 0},
	} {
		f, ok := files[w.path]
		if !ok {
			t.Errorf("%s is missing", w.path)
			continue
		}
		h := f.hdr
		if h.Typeflag != w.typ || h.Mode != w.mode || h.Uid != w.uid || h.Gid != w.gid {
			t.Errorf("%s: type %c mode %o owner %d:%d; want type %c mode %o owner %d:%d", w.path, h.Typeflag, h.Mode, h.Uid, h.Gid, w.typ, w.mode, w.uid, w.gid)
		}
	}
	if p := files["/etc/passwd"].data; !bytes.Contains(p, []byte("\nnonroot:x:65532:65532:nonroot:"+nonrootHome+":/sbin/nologin\n")) {
		t.Errorf("/etc/passwd has no entry for 65532:\n%s", p)
	}
	if g := files["/etc/group"].data; !bytes.Contains(g, []byte("\nnonroot:x:65532:\n")) {
		t.Errorf("/etc/group has no entry for 65532:\n%s", g)
	}
	ca, err := os.ReadFile(testConfig.CACerts)
	if err != nil {
		t.Fatal(err)
	}
	if got := files["/etc/ssl/certs/ca-certificates.crt"]; got.hdr == nil || got.hdr.Size != int64(len(ca)) {
		t.Errorf("the CA bundle is not %s", testConfig.CACerts)
	}
	// Nothing but what the image needs.
	for p, f := range files {
		if f.hdr.Typeflag != tar.TypeDir && f.hdr.Typeflag != tar.TypeReg {
			t.Errorf("%s: type %c, want only files and directories", p, f.hdr.Typeflag)
		}
	}
	if len(files) > 40 {
		t.Errorf("%d paths in the image, want fewer than 40", len(files))
	}
}

// TestReproducible builds the image again, go build included: the same
// inputs must give the same digest and the same archive bytes.
func TestReproducible(t *testing.T) {
	again, err := build(context.Background(), testConfig)
	if err != nil {
		t.Fatal(err)
	}
	d1, _ := built.Digest()
	d2, err := again.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if d1 != d2 {
		t.Fatalf("two builds gave %s and %s", d1, d2)
	}
	sum, err := writeAndSum(filepath.Join(t.TempDir(), "again.tar"), again)
	if err != nil {
		t.Fatal(err)
	}
	if sum != archiveSum {
		t.Errorf("two archives of %s differ", d1)
	}
	t.Logf("digest %s, twice", d1)
}

// TestInputsChangeDigest: the epoch, version and files are inputs.
func TestInputsChangeDigest(t *testing.T) {
	p := v1.Platform{OS: "linux", Architecture: "amd64"}
	c := fakeContents("amd64")
	digest := func(c contents, m meta) v1.Hash {
		t.Helper()
		layers, err := filesystem(c)
		if err != nil {
			t.Fatal(err)
		}
		img, err := newImage(p, layers, m)
		if err != nil {
			t.Fatal(err)
		}
		d, err := img.Digest()
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	m := meta{Version: "v1", Source: imageSource, Created: testEpoch}
	base := digest(c, m)
	if again := digest(fakeContents("amd64"), m); again != base {
		t.Errorf("same inputs: %s then %s", base, again)
	}
	later := m
	later.Created = testEpoch.Add(time.Second)
	other := m
	other.Version = "v2"
	changed := fakeContents("amd64")
	changed.Binaries["worker"] = []byte("another worker")
	for what, d := range map[string]v1.Hash{"epoch": digest(c, later), "version": digest(c, other), "binary": digest(changed, m)} {
		if d == base {
			t.Errorf("another %s gave the same digest %s", what, d)
		}
	}
}

// TestBinariesRun extracts the binaries from the image and runs them.
func TestBinariesRun(t *testing.T) {
	dir := t.TempDir()
	rc := mutate.Extract(built.Image)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir("/"+h.Name) != binDir {
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(h.Name)), b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct{ bin, usage string }{
		{"coordinator", "coordinator"},
		{"worker", "worker --coordinator ADDR"},
	} {
		t.Run(tc.bin, func(t *testing.T) {
			bin := filepath.Join(dir, tc.bin)
			f, err := elf.Open(bin)
			if err != nil {
				t.Fatalf("%s is not an ELF file: %v", tc.bin, err)
			}
			if f.Machine != elf.EM_X86_64 {
				t.Errorf("machine %s, want x86-64", f.Machine)
			}
			for _, p := range f.Progs {
				if p.Type == elf.PT_INTERP {
					t.Errorf("%s asks for a dynamic loader; want a static binary", tc.bin)
				}
			}
			f.Close()

			// Stamped as the repository stamps a release. -trimpath
			// keeps -ldflags out of the build info, so look for the
			// stamp's value itself.
			data, err := os.ReadFile(bin)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Contains(data, []byte(testVersion)) {
				t.Errorf("%s does not hold the version stamp %s", tc.bin, testVersion)
			}
			out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
			if err != nil {
				t.Fatalf("go version -m: %v\n%s", err, out)
			}
			for _, want := range []string{"CGO_ENABLED=0", "GOOS=linux", "GOARCH=amd64", "-trimpath=true"} {
				if !bytes.Contains(out, []byte(want)) {
					t.Errorf("go version -m lacks %q:\n%s", want, out)
				}
			}

			if !runsHere() {
				t.Skip("this machine does not run linux/amd64 binaries")
			}
			out, err = exec.Command(bin, "--help").CombinedOutput()
			if err != nil {
				t.Fatalf("%s --help: %v\n%s", tc.bin, err, out)
			}
			if !bytes.Contains(out, []byte("Usage:")) || !bytes.Contains(out, []byte(tc.usage)) {
				t.Errorf("%s --help printed no usage naming %q:\n%s", tc.bin, tc.usage, out)
			}
			// The commands have no --version yet; once one does, its
			// answer must be the stamp.
			out, err = exec.Command(bin, "--version").CombinedOutput()
			if err == nil && !bytes.Contains(out, []byte(testVersion)) {
				t.Errorf("%s --version = %q, want %s", tc.bin, out, testVersion)
			}
		})
	}
}

// TestArchive reads the archive back both ways it offers: as an OCI
// layout, and as docker save's manifest.json.
func TestArchive(t *testing.T) {
	want, _ := built.Digest()
	wantCfg, _ := built.Image.ConfigName()

	viaDocker, err := tarball.ImageFromPath(archivePath, &testTag)
	if err != nil {
		t.Fatalf("manifest.json: %v", err)
	}
	if got, err := viaDocker.ConfigName(); err != nil || got != wantCfg {
		t.Errorf("manifest.json's config = %s, %v; want %s", got, err, wantCfg)
	}
	dockerLayers, err := viaDocker.Layers()
	if err != nil {
		t.Fatal(err)
	}
	ourLayers, _ := built.Image.Layers()
	if len(dockerLayers) != len(ourLayers) {
		t.Fatalf("manifest.json has %d layers, want %d", len(dockerLayers), len(ourLayers))
	}
	for i := range ourLayers {
		a, _ := ourLayers[i].DiffID()
		b, err := dockerLayers[i].DiffID()
		if err != nil || a != b {
			t.Errorf("layer %d: %s via manifest.json (%v), want %s", i, b, err, a)
		}
	}

	dir := t.TempDir()
	untar(t, archivePath, dir)
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Manifests) != 1 {
		t.Fatalf("index.json lists %d manifests, want 1", len(m.Manifests))
	}
	d := m.Manifests[0]
	if d.Digest != want || d.MediaType != types.OCIManifestSchema1 {
		t.Errorf("index.json names %s %s, want %s %s", d.MediaType, d.Digest, types.OCIManifestSchema1, want)
	}
	if got := d.Annotations[annotationContainerdName]; got != "docker.io/library/ringmaster:9.8.7-test" {
		t.Errorf("%s = %q", annotationContainerdName, got)
	}
	if got := d.Annotations[annotationRefName]; got != "9.8.7-test" {
		t.Errorf("%s = %q", annotationRefName, got)
	}
	img, err := idx.Image(d.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validateBlobs(img); err != nil {
		t.Error(err)
	}
}

// validateBlobs reads every blob of img, which checks its digest.
func validateBlobs(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		rc, err := l.Compressed()
		if err != nil {
			return err
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			return err
		}
	}
	_, err = img.RawConfigFile()
	return err
}

func untar(t *testing.T, archive, dir string) {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var names []string
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		p := filepath.Join(dir, filepath.FromSlash(h.Name))
		if h.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if !slices.IsSorted(names) {
		t.Errorf("archive entries are not sorted: %q", names)
	}
}

func fakeContents(arch string) contents {
	return contents{
		Binaries: map[string][]byte{"coordinator": []byte("coordinator for " + arch), "worker": []byte("worker for " + arch)},
		MNIST: map[string][]byte{
			"train-images-idx3-ubyte.gz": []byte("a"), "train-labels-idx1-ubyte.gz": []byte("b"),
			"t10k-images-idx3-ubyte.gz": []byte("c"), "t10k-labels-idx1-ubyte.gz": []byte("d"),
		},
		CACerts: []byte("-----BEGIN CERTIFICATE-----\n"),
	}
}

// TestMultiArch assembles an index from stand-in binaries (compiling for
// arm64 would double the package's time): one image per platform, the
// platform in the index, the MNIST layer shared, no manifest.json.
func TestMultiArch(t *testing.T) {
	platforms := []v1.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}}
	var images []v1.Image
	for _, p := range platforms {
		layers, err := filesystem(fakeContents(p.Architecture))
		if err != nil {
			t.Fatal(err)
		}
		img, err := newImage(p, layers, meta{Version: testVersion, Source: imageSource, Created: testEpoch})
		if err != nil {
			t.Fatal(err)
		}
		images = append(images, img)
	}
	a := &artifact{Index: newIndex(images, platforms)}
	m, err := a.Index.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIImageIndex || len(m.Manifests) != 2 {
		t.Fatalf("index %s with %d manifests, want %s with 2", m.MediaType, len(m.Manifests), types.OCIImageIndex)
	}
	var mnistLayers []v1.Hash
	for i, d := range m.Manifests {
		if d.Platform == nil || d.Platform.Architecture != platforms[i].Architecture || d.Platform.OS != "linux" {
			t.Errorf("manifest %d: platform %v, want %v", i, d.Platform, platforms[i])
		}
		img, err := a.Index.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		cf, _ := img.ConfigFile()
		if cf.Architecture != platforms[i].Architecture {
			t.Errorf("manifest %d: config for %s, want %s", i, cf.Architecture, platforms[i].Architecture)
		}
		ls, _ := img.Layers()
		d1, _ := ls[1].Digest()
		mnistLayers = append(mnistLayers, d1)
	}
	if mnistLayers[0] != mnistLayers[1] {
		t.Errorf("MNIST layers differ between platforms: %s", mnistLayers)
	}

	path := filepath.Join(t.TempDir(), "multi.tar")
	if err := writeArchiveFile(path, a, testTag, testEpoch); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	untar(t, path, dir)
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
		t.Error("a multi-platform archive has docker save's manifest.json, which holds one platform")
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	top, _ := idx.IndexManifest()
	want, _ := a.Digest()
	if len(top.Manifests) != 1 || top.Manifests[0].Digest != want || top.Manifests[0].MediaType != types.OCIImageIndex {
		t.Fatalf("index.json = %+v, want the index %s", top.Manifests, want)
	}
	inner, err := idx.ImageIndex(want)
	if err != nil {
		t.Fatal(err)
	}
	im, _ := inner.IndexManifest()
	for _, d := range im.Manifests {
		img, err := inner.Image(d.Digest)
		if err != nil {
			t.Fatal(err)
		}
		if err := validateBlobs(img); err != nil {
			t.Error(err)
		}
	}
}

func TestParsePlatform(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" for an error
	}{
		{"linux/amd64", "amd64"},
		{" linux/arm64", "arm64"},
		{"linux/arm/v7", ""},
		{"darwin/arm64", ""},
		{"amd64", ""},
	} {
		p, err := parsePlatform(tc.in)
		if got := p.Architecture; (err != nil) != (tc.want == "") || got != tc.want {
			t.Errorf("parsePlatform(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestTarOrder(t *testing.T) {
	es := withParents([]entry{file("/a-b/c", 0o644, nil), file("/a/b/c", 0o644, nil), dir("/tmp")})
	var got []string
	for _, e := range es {
		got = append(got, e.Path)
	}
	want := []string{"/a", "/a/b", "/a/b/c", "/a-b", "/a-b/c", "/tmp"}
	if !slices.Equal(got, want) {
		t.Errorf("order %q, want %q", got, want)
	}
}

// TestRootfsDir writes the file system as the Dockerfile's build stage
// does and compares it with the layers.
func TestRootfsDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("--rootfs sets owners and needs root")
	}
	layers, err := filesystem(fakeContents("amd64"))
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(t.TempDir(), "rootfs") // not there yet, as in the Dockerfile
	if err := writeDir(root, layers, testEpoch); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, l := range layers {
		for _, e := range l.Entries {
			n++
			p := filepath.Join(root, e.Path)
			st, err := os.Lstat(p)
			if err != nil {
				t.Error(err)
				continue
			}
			if got := st.Mode() & (fs.ModeType | fs.ModePerm | fs.ModeSticky); got != e.Mode {
				t.Errorf("%s: mode %s, want %s", e.Path, got, e.Mode)
			}
			uid, gid := owner(st)
			if uid != e.UID || gid != e.GID {
				t.Errorf("%s: owner %d:%d, want %d:%d", e.Path, uid, gid, e.UID, e.GID)
			}
			if !st.ModTime().Equal(testEpoch) {
				t.Errorf("%s: time %s, want %s", e.Path, st.ModTime(), testEpoch)
			}
		}
	}
	var walked int
	filepath.WalkDir(root, func(string, fs.DirEntry, error) error { walked++; return nil })
	// WalkDir counts root; layers repeat shared parents (/usr).
	if walked-1 > n {
		t.Errorf("%d paths written, more than the %d entries", walked-1, n)
	}
}

// runsHere says whether this machine runs the linux/amd64 binaries the
// test image holds.
func runsHere() bool { return runtime.GOOS == "linux" && runtime.GOARCH == "amd64" }

// TestFlags: mistakes are refused before anything is built.
func TestFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "nothing to do"},
		{[]string{"--out", "x.tar", "--platform", "linux/s390x"}, "linux/s390x"},
		{[]string{"--rootfs", "d", "--platform", "linux/amd64,linux/arm64"}, "one platform"},
		{[]string{"--out", "x.tar", "extra"}, "unexpected argument"},
	} {
		err := run(context.Background(), tc.args, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %q = %v, want an error with %q", tc.args, err, tc.want)
		}
	}
}
