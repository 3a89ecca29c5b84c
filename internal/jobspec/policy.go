package jobspec

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"slices"
	"strings"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

// Policy is where a submitted spec may send the coordinator and its
// workers. Whoever can submit a job is not trusted with the coordinator's
// file system or network: without a policy a spec could name any
// directory as a file:// store (which the coordinator creates and lists),
// any S3 service, and any dataset path (which the coordinator probes).
// The operator sets the policy with the server flags --allow-file-root,
// --allow-s3-endpoint and --allow-dataset-root.
//
// Paths are compared lexically, after filepath.Clean: a root allows
// itself and what lies below it, never a sibling that shares its prefix
// (/data does not allow /database), and ".." cannot climb out of it.
// Symbolic links are not resolved, so a root must not hold links that
// submitters can create. A nil *Policy allows everything (library use);
// an empty list allows nothing of its kind.
type Policy struct {
	// FileRoots are the absolute directories under which file://
	// checkpoint stores may lie: checkpoint.store, and resume and
	// init_from when they are URLs.
	FileRoots []string
	// S3Endpoints are the S3 services that s3:// stores and datasets may
	// name, each "host:port", or "host:port/bucket" to allow one bucket of
	// it. A URL's endpoint is its endpoint= option; without one it is the
	// endpoint the coordinator would use itself ($AWS_ENDPOINT_URL_S3,
	// then $AWS_ENDPOINT_URL, else AWS S3 as s3.amazonaws.com:443). An
	// endpoint without a port has port 443, or 80 with tls=false.
	S3Endpoints []string
	// DatasetRoots are the absolute directories under which dataset
	// locations must lie: the mnist dataset.path, the tokens
	// dataset.path and val_path (whose globs must have their fixed
	// directory under a root) and file:// dataset URLs. s3:// dataset
	// URLs are checked against S3Endpoints.
	DatasetRoots []string
}

// The server flags that widen a policy, named in the errors of locations
// it refuses.
const (
	FlagFileRoot    = "--allow-file-root"
	FlagS3Endpoint  = "--allow-s3-endpoint"
	FlagDatasetRoot = "--allow-dataset-root"
)

// awsEndpoint is the endpoint of an s3:// URL that names none and finds
// none in the environment (the S3 store's own default).
const awsEndpoint = "s3.amazonaws.com"

// Validate checks the policy's own entries: absolute roots and S3
// entries of the form host:port[/bucket].
func (p *Policy) Validate() error {
	if p == nil {
		return nil
	}
	for _, roots := range []struct {
		flag string
		dirs []string
	}{{FlagFileRoot, p.FileRoots}, {FlagDatasetRoot, p.DatasetRoots}} {
		for _, d := range roots.dirs {
			if !filepath.IsAbs(d) {
				return fmt.Errorf("%s %q: give an absolute directory", roots.flag, d)
			}
		}
	}
	for _, e := range p.S3Endpoints {
		if _, _, err := parseEndpointEntry(e); err != nil {
			return fmt.Errorf("%s %q: %v", FlagS3Endpoint, e, err)
		}
	}
	return nil
}

// CheckStore reports whether the checkpoint store URL raw (file:// or
// s3://) lies inside the policy.
func (p *Policy) CheckStore(raw string) error {
	if p == nil {
		return nil
	}
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("%q is not a store URL", raw)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return fmt.Errorf("%q: a file store needs an absolute path and three slashes, e.g. file:///var/lib/ringmaster/checkpoints", raw)
		}
		return checkRoots(raw, filepath.Clean(u.Path), p.FileRoots, "file:// checkpoint stores", FlagFileRoot)
	case "s3":
		return p.checkS3(raw)
	default:
		return fmt.Errorf("store scheme %q is not supported; allowed: %s", u.Scheme, strings.Join(knownStores, ", "))
	}
}

// checkDataset reports whether a dataset location (an absolute path or
// glob, or a file:// or s3:// URL) lies inside the policy.
func (p *Policy) checkDataset(loc string) error {
	if p == nil {
		return nil
	}
	if !strings.Contains(loc, "://") {
		return checkRoots(loc, globRoot(loc), p.DatasetRoots, "datasets", FlagDatasetRoot)
	}
	u, err := url.Parse(loc)
	if err != nil {
		return fmt.Errorf("%q is not a dataset URL", loc)
	}
	switch u.Scheme {
	case "file":
		if u.Host != "" || !strings.HasPrefix(u.Path, "/") {
			return fmt.Errorf("%q: write file:///absolute/path/NAME_train_*.bin (three slashes)", loc)
		}
		return checkRoots(loc, globRoot(u.Path), p.DatasetRoots, "datasets", FlagDatasetRoot)
	case "s3":
		return p.checkS3(loc)
	default:
		return fmt.Errorf("%q is not allowed; use a file:// or s3:// URL, or an absolute path", loc)
	}
}

// checkDatasetDir reports whether a dataset directory, an absolute path
// read as written (the mnist dataset.path), lies inside the policy.
func (p *Policy) checkDatasetDir(dir string) error {
	if p == nil {
		return nil
	}
	return checkRoots(dir, filepath.Clean(dir), p.DatasetRoots, "datasets", FlagDatasetRoot)
}

// AllowStore widens the policy, where it does not allow the store URL
// raw yet, by its directory for a file:// store, by its endpoint and
// bucket for an s3:// one. The coordinator allows its own default store
// this way.
func (p *Policy) AllowStore(raw string) error {
	if err := checkpoint.CheckURL(raw); err != nil {
		return err
	}
	if p.CheckStore(raw) == nil {
		return nil
	}
	u, _ := url.Parse(raw)
	if u.Scheme == "file" {
		p.FileRoots = append(slices.Clip(p.FileRoots), filepath.Clean(u.Path))
		return nil
	}
	return p.allowS3(raw)
}

