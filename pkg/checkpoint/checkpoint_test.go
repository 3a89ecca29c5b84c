package checkpoint_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/minio/minio-go/v7"
	"github.com/minio/minio-go/v7/pkg/credentials"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
)

func TestMain(m *testing.M) {
	// Re-executed by TestProcessKilledBetweenDataAndManifest.
	if url := os.Getenv(childEnv); url != "" {
		os.Exit(killedChild(url))
	}
	os.Exit(m.Run())
}

func compactJSON(b []byte) string {
	var out bytes.Buffer
	if err := json.Compact(&out, b); err != nil {
		return "invalid JSON: " + err.Error()
	}
	return out.String()
}

func sameState(t *testing.T, got, want *checkpoint.State) {
	t.Helper()
	if got.Step != want.Step || got.Epoch != want.Epoch || got.EpochSamples != want.EpochSamples || got.GlobalSamples != want.GlobalSamples ||
		got.World != want.World || got.Seed != want.Seed || got.Meta["job"] != want.Meta["job"] || compactJSON(got.Spec) != compactJSON(want.Spec) {
		t.Errorf("position not restored: got step %d epoch %d at %d, %d samples, world %d, seed %d, meta %v, spec %s",
			got.Step, got.Epoch, got.EpochSamples, got.GlobalSamples, got.World, got.Seed, got.Meta, got.Spec)
	}
	if len(got.RNG) != len(want.RNG) || (len(got.RNG) > 0 && (got.RNG[0].Name != want.RNG[0].Name || !slices.Equal(got.RNG[0].State, want.RNG[0].State))) {
		t.Errorf("RNG state: got %+v, want %+v", got.RNG, want.RNG)
	}
	if len(got.Tensors) != len(want.Tensors) {
		t.Fatalf("%d tensors, want %d", len(got.Tensors), len(want.Tensors))
	}
	for _, wt := range want.Tensors {
		gt := got.Tensor(wt.Name)
		if gt == nil || !slices.Equal(gt.Shape, wt.Shape) || !slices.Equal(gt.Data, wt.Data) {
			t.Errorf("tensor %s differs", wt.Name)
		}
	}
}

// Save and load on both stores, with several objects, multipart parts and
// tensors that straddle parts, under both checksums.
func TestSaveLoadRoundTrip(t *testing.T) {
	eachStore(t, func(t *testing.T, ts testStore) {
		ctx := context.Background()
		for _, alg := range []string{checkpoint.ChecksumCRC32C, checkpoint.ChecksumSHA256} {
			m := checkpoint.NewManager(ts.store, "rt-"+alg, 3, zaptest.NewLogger(t), checkpoint.PartSize(5<<20),
				checkpoint.Parallelism(3), checkpoint.MaxObjectSize(10<<20), checkpoint.WithChecksum(alg))
			if _, _, err := m.Load(ctx, -1); !errors.Is(err, checkpoint.ErrNoCheckpoint) {
				t.Fatalf("empty store: %v, want ErrNoCheckpoint", err)
			}
			// 12.6 MB: two objects (10 MiB and the rest), three parts.
			want := randomState(100, 1, 1_000_003, 2_000_000, 0, 150_000)
			info, err := m.Save(ctx, want)
			if err != nil {
				t.Fatal(err)
			}
			if !info.Valid || info.Step != 100 || !strings.Contains(info.URL, "step-000000000100") {
				t.Errorf("info = %+v", info)
			}
			got, linfo, err := m.Load(ctx, -1)
			if err != nil {
				t.Fatal(err)
			}
			sameState(t, got, want)
			if linfo.Step != 100 || linfo.Size != info.Size {
				t.Errorf("load info %+v, save info %+v", linfo, info)
			}
			objs, _ := ts.store.List(ctx, "rt-"+alg+"/step-000000000100/")
			if len(objs) != 3 { // two data objects and the manifest
				t.Errorf("objects %v, want two data objects and a manifest", objs)
			}
			if s, err := m.Latest(ctx); err != nil || s != 100 {
				t.Errorf("latest = %d, %v", s, err)
			}
		}
	})
}

