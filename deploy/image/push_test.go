package main

import (
	"context"
	"io"
	"log"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// TestPush pushes the test image and a two-platform index to an
// in-process registry and reads them back by tag.
func TestPush(t *testing.T) {
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	ctx := context.Background()

	tag, err := name.NewTag(host + "/ringmaster:" + strings.TrimPrefix(testVersion, "v"))
	if err != nil {
		t.Fatal(err)
	}
	if err := push(ctx, tag, built); err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(tag, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	want, _ := built.Digest()
	if desc.Digest != want {
		t.Errorf("registry has %s, want %s", desc.Digest, want)
	}

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
	multi := &artifact{Index: newIndex(images, platforms)}
	mtag := tag.Context().Tag("multi")
	if err := push(ctx, mtag, multi); err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(mtag, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := idx.Digest()
	if want, _ := multi.Digest(); got != want {
		t.Errorf("registry has index %s, want %s", got, want)
	}
	arm, err := remote.Image(mtag, remote.WithContext(ctx), remote.WithPlatform(platforms[1]))
	if err != nil {
		t.Fatal(err)
	}
	if cf, err := arm.ConfigFile(); err != nil || cf.Architecture != "arm64" {
		t.Errorf("linux/arm64 from the index: %v, %v", cf, err)
	}
}
