package main

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// artifact is what a build gives: one image, or an index of images.
type artifact struct {
	Image v1.Image      // one platform
	Index v1.ImageIndex // several
}

// Digest is what a registry will call the pushed image (or index).
func (a *artifact) Digest() (v1.Hash, error) {
	if a.Index != nil {
		return a.Index.Digest()
	}
	return a.Image.Digest()
}

// images are the artifact's images, in index order.
func (a *artifact) images() ([]v1.Image, error) {
	if a.Index == nil {
		return []v1.Image{a.Image}, nil
	}
	m, err := a.Index.IndexManifest()
	if err != nil {
		return nil, err
	}
	var out []v1.Image
	for _, d := range m.Manifests {
		img, err := a.Index.Image(d.Digest)
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// Annotations that loaders read a name from: containerd (and Docker with
// its containerd store) the first, the OCI layout spec the second.
const (
	annotationContainerdName = "io.containerd.image.name"
	annotationRefName        = "org.opencontainers.image.ref.name"
)

// blob is one file under blobs/sha256 of the archive.
type blob struct {
	digest v1.Hash
	size   int64
	open   func() (io.ReadCloser, error)
}

// writeArchive writes the artifact as an OCI image layout in a tar stream
// (oci-layout, index.json, blobs/sha256/...), entries sorted and timed at
// mtime. For one platform it adds the manifest.json of `docker save`,
// pointing at the same blobs, so that every Docker release loads it, as
// `docker save` itself does since Docker 25. An index is for Docker 25 or
// later, containerd, podman and skopeo.
func writeArchive(w io.Writer, a *artifact, tag name.Tag, mtime time.Time) error {
	blobs := map[string]blob{}
	add := func(b blob) { blobs[b.digest.Hex] = b }
	raw := func(b []byte) blob {
		d, n, _ := v1.SHA256(bytes.NewReader(b))
		return blob{digest: d, size: n, open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil }}
	}

	var top v1.Descriptor
	if a.Index != nil {
		m, err := a.Index.RawManifest()
		if err != nil {
			return err
		}
		top = v1.Descriptor{MediaType: types.OCIImageIndex}
		b := raw(m)
		top.Digest, top.Size = b.digest, b.size
		add(b)
	}
	imgs, err := a.images()
	if err != nil {
		return err
	}
	var docker []dockerManifest
	for _, img := range imgs {
		m, err := img.RawManifest()
		if err != nil {
			return err
		}
		mb := raw(m)
		add(mb)
		if a.Index == nil {
			top = v1.Descriptor{MediaType: types.OCIManifestSchema1, Digest: mb.digest, Size: mb.size}
		}
		c, err := img.RawConfigFile()
		if err != nil {
			return err
		}
		cb := raw(c)
		add(cb)
		dm := dockerManifest{Config: blobPath(cb.digest), RepoTags: []string{familiarName(tag)}}
		layers, err := img.Layers()
		if err != nil {
			return err
		}
		for _, l := range layers {
			d, err := l.Digest()
			if err != nil {
				return err
			}
			n, err := l.Size()
			if err != nil {
				return err
			}
			add(blob{digest: d, size: n, open: l.Compressed})
			dm.Layers = append(dm.Layers, blobPath(d))
		}
		docker = append(docker, dm)
	}
	top.Annotations = map[string]string{
		annotationContainerdName: containerdName(tag),
		annotationRefName:        tag.TagStr(),
	}
	index, err := json.Marshal(v1.IndexManifest{SchemaVersion: 2, MediaType: types.OCIImageIndex, Manifests: []v1.Descriptor{top}})
	if err != nil {
		return err
	}

	tw := tar.NewWriter(w)
	dirHeader := func(n string) error {
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: 0o755, ModTime: mtime, Format: tar.FormatUSTAR})
	}
	fileFrom := func(n string, size int64, open func() (io.ReadCloser, error)) error {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Size: size, Mode: 0o644, ModTime: mtime, Format: tar.FormatUSTAR}); err != nil {
			return err
		}
		rc, err := open()
		if err != nil {
			return err
		}
		defer rc.Close()
		if k, err := io.Copy(tw, rc); err != nil {
			return err
		} else if k != size {
			return fmt.Errorf("%s: wrote %d bytes, want %d", n, k, size)
		}
		return nil
	}
	file := func(n string, b []byte) error { return fileFrom(n, int64(len(b)), raw(b).open) }

	if err := dirHeader("blobs/"); err != nil {
		return err
	}
	if err := dirHeader("blobs/sha256/"); err != nil {
		return err
	}
	hexes := make([]string, 0, len(blobs))
	for h := range blobs {
		hexes = append(hexes, h)
	}
	slices.Sort(hexes)
	for _, h := range hexes {
		b := blobs[h]
		if err := fileFrom(blobPath(b.digest), b.size, b.open); err != nil {
			return err
		}
	}
	if err := file("index.json", index); err != nil {
		return err
	}
	if a.Index == nil {
		m, err := json.Marshal(docker)
		if err != nil {
			return err
		}
		if err := file("manifest.json", m); err != nil {
			return err
		}
	}
	if err := file("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return err
	}
	return tw.Close()
}

// dockerManifest is one entry of docker save's manifest.json.
type dockerManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

func blobPath(d v1.Hash) string { return "blobs/" + d.Algorithm + "/" + d.Hex }

// familiarName is the tag as Docker prints it: ringmaster:0.1.0, not
// index.docker.io/library/ringmaster:0.1.0.
func familiarName(t name.Tag) string {
	repo := t.Context().RepositoryStr()
	if t.RegistryStr() != name.DefaultRegistry {
		return t.RegistryStr() + "/" + repo + ":" + t.TagStr()
	}
	return strings.TrimPrefix(repo, "library/") + ":" + t.TagStr()
}

// containerdName is the tag fully qualified, as containerd stores it.
func containerdName(t name.Tag) string {
	reg := t.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + t.Context().RepositoryStr() + ":" + t.TagStr()
}