// A byte flipped in a stored object is detected; the previous checkpoint
// is used, and the corruption is reported as an event.
func TestCorruptCheckpointFallsBackToPrevious(t *testing.T) {
	eachStore(t, func(t *testing.T, ts testStore) {
		ctx := context.Background()
		var ev events
		m := newManager(t, ts.store, 5, checkpoint.PartSize(5<<20), checkpoint.Observe(ev.add))
		for _, s := range []int64{10, 20} {
			if _, err := m.Save(ctx, randomState(s, uint64(s), 3_000_000)); err != nil {
				t.Fatal(err)
			}
		}
		objs, err := ts.store.List(ctx, "jobs/j1/step-000000000020/data-")
		if err != nil || len(objs) != 1 {
			t.Fatalf("data objects of step 20: %v %v", objs, err)
		}
		flipByte(t, ts.file(objs[0].Key), 7_654_321)

		got, info, err := m.Load(ctx, -1)
		if err != nil || got.Step != 10 || info.Step != 10 {
			t.Fatalf("Load after corruption: %v, %v; want step 10", info, err)
		}
		sameState(t, got, randomState(10, 10, 3_000_000))
		bad := ev.of(checkpoint.EventInvalid)
		if len(bad) != 1 || bad[0].Step != 20 || !strings.Contains(bad[0].Err.Error(), "corrupt") {
			t.Errorf("invalid events %+v, want one for step 20 saying corrupt", bad)
		}
		list, err := m.List(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || list[0].Valid || !strings.Contains(list[0].Problem, "CRC32C") || !list[1].Valid {
			t.Errorf("List(verify) = %+v, want step 20 invalid (CRC32C) and step 10 valid", list)
		}
		// The exact step is refused rather than replaced by another.
		if _, _, err := m.LoadStep(ctx, 20); err == nil || !strings.Contains(err.Error(), "corrupt") {
			t.Errorf("LoadStep(20) = %v, want a corruption error", err)
		}
	})
}

// A truncated object is caught by the cheap check that List does without
// reading data.
func TestTruncatedObjectIsPartial(t *testing.T) {
	ts := fileStore(t)
	ctx := context.Background()
	m := newManager(t, ts.store, 5)
	for _, s := range []int64{10, 20} {
		if _, err := m.Save(ctx, randomState(s, 1, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	objs, _ := ts.store.List(ctx, "jobs/j1/step-000000000020/data-")
	if err := os.Truncate(ts.file(objs[0].Key), 100); err != nil {
		t.Fatal(err)
	}
	list, err := m.List(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if list[0].Valid || !strings.Contains(list[0].Problem, "partial") {
		t.Errorf("List = %+v, want step 20 partial", list)
	}
	if got, _, err := m.Load(ctx, -1); err != nil || got.Step != 10 {
		t.Errorf("Load = %v, %v; want step 10", got, err)
	}
}

const childEnv = "CHECKPOINT_TEST_KILLED_CHILD"

// killedChild runs in a child process: it saves step 10, then saves step
// 20 and kills itself (SIGKILL) between the data and the manifest.
func killedChild(url string) int {
	store, err := checkpoint.Open(url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	m := checkpoint.NewManager(store, "jobs/j1", 5, zap.NewNop(), checkpoint.PartSize(5<<20), checkpoint.Observe(func(e checkpoint.Event) {
		if e.Kind == checkpoint.EventDataWritten && e.Step == 20 {
			_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			time.Sleep(time.Hour) // the signal is on its way
		}
	}))
	ctx := context.Background()
	for _, s := range []int64{10, 20} {
		if _, err := m.Save(ctx, randomState(s, uint64(s), 2_000_000)); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
	}
	return 0 // not reached
}

// A process killed between data and manifest leaves no checkpoint; its
// objects are removed once a newer checkpoint commits.
func TestProcessKilledBetweenDataAndManifest(t *testing.T) {
	eachStore(t, func(t *testing.T, ts testStore) {
		url := ts.store.URL()
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), childEnv+"="+url)
		if ts.srv != nil {
			cmd.Env = append(cmd.Env, versitygw.Env()...)
		}
		out, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			t.Fatalf("child: %v, want killed by SIGKILL; output:\n%s", err, out)
		}
		ctx := context.Background()
		m := newManager(t, ts.store, 5, checkpoint.PartSize(5<<20))
		orphans, _ := ts.store.List(ctx, "jobs/j1/step-000000000020/")
		if len(orphans) != 1 || !strings.Contains(orphans[0].Key, "data-") {
			t.Fatalf("step 20 holds %v, want its data object and no manifest", orphans)
		}
		got, _, err := m.Load(ctx, -1)
		if err != nil || got.Step != 10 {
			t.Fatalf("Load: %v, %v; want step 10", got, err)
		}
		list, _ := m.List(ctx, false)
		if len(list) != 2 || list[0].Step != 20 || list[0].Valid || !strings.Contains(list[0].Problem, "never committed") {
			t.Errorf("List = %+v, want step 20 uncommitted", list)
		}
		if s, err := m.Latest(ctx); err != nil || s != 10 {
			t.Errorf("latest = %d, %v; want 10 (the pointer moves only after a manifest)", s, err)
		}
		if _, err := m.Save(ctx, randomState(30, 30, 1000)); err != nil {
			t.Fatal(err)
		}
		if left, _ := ts.store.List(ctx, "jobs/j1/step-000000000020/"); len(left) != 0 {
			t.Errorf("orphans of step 20 after a newer commit: %v", left)
		}
		list, _ = m.List(ctx, true)
		if len(list) != 2 || list[0].Step != 30 || list[1].Step != 10 || !list[0].Valid || !list[1].Valid {
			t.Errorf("List = %+v, want steps 30 and 10, valid", list)
		}
	})
}

// The S3 server killed in the middle of an asynchronous upload: the save
// fails and is reported, the caller was never held up, no checkpoint is
// committed, and the next save succeeds once the server is back; the
// abandoned multipart upload is cleaned up.
func TestS3ServerKilledDuringUpload(t *testing.T) {
	ts := s3Store(t, fastRetry)
	ctx := context.Background()
	var once sync.Once
	killed := make(chan struct{})
	store := tapStore{Store: ts.store, afterPart: func(key string, n int) {
		if strings.Contains(key, "step-000000000020/data-") {
			once.Do(func() {
				ts.srv.Kill()
				close(killed)
			})
		}
	}}
	m := checkpoint.NewManager(store, "jobs/j1", 5, zaptest.NewLogger(t), checkpoint.PartSize(5<<20), checkpoint.Parallelism(2))
	results := make(chan checkpoint.Result, 4)
	saver := checkpoint.NewAsyncSaver(m, checkpoint.WaitIfBusy, func(r checkpoint.Result) { results <- r })
	defer saver.Close()

	if _, err := saver.Save(ctx, randomState(10, 10, 1000)); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.Err != nil {
		t.Fatal(r.Err)
	}
	// 24 MB: five parts; the server dies after the first.
	if _, err := saver.Save(ctx, randomState(20, 20, 6_000_000)); err != nil {
		t.Fatal(err)
	}
	<-killed
	// "Training" goes on while the upload fails.
	steps := 0
	var r checkpoint.Result
wait:
	for {
		select {
		case r = <-results:
			break wait
		case <-time.After(time.Millisecond):
			steps++
		}
	}
	if r.Err == nil || r.Step != 20 {
		t.Fatalf("save of step 20 with the server dead: %+v, want a failure", r)
	}
	t.Logf("upload failed after %v (%d loop turns meanwhile): %v", r.Upload, steps, r.Err)
	if steps == 0 {
		t.Error("the caller made no progress while the upload failed")
	}
	if err := ts.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _, err := m.Load(ctx, -1); err != nil || st.Step != 10 {
		t.Fatalf("after the failed save Load = %v, %v; want step 10 (nothing committed)", st, err)
	}
	if _, err := saver.Save(ctx, randomState(30, 30, 6_000_000)); err != nil {
		t.Fatal(err)
	}
	if r := <-results; r.Err != nil {
		t.Fatalf("save after the restart: %v", r.Err)
	}
	st, _, err := m.Load(ctx, -1)
	if err != nil || st.Step != 30 {
		t.Fatalf("Load = %v, %v; want step 30", st, err)
	}
	sameState(t, st, randomState(30, 30, 6_000_000))
	if left, _ := ts.store.List(ctx, "jobs/j1/step-000000000020/"); len(left) != 0 {
		t.Errorf("objects of the failed save remain: %v", left)
	}
	mc, err := minio.NewCore(ts.srv.Addr, &minio.Options{Creds: credentials.NewStaticV4(versitygw.AccessKey, versitygw.SecretKey, ""), Region: versitygw.Region, BucketLookup: minio.BucketLookupPath})
	if err != nil {
		t.Fatal(err)
	}
	ups, err := mc.ListMultipartUploads(ctx, bucket, "pre/fix/", "", "", "", 100)
	if err != nil {
		t.Fatal(err)
	}
	if len(ups.Uploads) != 0 {
		t.Errorf("unfinished multipart uploads remain: %+v", ups.Uploads)
	}
}

// Requests that fail with a refused connection are retried; a server that
// comes back within the retry window lets the operation succeed.
func TestS3RetriesUntilTheServerIsBack(t *testing.T) {
	ts := s3Store(t, checkpoint.RetryPolicy{Attempts: 8, Base: 100 * time.Millisecond, Cap: time.Second, AttemptTimeout: 10 * time.Second})
	ctx := context.Background()
	m := newManager(t, ts.store, 2)
	ts.srv.Kill()
	restarted := make(chan error, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		restarted <- ts.srv.Restart(ctx)
	}()
	if _, err := m.Save(ctx, randomState(5, 5, 1000)); err != nil {
		t.Fatalf("save across a server restart: %v", err)
	}
	if err := <-restarted; err != nil {
		t.Fatal(err)
	}
	if st, _, err := m.Load(ctx, -1); err != nil || st.Step != 5 {
		t.Fatalf("Load = %v, %v", st, err)
	}
}

// A store that cannot be read is not a corrupt checkpoint: Load fails
// loudly instead of falling back to an older one, and List says why.
func TestUnreadableIsNotInvalid(t *testing.T) {
	ts := s3Store(t, fastRetry)
	ctx := context.Background()
	var ev events
	m := newManager(t, ts.store, 5, checkpoint.Observe(ev.add))
	for _, s := range []int64{10, 20} {
		if _, err := m.Save(ctx, randomState(s, 1, 1000)); err != nil {
			t.Fatal(err)
		}
	}
	ts.srv.Kill()
	_, _, err := m.Load(ctx, -1)
	if err == nil || errors.Is(err, checkpoint.ErrNoCheckpoint) || errors.Is(err, checkpoint.ErrInvalid) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Load with the store down: %v; want the connection error", err)
	}
	if _, err := m.List(ctx, false); err == nil {
		t.Error("List with the store down succeeded")
	}
	if bad := ev.of(checkpoint.EventInvalid); len(bad) != 0 {
		t.Errorf("an unreachable store was reported as invalid checkpoints: %+v", bad)
	}
	if err := ts.srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if st, _, err := m.Load(ctx, -1); err != nil || st.Step != 20 {
		t.Errorf("Load after the restart: %v, %v", st, err)
	}
}

// Errors that retrying cannot fix fail at once, with a clear message.
func TestS3PermanentErrorsFailClearly(t *testing.T) {
	srv := versitygw.Start(t, bucket)
	ctx := context.Background()
	for _, tc := range []struct {
		name, bucket, secret, want string
	}{
		{"wrong secret", bucket, "wrong", "access denied"},
		{"missing bucket", "nosuchbucket", versitygw.SecretKey, "bucket"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := srv.Config(tc.bucket, "")
			cfg.Creds = credentials.NewStaticV4(versitygw.AccessKey, tc.secret, "")
			s, err := checkpoint.NewS3Store(cfg)
			if err != nil {
				t.Fatal(err)
			}
			start := time.Now()
			_, err = newManager(t, s, 1).Save(ctx, randomState(1, 1, 10))
			if err == nil || !strings.Contains(strings.ToLower(err.Error()), tc.want) || strings.Contains(err.Error(), "gave up") {
				t.Errorf("Save = %v; want an immediate error mentioning %q", err, tc.want)
			}
			if d := time.Since(start); d > 5*time.Second {
				t.Errorf("took %v: a permanent error was retried", d)
			}
			t.Logf("%v", err)
		})
	}
}

// Two saves of the same step race; conditional commits let exactly one
// win and the loser reports it, leaving the winner intact.
func TestConcurrentCommitsOfOneStep(t *testing.T) {
	eachStore(t, func(t *testing.T, ts testStore) {
		ctx := context.Background()
		m := newManager(t, ts.store, 5)
		errs := make([]error, 4)
		var wg sync.WaitGroup
		for i := range errs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, errs[i] = m.Save(ctx, randomState(7, uint64(i), 50_000))
			}()
		}
		wg.Wait()
		won := -1
		for i, err := range errs {
			switch {
			case err == nil && won >= 0:
				t.Fatalf("saves %d and %d both committed step 7", won, i)
			case err == nil:
				won = i
			case !errors.Is(err, checkpoint.ErrStepExists):
				t.Errorf("save %d: %v, want ErrStepExists", i, err)
			}
		}
		if won < 0 {
			t.Fatal("no save committed")
		}
		st, _, err := m.LoadStep(ctx, 7)
		if err != nil {
			t.Fatal(err)
		}
		sameState(t, st, randomState(7, uint64(won), 50_000))
		if _, err := m.Save(ctx, randomState(7, 99, 10)); !errors.Is(err, checkpoint.ErrStepExists) {
			t.Errorf("saving a committed step again: %v, want ErrStepExists", err)
		}
	})
}