// AllowDataset widens the policy, where it does not allow the dataset
// location loc yet, by the fixed directory of a path or glob (or of a
// file:// URL's path), or by the endpoint and bucket of an s3:// URL.
func (p *Policy) AllowDataset(loc string) error {
	if p.checkDataset(loc) == nil {
		return nil
	}
	if !strings.Contains(loc, "://") {
		if !filepath.IsAbs(loc) {
			return fmt.Errorf("%q must be an absolute path", loc)
		}
		p.DatasetRoots = append(slices.Clip(p.DatasetRoots), globRoot(loc))
		return nil
	}
	u, err := url.Parse(loc)
	switch {
	case err != nil:
		return fmt.Errorf("%q is not a dataset URL", loc)
	case u.Scheme == "file" && strings.HasPrefix(u.Path, "/"):
		p.DatasetRoots = append(slices.Clip(p.DatasetRoots), globRoot(u.Path))
		return nil
	case u.Scheme == "s3":
		return p.allowS3(loc)
	default:
		return fmt.Errorf("%q is not allowed; use a file:// or s3:// URL, or an absolute path", loc)
	}
}

func (p *Policy) allowS3(raw string) error {
	ep, bucket, err := s3Location(raw)
	if err != nil {
		return err
	}
	p.S3Endpoints = append(slices.Clip(p.S3Endpoints), ep+"/"+bucket)
	return nil
}

// checkRoots reports whether the cleaned absolute path p lies under one
// of roots; loc is what the spec wrote, for the message.
func checkRoots(loc, p string, roots []string, what, flag string) error {
	if len(roots) == 0 {
		return fmt.Errorf("%q: this coordinator allows no %s; the operator allows a directory with `coordinator serve %s DIR`", loc, what, flag)
	}
	for _, r := range roots {
		if within(r, p) {
			return nil
		}
	}
	return fmt.Errorf("%q is outside the directories this coordinator allows for %s (%s); use a location under one of them, or the operator allows another with `coordinator serve %s DIR`",
		loc, what, strings.Join(roots, ", "), flag)
}

// within reports whether the clean absolute path p is root or lies below
// it. A relative root allows nothing.
func within(root, p string) bool {
	if !filepath.IsAbs(root) || !filepath.IsAbs(p) {
		return false
	}
	root = filepath.Clean(root)
	if root == string(filepath.Separator) {
		return true
	}
	return p == root || strings.HasPrefix(p, root+string(filepath.Separator))
}

// globRoot is the directory a path or glob cannot leave: the whole path,
// cleaned, when it has no glob metacharacter; otherwise the directory of
// its fixed part before the first one. Cleaning first removes every ".."
// (an absolute path keeps none), and a ".." written after a
// metacharacter never matches: globs match directory entries, which
// never include "..".
func globRoot(p string) string {
	p = filepath.Clean(p)
	meta := `*?[`
	if filepath.Separator != '\\' {
		meta += `\`
	}
	i := strings.IndexAny(p, meta)
	if i < 0 {
		return p
	}
	return filepath.Dir(p[:i+1])
}

// checkS3 reports whether the endpoint and bucket of an s3:// URL are
// allowed.
func (p *Policy) checkS3(raw string) error {
	ep, bucket, err := s3Location(raw)
	if err != nil {
		return err
	}
	if len(p.S3Endpoints) == 0 {
		return fmt.Errorf("%q: this coordinator allows no S3 endpoints; the operator allows one with `coordinator serve %s HOST:PORT[/BUCKET]`", raw, FlagS3Endpoint)
	}
	for _, e := range p.S3Endpoints {
		eep, ebucket, err := parseEndpointEntry(e)
		if err == nil && eep == ep && (ebucket == "" || ebucket == bucket) {
			return nil
		}
	}
	return fmt.Errorf("%q: endpoint %s, bucket %q is not allowed by this coordinator (allowed: %s); the operator allows it with `coordinator serve %s %s/%s`",
		raw, ep, bucket, strings.Join(p.S3Endpoints, ", "), FlagS3Endpoint, ep, bucket)
}

// s3Location is the normalized endpoint (host:port) and the bucket of an
// s3:// URL, resolved as the S3 store resolves them.
func s3Location(raw string) (endpoint, bucket string, err error) {
	cfg, err := checkpoint.ParseS3URL(raw)
	if err != nil {
		return "", "", errors.New(strings.TrimPrefix(err.Error(), "checkpoint: "))
	}
	ep := cfg.Endpoint
	if ep == "" {
		ep = awsEndpoint
	}
	port := "443"
	if cfg.Insecure {
		port = "80"
	}
	return normalizeHostPort(ep, port), cfg.Bucket, nil
}

// parseEndpointEntry reads a policy entry host:port[/bucket].
func parseEndpointEntry(e string) (endpoint, bucket string, err error) {
	hp, bucket, _ := strings.Cut(e, "/")
	host, port, err := net.SplitHostPort(hp)
	if err != nil || host == "" || port == "" || strings.Contains(e, "://") || strings.Contains(bucket, "/") {
		return "", "", fmt.Errorf("write an S3 endpoint as HOST:PORT or HOST:PORT/BUCKET, e.g. minio:9000 or s3.amazonaws.com:443/my-bucket")
	}
	return normalizeHostPort(hp, port), bucket, nil
}

// normalizeHostPort lower-cases the host and adds defPort when hp has no
// port.
func normalizeHostPort(hp, defPort string) string {
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		host, port = strings.Trim(hp, "[]"), defPort
	}
	return net.JoinHostPort(strings.ToLower(host), port)
}
