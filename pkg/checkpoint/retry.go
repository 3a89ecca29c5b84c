package checkpoint

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"sync"
	"syscall"
	"time"

	"github.com/minio/minio-go/v7"
)

// RetryPolicy says how often and how patiently a store retries an
// operation that failed in a way worth retrying.
type RetryPolicy struct {
	// Attempts is the number of tries in all (at least 1).
	Attempts int
	// Base is the first backoff; each retry doubles it up to Cap. The
	// actual wait is drawn uniformly from [0, backoff) ("full jitter"),
	// so that many clients throttled together do not retry together.
	Base, Cap time.Duration
	// AttemptTimeout bounds each try (every network call has a deadline).
	AttemptTimeout time.Duration
}

// DefaultRetry is the policy of S3 stores that set none: 6 tries over at
// most about 6 seconds of backoff, 2 minutes per try.
var DefaultRetry = RetryPolicy{Attempts: 6, Base: 200 * time.Millisecond, Cap: 3 * time.Second, AttemptTimeout: 2 * time.Minute}

// retrier runs operations under a RetryPolicy.
type retrier struct {
	policy RetryPolicy
	// sleep waits d or until ctx ends; tests replace it to run without
	// waiting.
	sleep func(ctx context.Context, d time.Duration) error
}

func newRetrier(p RetryPolicy) *retrier {
	if p.Attempts < 1 {
		p.Attempts = 1
	}
	if p.AttemptTimeout <= 0 {
		p.AttemptTimeout = DefaultRetry.AttemptTimeout
	}
	return &retrier{policy: p, sleep: sleepCtx}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// backoff is the wait before retry number i (0-based): uniform in
// [0, min(Cap, Base*2^i)).
func (r *retrier) backoff(i int) time.Duration {
	d := r.policy.Base << min(i, 30)
	if d <= 0 || (r.policy.Cap > 0 && d > r.policy.Cap) {
		d = r.policy.Cap
	}
	if d <= 0 {
		return 0
	}
	return rand.N(d)
}

// do runs op until it succeeds, fails in a way not worth retrying, runs
// out of attempts, or ctx ends. Each try gets its own deadline. what
// names the operation in the error.
func (r *retrier) do(ctx context.Context, what string, op func(ctx context.Context, attempt int) error) error {
	start := time.Now()
	var err error
	for i := 0; i < r.policy.Attempts; i++ {
		if i > 0 {
			if serr := r.sleep(ctx, r.backoff(i-1)); serr != nil {
				break
			}
		}
		actx, cancel := context.WithTimeout(ctx, r.policy.AttemptTimeout)
		a := &attempt{cancel: cancel}
		err = op(context.WithValue(actx, attemptKey{}, a), i)
		cancel()
		if terr := a.failure(); terr != nil && errors.Is(err, context.Canceled) && ctx.Err() == nil {
			err = terr // failFast ended the attempt
		}
		if err == nil {
			return nil
		}
		if ctx.Err() != nil || !retryable(err) {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if ctx.Err() != nil {
		return fmt.Errorf("%s: %w (cancelled while retrying: %v)", what, err, ctx.Err())
	}
	return fmt.Errorf("%s: %w (gave up after %d attempts over %v)", what, err, r.policy.Attempts, time.Since(start).Round(time.Millisecond))
}

// retryableCodes are S3 error codes that say "try again later".
var retryableCodes = map[string]bool{
	"SlowDown": true, "SlowDownWrite": true, "SlowDownRead": true,
	"RequestTimeout": true, "InternalError": true, "ServiceUnavailable": true,
	"Throttling": true, "ThrottlingException": true, "RequestLimitExceeded": true,
	"RequestThrottled": true, "ConditionalRequestConflict": true,
}

// retryable tells the failures worth retrying (throttling, server errors,
// timeouts, broken or refused connections) from those that will fail
// again (bad credentials, missing bucket, a failed precondition, a
// certificate problem).
func retryable(err error) bool {
	if errors.Is(err, ErrPrecondition) || errors.Is(err, ErrNotFound) {
		return false
	}
	var er minio.ErrorResponse
	if errors.As(err, &er) && (er.Code != "" || er.StatusCode != 0) {
		if retryableCodes[er.Code] {
			return true
		}
		switch er.StatusCode {
		case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
			http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			return true
		}
		return false
	}
	var uae x509.UnknownAuthorityError
	var hne x509.HostnameError
	var cie x509.CertificateInvalidError
	if errors.As(err, &uae) || errors.As(err, &hne) || errors.As(err, &cie) {
		return false
	}
	// The attempt's own deadline (the caller's context is checked before
	// asking) and broken transports are worth another try.
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.EPIPE) ||
		errors.Is(err, syscall.ECONNABORTED) || errors.Is(err, syscall.ETIMEDOUT) || errors.Is(err, syscall.EHOSTUNREACH) {
		return true
	}
	// Dial, read and write failures and timeouts are net.Errors; a
	// *url.Error is one too, but only says which request failed: look
	// through it, so that "server gave HTTP response to HTTPS client" or
	// a TLS handshake with a plain HTTP server is not retried.
	for e := err; e != nil; e = errors.Unwrap(e) {
		if _, isURL := e.(*url.Error); isURL {
			continue
		}
		if _, ok := e.(net.Error); ok {
			return true
		}
	}
	return false
}

// attempt lets failFast end one try as soon as its transport fails.
type attempt struct {
	cancel context.CancelFunc
	mu     sync.Mutex
	err    error
}

type attemptKey struct{}

func (a *attempt) fail(err error) {
	a.mu.Lock()
	if a.err == nil {
		a.err = err
	}
	a.mu.Unlock()
	a.cancel()
}

func (a *attempt) failure() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err
}

// failFast is the S3 client's transport. When a request fails in the
// transport (refused, reset), minio-go waits up to 200 ms before it gives
// the error back, even with its own retries off; failFast cancels the try
// at once instead and the retrier reports the transport's error.
type failFast struct{ next http.RoundTripper }

func (f failFast) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := f.next.RoundTrip(req)
	if err != nil {
		if a, ok := req.Context().Value(attemptKey{}).(*attempt); ok {
			a.fail(err)
		}
	}
	return resp, err
}