// Conditional writes as the stores implement them.
func TestConditionalWrites(t *testing.T) {
	eachStore(t, func(t *testing.T, ts testStore) {
		ctx := context.Background()
		put := func(key, body string, c checkpoint.Condition) error {
			up, err := ts.store.Create(ctx, key, int64(len(body)), 1<<20, c)
			if err != nil {
				return err
			}
			if err := up.WritePart(ctx, 1, []byte(body)); err != nil {
				return err
			}
			if err := up.Complete(ctx); err != nil {
				_ = up.Abort(ctx)
				return err
			}
			return nil
		}
		if err := put("a/b", "one", checkpoint.Condition{IfAbsent: true}); err != nil {
			t.Fatal(err)
		}
		if err := put("a/b", "two", checkpoint.Condition{IfAbsent: true}); !errors.Is(err, checkpoint.ErrPrecondition) {
			t.Errorf("IfAbsent on an existing object: %v", err)
		}
		info, err := ts.store.Stat(ctx, "a/b")
		if err != nil || info.Size != 3 {
			t.Fatalf("Stat = %+v, %v", info, err)
		}
		if err := put("a/b", "three", checkpoint.Condition{IfMatch: info.ETag}); err != nil {
			t.Errorf("IfMatch with the current ETag: %v", err)
		}
		if err := put("a/b", "four", checkpoint.Condition{IfMatch: info.ETag}); !errors.Is(err, checkpoint.ErrPrecondition) {
			t.Errorf("IfMatch with a stale ETag: %v", err)
		}
		rc, err := ts.store.Read(ctx, "a/b", 1, 3)
		if err != nil {
			t.Fatal(err)
		}
		b := make([]byte, 10)
		n, _ := rc.Read(b)
		rc.Close()
		if string(b[:n]) != "hre" {
			t.Errorf("read %q, want %q", b[:n], "hre")
		}
		if _, err := ts.store.Stat(ctx, "a/none"); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Errorf("Stat(missing) = %v", err)
		}
		if _, err := ts.store.Read(ctx, "a/none", 0, -1); !errors.Is(err, checkpoint.ErrNotFound) {
			t.Errorf("Read(missing) = %v", err)
		}
	})
}

