// Command image builds Ringmaster's container image without Docker:
//
//	cd deploy/image
//	go run . --out ringmaster.tar                  # an archive for docker load
//	go run . --push REGISTRY/ringmaster:TAG        # straight to a registry
//	go run . --platform linux/amd64,linux/arm64 --push REGISTRY/ringmaster:TAG
//
// The image has no base and no distribution: the coordinator and worker,
// built here with `go build` as static binaries, the MNIST files, a CA
// bundle, passwd and group entries for the non-root user 65532, a /tmp
// and the directories the chart mounts, owned by that user. The same
// inputs (source, version, SOURCE_DATE_EPOCH, CA bundle, Go release) give
// the same digest.
//
// The root Dockerfile builds the same file system by running this program
// with --rootfs in its build stage, and sets the same config; the tests
// hold both to it. docs/install.md tells how to use the image.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// run parses the flags into a config, builds, and writes or pushes. The
// digest goes to stdout, progress to stderr.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fl := flag.NewFlagSet("image", flag.ContinueOnError)
	fl.SetOutput(stderr)
	out := fl.String("out", "", "write the image as an OCI layout tar `FILE` (with docker save's manifest.json when it holds one platform)")
	pushTo := fl.String("push", "", "push the image to `REGISTRY/REPOSITORY:TAG` (credentials as docker login and the credential helpers keep them)")
	tagFlag := fl.String("tag", "", "the `NAME:TAG` the archive gives the image (default: --push's, else ringmaster:VERSION without its v)")
	rootfs := fl.String("rootfs", "", "write the image's file system, owners and modes included, into `DIR` (for the Dockerfile; needs root and one platform)")
	platforms := fl.String("platform", "linux/amd64", "comma-separated `PLATFORMS`: linux/amd64, linux/arm64; more than one makes a multi-arch index")
	version := fl.String("version", "", "`VERSION` stamped into the binaries and the labels (default: git describe --tags --dirty, else v0.1.0-dev)")
	revision := fl.String("revision", "", "commit for the revision label (default: git rev-parse HEAD)")
	epoch := fl.Int64("source-date-epoch", -1, "time of every file and of the image, in `SECONDS` since 1970 (default: $SOURCE_DATE_EPOCH, else the commit's time, else 0)")
	caCerts := fl.String("ca-certs", defaultCACerts(), "PEM bundle of CA certificates to ship, as `FILE`")
	repo := fl.String("repo", "", "the repository's root `DIR` (default: found from the working directory up)")
	source := fl.String("source", imageSource, "`URL` for the source label")
	if err := fl.Parse(args); err != nil {
		return err
	}
	if fl.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fl.Arg(0))
	}
	if *out == "" && *pushTo == "" && *rootfs == "" {
		return errors.New("nothing to do: give --out FILE, --push REGISTRY/ringmaster:TAG or --rootfs DIR")
	}

	c := config{Source: *source, CACerts: *caCerts, Log: stderr}
	for _, s := range strings.Split(*platforms, ",") {
		p, err := parsePlatform(s)
		if err != nil {
			return err
		}
		c.Platforms = append(c.Platforms, p)
	}
	if *rootfs != "" && len(c.Platforms) != 1 {
		return errors.New("--rootfs writes one platform's file system")
	}
	c.Repo = *repo
	if c.Repo == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		if c.Repo, err = findRepo(wd); err != nil {
			return err
		}
	}
	c.Version = *version
	if c.Version == "" {
		c.Version = git(ctx, c.Repo, "describe", "--tags", "--dirty", "--match", "v[0-9]*")
	}
	if c.Version == "" {
		c.Version = "v0.1.0-dev"
	}
	c.Revision = *revision
	if c.Revision == "" {
		c.Revision = git(ctx, c.Repo, "rev-parse", "HEAD")
	}
	secs, from := *epoch, "--source-date-epoch"
	if secs < 0 {
		var err error
		if secs, from, err = defaultEpoch(ctx, c.Repo); err != nil {
			return err
		}
	}
	c.Epoch = time.Unix(secs, 0).UTC()
	logf(stderr, "version %s, revision %s, time %d (%s), CA bundle %s", c.Version, orNone(c.Revision), secs, from, orNone(c.CACerts))

	if *rootfs != "" {
		layers, err := platformFilesystem(ctx, c, c.Platforms[0])
		if err != nil {
			return err
		}
		if err := writeDir(*rootfs, layers, c.Epoch); err != nil {
			return err
		}
		logf(stderr, "wrote the file system to %s", *rootfs)
		if *out == "" && *pushTo == "" {
			return nil
		}
	}

	tagName := *tagFlag
	if tagName == "" {
		tagName = *pushTo
	}
	if tagName == "" {
		tagName = "ringmaster:" + strings.ReplaceAll(strings.TrimPrefix(c.Version, "v"), "+", "-")
	}
	tag, err := name.NewTag(tagName)
	if err != nil {
		return err
	}
	var pushTag name.Tag
	if *pushTo != "" {
		if pushTag, err = name.NewTag(*pushTo); err != nil {
			return err
		}
	}

	a, err := build(ctx, c)
	if err != nil {
		return err
	}
	digest, err := a.Digest()
	if err != nil {
		return err
	}
	if *out != "" {
		if err := writeArchiveFile(*out, a, tag, c.Epoch); err != nil {
			return err
		}
		logf(stderr, "wrote %s as %s", *out, familiarName(tag))
	}
	if *pushTo != "" {
		if err := push(ctx, pushTag, a); err != nil {
			return err
		}
		logf(stderr, "pushed %s@%s", pushTag.Context(), digest)
	}
	fmt.Fprintln(stdout, digest)
	return nil
}

// push writes the artifact to its registry with the credentials docker
// login and the credential helpers keep. A registry on localhost or
// 127.0.0.1 is spoken to over plain HTTP.
func push(ctx context.Context, tag name.Tag, a *artifact) error {
	opts := []remote.Option{remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)}
	var err error
	if a.Index != nil {
		err = remote.WriteIndex(tag, a.Index, opts...)
	} else {
		err = remote.Write(tag, a.Image, opts...)
	}
	if err != nil {
		return fmt.Errorf("push %s: %w", tag, err)
	}
	return nil
}

// writeArchiveFile writes the archive next to path and renames it into
// place, so that a failed build leaves no half archive.
func writeArchiveFile(path string, a *artifact, tag name.Tag, mtime time.Time) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".ringmaster-image-*.tar")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if err := writeArchive(tmp, a, tag, mtime); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}
