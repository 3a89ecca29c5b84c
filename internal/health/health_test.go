package health

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
)

func TestProbes(t *testing.T) {
	var why atomic.Value
	why.Store("")
	s, err := Serve("127.0.0.1:0", func(context.Context) error {
		if w := why.Load().(string); w != "" {
			return errors.New(w)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	get := func(path string) (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + s.Addr() + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := get("/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 200 || !strings.Contains(body, "ready") {
		t.Errorf("/readyz when ready: %d %q", code, body)
	}
	why.Store("etcd has no quorum")
	if code, body := get("/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "etcd has no quorum") {
		t.Errorf("/readyz when not ready: %d %q; want 503 with the reason", code, body)
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Errorf("/healthz while not ready: %d; a process that is not ready is still alive", code)
	}
	if code, _ := get("/nope"); code != http.StatusNotFound {
		t.Errorf("/nope: %d", code)
	}
}