// Retention keeps the newest K and every M-th, and moves latest only
// forward.
func TestRetentionKeepsNewestAndEveryMth(t *testing.T) {
	ts := fileStore(t)
	ctx := context.Background()
	m := newManager(t, ts.store, 2, checkpoint.KeepEvery(4))
	var removed []int64
	for s := int64(1); s <= 9; s++ {
		info, err := m.Save(ctx, randomState(s, uint64(s), 100))
		if err != nil {
			t.Fatal(err)
		}
		removed = append(removed, info.Removed...)
	}
	// Each save says which checkpoints it made retention remove, once.
	slices.Sort(removed)
	if !slices.Equal(removed, []int64{1, 2, 3, 5, 6, 7}) {
		t.Errorf("saves reported removing %v, want [1 2 3 5 6 7]", removed)
	}
	list, err := m.List(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	var steps []int64
	for _, i := range list {
		steps = append(steps, i.Step)
		if !i.Valid {
			t.Errorf("step %d invalid: %s", i.Step, i.Problem)
		}
	}
	if !slices.Equal(steps, []int64{9, 8, 4}) {
		t.Errorf("kept steps %v, want [9 8 4]", steps)
	}
	if got, _, err := m.Load(ctx, 7); err != nil || got.Step != 4 {
		t.Errorf("Load(maxStep 7) = %v, %v; want step 4", got, err)
	}
	// A save of an older step (a run resumed from step 4) does not move
	// latest back.
	if _, err := m.Save(ctx, randomState(5, 5, 100)); err != nil {
		t.Fatal(err)
	}
	if s, _ := m.Latest(ctx); s != 9 {
		t.Errorf("latest = %d after saving step 5, want 9", s)
	}
}

// Resuming from an older step clears the newer checkpoints so that the new
// run can commit its own at those steps.
func TestDiscardNewer(t *testing.T) {
	eachStore(t, func(t *testing.T, ts testStore) {
		ctx := context.Background()
		m := newManager(t, ts.store, 10)
		for _, s := range []int64{5, 10, 15} {
			if _, err := m.Save(ctx, randomState(s, uint64(s), 1000)); err != nil {
				t.Fatal(err)
			}
		}
		newer, err := m.Newer(ctx, 5)
		if err != nil || !slices.Equal(newer, []int64{15, 10}) {
			t.Fatalf("Newer(5) = %v, %v", newer, err)
		}
		if _, err := m.Save(ctx, randomState(10, 99, 1000)); !errors.Is(err, checkpoint.ErrStepExists) {
			t.Fatalf("save over a committed step: %v", err)
		}
		if err := m.DiscardNewer(ctx, 5); err != nil {
			t.Fatal(err)
		}
		if s, _ := m.Latest(ctx); s != 5 {
			t.Errorf("latest = %d after discarding, want 5", s)
		}
		if _, err := m.Save(ctx, randomState(10, 99, 1000)); err != nil {
			t.Fatalf("save of step 10 of the new run: %v", err)
		}
		got, _, err := m.Load(ctx, -1)
		if err != nil {
			t.Fatal(err)
		}
		sameState(t, got, randomState(10, 99, 1000))
	})
}

// A newer save waits for or skips the one in flight, by policy; the
// snapshot is taken when Save returns, whatever the caller does next.
func TestAsyncSaverPolicies(t *testing.T) {
	for _, tc := range []struct {
		name   string
		policy checkpoint.BusyPolicy
		begin  bool // Begin and Pending.Wait instead of Save
	}{
		{"save/wait", checkpoint.WaitIfBusy, false},
		{"save/skip", checkpoint.SkipIfBusy, false},
		{"begin/wait", checkpoint.WaitIfBusy, true},
		{"begin/skip", checkpoint.SkipIfBusy, true},
	} {
		policy := tc.policy
		t.Run(tc.name, func(t *testing.T) {
			ts := fileStore(t)
			ctx := context.Background()
			release := make(chan struct{})
			var hold sync.Once
			store := tapStore{Store: ts.store, afterPart: func(key string, _ int) {
				if strings.Contains(key, "step-000000000001/") {
					hold.Do(func() { <-release })
				}
			}}
			m := newManager(t, store, 5)
			results := make(chan checkpoint.Result, 4)
			saver := checkpoint.NewAsyncSaver(m, policy, func(r checkpoint.Result) { results <- r })
			defer saver.Close()
			save := func(st *checkpoint.State) error {
				if !tc.begin {
					_, err := saver.Save(ctx, st)
					return err
				}
				p, err := saver.Begin(ctx, st)
				if err != nil {
					return err
				}
				_, err = p.Wait(ctx)
				return err
			}

			st := randomState(1, 1, 10_000)
			want := randomState(1, 1, 10_000)
			if err := save(st); err != nil {
				t.Fatal(err)
			}
			for i := range st.Tensors[0].Data {
				st.Tensors[0].Data[i] = 42 // training moves on
			}
			second := make(chan error, 1)
			go func() { second <- save(randomState(2, 2, 10_000)) }()
			switch policy {
			case checkpoint.SkipIfBusy:
				if err := <-second; !errors.Is(err, checkpoint.ErrBusy) {
					t.Errorf("second save while busy: %v, want ErrBusy", err)
				}
				close(release)
			case checkpoint.WaitIfBusy:
				select {
				case err := <-second:
					t.Fatalf("second save returned while the first was in flight: %v", err)
				case <-time.After(100 * time.Millisecond):
				}
				close(release)
				if err := <-second; err != nil {
					t.Fatal(err)
				}
			}
			if r := <-results; r.Err != nil || r.Step != 1 {
				t.Fatalf("first result %+v", r)
			}
			if err := saver.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			got, _, err := m.LoadStep(ctx, 1)
			if err != nil {
				t.Fatal(err)
			}
			sameState(t, got, want)
			_, _, err = m.LoadStep(ctx, 2)
			if (err == nil) != (policy == checkpoint.WaitIfBusy) {
				t.Errorf("step 2 loads: %v (policy %v)", err, policy)
			}
		})
	}
}

// Rank-local state is refused when the ring size changes; global state
// resumes at any size.
func TestCheckWorld(t *testing.T) {
	st := randomState(1, 1, 10, 10)
	for _, w := range []int{1, 2, 4} {
		if err := st.CheckWorld(w); err != nil {
			t.Errorf("global state, world %d: %v", w, err)
		}
	}
	st.Tensors[1].Local, st.Tensors[1].Rank = true, 1
	st.RNG[0].Local = true
	if err := st.CheckWorld(2); err != nil {
		t.Errorf("same world: %v", err)
	}
	err := st.CheckWorld(4)
	if !errors.Is(err, checkpoint.ErrNotReshardable) || !strings.Contains(err.Error(), "tensor tb (rank 1)") || !strings.Contains(err.Error(), "RNG data_order") {
		t.Errorf("CheckWorld(4) = %v", err)
	}
	// Local flags survive a round trip.
	ts := fileStore(t)
	m := newManager(t, ts.store, 1)
	if _, err := m.Save(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	got, _, err := m.Load(context.Background(), -1)
	if err != nil {
		t.Fatal(err)
	}
	if err := got.CheckWorld(4); !errors.Is(err, checkpoint.ErrNotReshardable) {
		t.Errorf("after a round trip: %v", err)
	}
}

// Saving streams from the tensors and loading reads into one buffer:
// memory beyond the state is bounded by parts x parallelism, not the
// checkpoint size.
func TestMemoryIsBoundedByParts(t *testing.T) {
	const floats = 16 << 20 // 64 MiB of state
	const partSize, parallel = 5 << 20, 2
	eachStore(t, func(t *testing.T, ts testStore) {
		ctx := context.Background()
		m := newManager(t, ts.store, 2, checkpoint.PartSize(partSize), checkpoint.Parallelism(parallel))
		// Two tensors, so that one part straddles them and needs a copy.
		st := randomState(1, 1, floats/2+1, floats/2-1)
		allocated := func(f func()) uint64 {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			f()
			runtime.ReadMemStats(&after)
			return after.TotalAlloc - before.TotalAlloc
		}
		var err error
		saved := allocated(func() { _, err = m.Save(ctx, st) })
		if err != nil {
			t.Fatal(err)
		}
		var got *checkpoint.State
		loaded := allocated(func() { got, _, err = m.Load(ctx, -1) })
		if err != nil {
			t.Fatal(err)
		}
		sameState(t, got, st)
		size := uint64(st.Bytes())
		t.Logf("state %d MiB: save allocated %.1f MiB, load %.1f MiB", size>>20, float64(saved)/(1<<20), float64(loaded)/(1<<20))
		bound := uint64(2*parallel*partSize + 8<<20)
		if saved > bound {
			t.Errorf("save allocated %d bytes, more than 2 x parts x parallelism + 8 MiB = %d", saved, bound)
		}
		if loaded > size+bound {
			t.Errorf("load allocated %d bytes for %d bytes of state, more than the state + %d", loaded, size, bound)
		}
	})
}
