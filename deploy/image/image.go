package main

import (
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// meta is what the image says about itself besides its files.
type meta struct {
	Version  string
	Revision string // commit; empty leaves the label out
	Source   string // repository URL
	Created  time.Time
}

// Label keys (https://github.com/opencontainers/image-spec/blob/main/annotations.md).
const (
	labelSource   = "org.opencontainers.image.source"
	labelVersion  = "org.opencontainers.image.version"
	labelRevision = "org.opencontainers.image.revision"
)

// imageConfig is the runtime config; the root Dockerfile's USER, WORKDIR,
// ENV and ENTRYPOINT must say the same (dockerfile_test.go checks).
func imageConfig(m meta) v1.Config {
	labels := map[string]string{
		labelSource:  m.Source,
		labelVersion: m.Version,
	}
	if m.Revision != "" {
		labels[labelRevision] = m.Revision
	}
	return v1.Config{
		User:       fmt.Sprintf("%d:%d", nonrootUID, nonrootGID),
		Entrypoint: []string{entrypoint},
		WorkingDir: nonrootHome,
		Env: []string{
			"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
			"SSL_CERT_FILE=" + caBundle,
			// The workers find MNIST here; the module cache does not
			// exist in the image.
			"RINGMASTER_MNIST_DIR=" + mnistDir,
		},
		Labels: labels,
	}
}

// newImage assembles one platform's OCI image from its layers.
func newImage(p v1.Platform, layers []layer, m meta) (v1.Image, error) {
	created := v1.Time{Time: m.Created.UTC()}
	cf := &v1.ConfigFile{
		Architecture: p.Architecture,
		OS:           p.OS,
		Variant:      p.Variant,
		Created:      created,
		Config:       imageConfig(m),
		RootFS:       v1.RootFS{Type: "layers"},
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, err
	}
	for _, l := range layers {
		ly, err := newLayer(l, m.Created)
		if err != nil {
			return nil, err
		}
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   ly,
			History: v1.History{Created: created, CreatedBy: "deploy/image", Comment: l.Name},
		})
		if err != nil {
			return nil, err
		}
	}
	return img, nil
}

// newLayer compresses the layer in memory. Go's gzip writes no time or
// name in its header, so the same entries (and Go release) give the same
// digest.
func newLayer(l layer, mtime time.Time) (v1.Layer, error) {
	var gz bytes.Buffer
	zw, err := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if err := writeTar(zw, l.Entries, mtime); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	b := gz.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer))
}

// newIndex puts one image per platform in an OCI index.
func newIndex(images []v1.Image, platforms []v1.Platform) v1.ImageIndex {
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	for i, img := range images {
		p := platforms[i]
		idx = mutate.AppendManifests(idx, mutate.IndexAddendum{
			Add:        img,
			Descriptor: v1.Descriptor{Platform: &p},
		})
	}
	return idx
}
