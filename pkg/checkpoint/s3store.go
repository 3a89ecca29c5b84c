package checkpoint

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
)

// S3Config configures an S3Store. ParseS3URL fills it from a store URL and
// the environment.
type S3Config struct {
	Bucket string
	// Prefix is prepended (with a '/') to every key; empty for none.
	Prefix string
	// Endpoint is host[:port] of the service; empty means AWS S3
	// (s3.amazonaws.com, or the region's endpoint).
	Endpoint string
	// Region; empty lets the client ask the service for the bucket's region.
	Region string
	// PathStyle addresses buckets as endpoint/bucket rather than
	// bucket.endpoint (MinIO, Ceph RGW and versitygw usually need it).
	PathStyle bool
	// Insecure talks plain HTTP. TLS is on by default.
	Insecure bool
	// CredentialsFile and Profile select an AWS shared credentials file
	// (default $AWS_SHARED_CREDENTIALS_FILE or ~/.aws/credentials, profile
	// $AWS_PROFILE or "default").
	CredentialsFile, Profile string
	// Creds, if set, replaces the credential chain (tests, embedding).
	Creds *credentials.Credentials
	// Retry is how failed requests are retried (zero: DefaultRetry).
	Retry RetryPolicy
}

// s3Params are the options an s3:// URL may carry.
var s3Params = []string{"endpoint", "region", "path_style", "tls", "credentials_file", "profile", "retries"}

// ParseS3URL reads s3://bucket/prefix?options. Options, each falling back
// to the environment where it says so:
//
//	endpoint=host:port      the service ($AWS_ENDPOINT_URL_S3, then $AWS_ENDPOINT_URL,
//	                        which may carry http:// or https://); default AWS S3
//	region=R                ($AWS_REGION, then $AWS_DEFAULT_REGION)
//	path_style=true         path-style bucket addressing (default false)
//	tls=false               plain HTTP (default true)
//	credentials_file=PATH   an AWS shared credentials file
//	profile=NAME            its profile ($AWS_PROFILE)
//	retries=N               attempts per request (default 6)
//
// Credentials come from $AWS_ACCESS_KEY_ID and $AWS_SECRET_ACCESS_KEY
// (and $AWS_SESSION_TOKEN), then $MINIO_ROOT_USER/$MINIO_ROOT_PASSWORD, then
// the shared credentials file, then the EC2/ECS instance role. Secrets never
// go in the URL.
func ParseS3URL(raw string) (S3Config, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return S3Config{}, fmt.Errorf("checkpoint: store URL %q: %w", raw, err)
	}
	bad := func(format string, a ...any) (S3Config, error) {
		return S3Config{}, fmt.Errorf("checkpoint: store URL %q: %s", raw, fmt.Sprintf(format, a...))
	}
	if u.Scheme != "s3" {
		return bad("not an s3:// URL")
	}
	if u.User != nil {
		return bad("credentials do not belong in the URL; use $AWS_ACCESS_KEY_ID/$AWS_SECRET_ACCESS_KEY or a credentials file")
	}
	if u.Host == "" {
		return bad("no bucket; write it like s3://bucket/prefix?endpoint=host:9000")
	}
	cfg := S3Config{Bucket: u.Host, Prefix: strings.Trim(u.Path, "/"), Retry: DefaultRetry}
	if strings.Contains(u.Path, "//") {
		return bad("the prefix has an empty path element")
	}
	q := u.Query()
	for k := range q {
		if !contains(s3Params, k) {
			return bad("unknown option %q; allowed: %s", k, strings.Join(s3Params, ", "))
		}
	}
	endpoint := q.Get("endpoint")
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL_S3")
	}
	if endpoint == "" {
		endpoint = os.Getenv("AWS_ENDPOINT_URL")
	}
	if strings.Contains(endpoint, "://") {
		eu, err := url.Parse(endpoint)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return bad("endpoint %q is not host:port or http(s)://host:port", endpoint)
		}
		endpoint = eu.Host
		cfg.Insecure = eu.Scheme == "http"
	}
	cfg.Endpoint = endpoint
	cfg.Region = q.Get("region")
	if cfg.Region == "" {
		cfg.Region = os.Getenv("AWS_REGION")
	}
	if cfg.Region == "" {
		cfg.Region = os.Getenv("AWS_DEFAULT_REGION")
	}
	for _, b := range []struct {
		name string
		dst  *bool
		neg  bool
	}{{"path_style", &cfg.PathStyle, false}, {"tls", &cfg.Insecure, true}} {
		v := q.Get(b.name)
		if v == "" {
			continue
		}
		on, err := strconv.ParseBool(v)
		if err != nil {
			return bad("%s=%q is not true or false", b.name, v)
		}
		*b.dst = on != b.neg
	}
	cfg.CredentialsFile = q.Get("credentials_file")
	cfg.Profile = q.Get("profile")
	if v := q.Get("retries"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 100 {
			return bad("retries=%q must be a number of attempts from 1 to 100", v)
		}
		cfg.Retry.Attempts = n
	}
	return cfg, nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// S3Store keeps objects in a bucket of an S3-compatible service through
// minio-go. Large objects go up as multipart uploads whose parts the
// caller writes concurrently; every request has a deadline and is retried
// with jittered backoff when the failure is worth retrying.
type S3Store struct {
	cfg   S3Config
	core  *minio.Core
	retry *retrier
}

// NewS3Store returns a store for cfg. It does not contact the service.
func NewS3Store(cfg S3Config) (*S3Store, error) {
	if cfg.Bucket == "" {
		return nil, errors.New("checkpoint: S3 store without a bucket")
	}
	if cfg.Retry.Attempts == 0 {
		cfg.Retry = DefaultRetry
	}
	endpoint := cfg.Endpoint
	if endpoint == "" {
		endpoint = "s3.amazonaws.com"
	}
	creds := cfg.Creds
	if creds == nil {
		creds = credentials.NewChainCredentials([]credentials.Provider{
			&credentials.EnvAWS{},
			&credentials.EnvMinio{},
			&credentials.FileAWSCredentials{Filename: cfg.CredentialsFile, Profile: cfg.Profile},
			&credentials.IAM{Client: &http.Client{Timeout: 5 * time.Second}},
		})
	}
	tr, err := minio.DefaultTransport(!cfg.Insecure)
	if err != nil {
		return nil, err
	}
	lookup := minio.BucketLookupAuto
	if cfg.PathStyle {
		lookup = minio.BucketLookupPath
	}
	core, err := minio.NewCore(endpoint, &minio.Options{
		Creds: creds, Secure: !cfg.Insecure, Region: cfg.Region, BucketLookup: lookup, Transport: failFast{tr},
		MaxRetries: 1, // this store retries, with its own policy and deadlines
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: S3 endpoint %q: %w", endpoint, err)
	}
	return &S3Store{cfg: cfg, core: core, retry: newRetrier(cfg.Retry)}, nil
}

// URL implements Store: s3://bucket/prefix with the options that locate
// the service (never credentials).
func (s *S3Store) URL() string {
	u := url.URL{Scheme: "s3", Host: s.cfg.Bucket, Path: "/" + s.cfg.Prefix}
	if s.cfg.Prefix == "" {
		u.Path = ""
	}
	q := url.Values{}
	if s.cfg.Endpoint != "" {
		q.Set("endpoint", s.cfg.Endpoint)
	}
	if s.cfg.Region != "" {
		q.Set("region", s.cfg.Region)
	}
	if s.cfg.PathStyle {
		q.Set("path_style", "true")
	}
	if s.cfg.Insecure {
		q.Set("tls", "false")
	}
	if s.cfg.Profile != "" {
		q.Set("profile", s.cfg.Profile)
	}
	if s.cfg.CredentialsFile != "" {
		q.Set("credentials_file", s.cfg.CredentialsFile)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func (s *S3Store) object(key string) (string, error) {
	if key == "" || path.Clean("/"+key) != "/"+key {
		return "", fmt.Errorf("checkpoint: invalid object key %q", key)
	}
	if s.cfg.Prefix == "" {
		return key, nil
	}
	return s.cfg.Prefix + "/" + key, nil
}

func (s *S3Store) key(object string) string {
	if s.cfg.Prefix == "" {
		return object
	}
	return strings.TrimPrefix(object, s.cfg.Prefix+"/")
}

func (s *S3Store) where(object string) string { return "s3://" + s.cfg.Bucket + "/" + object }

// mapErr turns S3's answers for a missing object and a failed condition
// into this package's errors.
func mapErr(err error, object string) error {
	if err == nil {
		return nil
	}
	er := minio.ToErrorResponse(err)
	switch {
	case er.Code == "NoSuchKey" || (er.StatusCode == http.StatusNotFound && er.Code != "NoSuchBucket" && er.Code != "NoSuchUpload"):
		return fmt.Errorf("%w: %s", ErrNotFound, object)
	case er.Code == "PreconditionFailed" || er.StatusCode == http.StatusPreconditionFailed:
		return fmt.Errorf("%w: %s", ErrPrecondition, object)
	}
	return err
}

func condOpts(c Condition) minio.PutObjectOptions {
	var o minio.PutObjectOptions
	if c.IfAbsent {
		o.SetMatchETagExcept("*")
	}
	if c.IfMatch != "" {
		o.SetMatchETag(c.IfMatch)
	}
	return o
}

// Create implements Store. An object of one part is sent as one PUT at
// Complete; larger ones as a multipart upload started here.
func (s *S3Store) Create(ctx context.Context, key string, size, partSize int64, cond Condition) (Upload, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, err
	}
	if size < 0 || partSize <= 0 {
		return nil, fmt.Errorf("checkpoint: %s: invalid size %d or part size %d", key, size, partSize)
	}
	u := &s3Upload{s: s, key: key, obj: obj, size: size, partSize: partSize, cond: cond}
	n := (size + partSize - 1) / partSize
	if n <= 1 {
		return u, nil
	}
	if n > 10000 {
		return nil, fmt.Errorf("checkpoint: %s: %d parts of %d bytes; S3 allows 10000, use larger parts", key, n, partSize)
	}
	u.parts = make([]minio.CompletePart, n)
	err = s.retry.do(ctx, "s3 create multipart upload "+s.where(obj), func(ctx context.Context, _ int) error {
		id, err := s.core.NewMultipartUpload(ctx, s.cfg.Bucket, obj, minio.PutObjectOptions{})
		u.uploadID = id
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("checkpoint: %w", err)
	}
	return u, nil
}

type s3Upload struct {
	s              *S3Store
	key, obj       string
	size, partSize int64
	cond           Condition
	uploadID       string // empty: a single PUT

	mu       sync.Mutex
	single   []byte // the one part of a single-PUT object, sent at Complete
	parts    []minio.CompletePart
	finished bool
}

func (u *s3Upload) WritePart(ctx context.Context, n int, p []byte) error {
	if _, err := partRange(u.key, n, len(p), u.size, u.partSize); err != nil {
		return err
	}
	if u.uploadID == "" {
		// Kept until Complete, so that the object appears only then; at most
		// one part's worth of memory.
		u.mu.Lock()
		u.single = append([]byte(nil), p...)
		u.mu.Unlock()
		return ctx.Err()
	}
	what := fmt.Sprintf("s3 upload part %d of %s", n, u.s.where(u.obj))
	var part minio.ObjectPart
	err := u.s.retry.do(ctx, what, func(ctx context.Context, _ int) error {
		var err error
		part, err = u.s.core.PutObjectPart(ctx, u.s.cfg.Bucket, u.obj, u.uploadID, n, bytes.NewReader(p), int64(len(p)), minio.PutObjectPartOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	u.mu.Lock()
	u.parts[n-1] = minio.CompletePart{PartNumber: n, ETag: part.ETag}
	u.mu.Unlock()
	return nil
}

func (u *s3Upload) Complete(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.finished {
		return fmt.Errorf("checkpoint: writing %s: the upload is over", u.key)
	}
	s := u.s
	// A try whose answer was lost may have succeeded; a later try then
	// meets its own object (a failed condition, or the upload gone).
	ambiguous := false
	var err error
	if u.uploadID == "" {
		if u.single == nil && u.size > 0 {
			return fmt.Errorf("checkpoint: writing %s: part 1 was never written", u.key)
		}
		data := u.single
		err = s.retry.do(ctx, "s3 put "+s.where(u.obj), func(ctx context.Context, attempt int) error {
			_, err := s.core.PutObject(ctx, s.cfg.Bucket, u.obj, bytes.NewReader(data), int64(len(data)), "", "", condOpts(u.cond))
			err = mapErr(err, u.obj)
			if err != nil && ambiguous && errors.Is(err, ErrPrecondition) && u.cond.IfAbsent && u.sameBytes(ctx, data) {
				return nil
			}
			ambiguous = ambiguous || (err != nil && retryable(err))
			return err
		})
		u.single = nil
	} else {
		for i, p := range u.parts {
			if p.ETag == "" {
				return fmt.Errorf("checkpoint: writing %s: part %d was never written", u.key, i+1)
			}
		}
		parts := append([]minio.CompletePart(nil), u.parts...)
		sort.Slice(parts, func(i, j int) bool { return parts[i].PartNumber < parts[j].PartNumber })
		err = s.retry.do(ctx, "s3 complete multipart upload "+s.where(u.obj), func(ctx context.Context, attempt int) error {
			_, err := s.core.CompleteMultipartUpload(ctx, s.cfg.Bucket, u.obj, u.uploadID, parts, condOpts(u.cond))
			if err != nil && ambiguous && (minio.ToErrorResponse(err).Code == "NoSuchUpload" || errors.Is(mapErr(err, u.obj), ErrPrecondition)) {
				if st, serr := s.core.StatObject(ctx, s.cfg.Bucket, u.obj, minio.StatObjectOptions{}); serr == nil && st.Size == u.size && st.ETag == multipartETag(parts) {
					return nil
				}
			}
			err = mapErr(err, u.obj)
			ambiguous = ambiguous || (err != nil && retryable(err))
			return err
		})
	}
	if err != nil {
		if errors.Is(err, ErrPrecondition) {
			return fmt.Errorf("%w: %s", ErrPrecondition, u.key)
		}
		return fmt.Errorf("checkpoint: %w", err)
	}
	u.finished = true
	return nil
}

// sameBytes reports whether the stored object holds exactly data.
func (u *s3Upload) sameBytes(ctx context.Context, data []byte) bool {
	rc, _, _, err := u.s.core.GetObject(ctx, u.s.cfg.Bucket, u.obj, minio.GetObjectOptions{})
	if err != nil {
		return false
	}
	defer rc.Close()
	got, err := io.ReadAll(io.LimitReader(rc, int64(len(data))+1))
	return err == nil && bytes.Equal(got, data)
}

func (u *s3Upload) Abort(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.single = nil
	if u.finished || u.uploadID == "" {
		return nil
	}
	u.finished = true
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	return u.s.retry.do(ctx, "s3 abort multipart upload "+u.s.where(u.obj), func(ctx context.Context, _ int) error {
		err := u.s.core.AbortMultipartUpload(ctx, u.s.cfg.Bucket, u.obj, u.uploadID)
		if minio.ToErrorResponse(err).Code == "NoSuchUpload" {
			return nil
		}
		return err
	})
}

// Read implements Store. A transfer that breaks is resumed where it
// stopped, within the retry policy.
func (s *S3Store) Read(ctx context.Context, key string, off, n int64) (io.ReadCloser, error) {
	obj, err := s.object(key)
	if err != nil {
		return nil, err
	}
	r := &s3Reader{s: s, ctx: ctx, obj: obj, off: off, left: n}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

type s3Reader struct {
	s    *S3Store
	ctx  context.Context
	obj  string
	off  int64 // next byte to read
	left int64 // bytes still wanted; < 0: to the end

	body    io.ReadCloser
	cancel  context.CancelFunc
	reopens int
}

func (r *s3Reader) open() error {
	return r.s.retry.do(r.ctx, "s3 get "+r.s.where(r.obj), func(_ context.Context, _ int) error {
		// The body outlives this call, so the deadline is the request's
		// whole transfer, released by Close.
		ctx, cancel := context.WithTimeout(r.ctx, r.s.retry.policy.AttemptTimeout)
		var opts minio.GetObjectOptions
		var err error
		switch {
		case r.left == 0:
			cancel()
			r.body, r.cancel = io.NopCloser(bytes.NewReader(nil)), func() {}
			return nil
		case r.left > 0:
			err = opts.SetRange(r.off, r.off+r.left-1)
		case r.off > 0:
			err = opts.SetRange(r.off, 0)
		}
		if err != nil {
			cancel()
			return err
		}
		body, _, _, err := r.s.core.GetObject(ctx, r.s.cfg.Bucket, r.obj, opts)
		if err != nil {
			cancel()
			if er := minio.ToErrorResponse(err); er.StatusCode == http.StatusRequestedRangeNotSatisfiable {
				r.body, r.cancel = io.NopCloser(bytes.NewReader(nil)), func() {}
				return nil
			}
			return mapErr(err, r.obj)
		}
		r.body, r.cancel = body, cancel
		return nil
	})
}

func (r *s3Reader) Read(p []byte) (int, error) {
	if r.left == 0 {
		return 0, io.EOF
	}
	if r.left > 0 && int64(len(p)) > r.left {
		p = p[:r.left]
	}
	for {
		n, err := r.body.Read(p)
		r.off += int64(n)
		if r.left > 0 {
			r.left -= int64(n)
		}
		// io.EOF is the real end: a body cut short by a broken connection
		// is io.ErrUnexpectedEOF.
		if err == nil || err == io.EOF || r.ctx.Err() != nil || !retryable(err) || r.reopens >= r.s.retry.policy.Attempts {
			return n, err
		}
		// A broken transfer: ask again from where it stopped.
		r.reopens++
		r.body.Close()
		r.cancel()
		if oerr := r.open(); oerr != nil {
			r.body, r.cancel = io.NopCloser(bytes.NewReader(nil)), func() {}
			return n, oerr
		}
		if n > 0 || r.left == 0 {
			return n, nil
		}
	}
}

func (r *s3Reader) Close() error {
	err := r.body.Close()
	r.cancel()
	return err
}

// Stat implements Store.
func (s *S3Store) Stat(ctx context.Context, key string) (ObjectInfo, error) {
	obj, err := s.object(key)
	if err != nil {
		return ObjectInfo{}, err
	}
	var info ObjectInfo
	err = s.retry.do(ctx, "s3 stat "+s.where(obj), func(ctx context.Context, _ int) error {
		st, err := s.core.StatObject(ctx, s.cfg.Bucket, obj, minio.StatObjectOptions{})
		if err != nil {
			return mapErr(err, obj)
		}
		info = ObjectInfo{Key: key, Size: st.Size, ETag: st.ETag, Modified: st.LastModified}
		return nil
	})
	return info, err
}

// List implements Store.
func (s *S3Store) List(ctx context.Context, prefix string) ([]ObjectInfo, error) {
	full := prefix
	if s.cfg.Prefix != "" {
		full = s.cfg.Prefix + "/" + prefix
	}
	var out []ObjectInfo
	err := s.retry.do(ctx, "s3 list "+s.where(full), func(ctx context.Context, _ int) error {
		out = out[:0]
		lctx, cancel := context.WithCancel(ctx)
		defer cancel()
		for o := range s.core.Client.ListObjects(lctx, s.cfg.Bucket, minio.ListObjectsOptions{Prefix: full, Recursive: true}) {
			if o.Err != nil {
				return o.Err
			}
			out = append(out, ObjectInfo{Key: s.key(o.Key), Size: o.Size, ETag: o.ETag, Modified: o.LastModified})
		}
		return ctx.Err()
	})
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, err
}

// Delete implements Store.
func (s *S3Store) Delete(ctx context.Context, key string) error {
	obj, err := s.object(key)
	if err != nil {
		return err
	}
	return s.retry.do(ctx, "s3 delete "+s.where(obj), func(ctx context.Context, _ int) error {
		err := s.core.RemoveObject(ctx, s.cfg.Bucket, obj, minio.RemoveObjectOptions{})
		if errors.Is(mapErr(err, obj), ErrNotFound) {
			return nil
		}
		return err
	})
}

// AbortIncomplete implements IncompleteCleaner: multipart uploads under
// prefix that stale selects are aborted, which frees their parts.
func (s *S3Store) AbortIncomplete(ctx context.Context, prefix string, stale func(key string, started time.Time) bool) (int, error) {
	full := prefix
	if s.cfg.Prefix != "" {
		full = s.cfg.Prefix + "/" + prefix
	}
	type upload struct{ key, id string }
	var found []upload
	err := s.retry.do(ctx, "s3 list multipart uploads "+s.where(full), func(ctx context.Context, _ int) error {
		found = found[:0]
		keyMarker, idMarker := "", ""
		for {
			res, err := s.core.ListMultipartUploads(ctx, s.cfg.Bucket, full, keyMarker, idMarker, "", 1000)
			if err != nil {
				return err
			}
			for _, up := range res.Uploads {
				if strings.HasPrefix(up.Key, full) && stale(s.key(up.Key), up.Initiated) {
					found = append(found, upload{up.Key, up.UploadID})
				}
			}
			if !res.IsTruncated {
				return nil
			}
			keyMarker, idMarker = res.NextKeyMarker, res.NextUploadIDMarker
		}
	})
	if err != nil {
		return 0, err
	}
	for _, up := range found {
		err := s.retry.do(ctx, "s3 abort multipart upload "+s.where(up.key), func(ctx context.Context, _ int) error {
			err := s.core.AbortMultipartUpload(ctx, s.cfg.Bucket, up.key, up.id)
			if minio.ToErrorResponse(err).Code == "NoSuchUpload" {
				return nil
			}
			return err
		})
		if err != nil {
			return 0, err
		}
	}
	return len(found), nil
}

// multipartETag is the ETag S3 gives an object assembled from parts: the
// MD5 of the parts' binary MD5s, a dash and the part count.
func multipartETag(parts []minio.CompletePart) string {
	h := md5.New()
	for _, p := range parts {
		b, err := hex.DecodeString(strings.Trim(p.ETag, "\""))
		if err != nil {
			return ""
		}
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)) + "-" + strconv.Itoa(len(parts))
}
