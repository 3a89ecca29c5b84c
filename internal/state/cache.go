package state

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// Cache is the scheduler's view of the hot state (workers, claims, the
// active jobs' keys), read once and then kept up to date by watches, so
// that a decision costs what changed rather than a read of everything in
// play.
//
// Two watches feed it: one on the range from active/ to the end of jobs/
// (active markers, claims, the jobs' keys: what the coordinator's
// transactions write, so that its own writes arrive in order on one
// stream) and one on workers/ (registrations, written by the workers).
// Rank 0's progress (progress/<job>) is not watched; the scheduler reads
// it for the jobs it decides about (FetchProgress). A job's keys are kept
// while its active marker exists: a marker that appears brings a read of
// the job at that revision, one that goes drops the job.
//
// A Cache belongs to one goroutine (the scheduler's loop); it is not safe
// for concurrent use. The snapshot it returns is updated in place by the
// next Apply, so a pass must finish with it before applying more events.
type Cache struct {
	cli     *clientv3.Client
	k       Keys
	timeout time.Duration // of each read

	snap    *Snapshot
	workers map[string]Versioned[*pb.Worker] // every registration, even one whose claim is damaged
	jobKVs  map[string]map[string]*mvccpb.KeyValue
	// jobsRev and workersRev are the revisions through which each watch
	// has been applied.
	jobsRev, workersRev int64

	// churn counts deletions from the view's maps since they were made
	// (refreshMaps).
	churn int

	jobsWatch, workersWatch clientv3.WatchChan
	cancel                  context.CancelFunc

	// LoadedKeys is how many keys the full load read.
	LoadedKeys int
}

// ErrWatchEnded means a watch of the cache ended (etcd compacted the
// revision it needed, or the client closed): load a new cache.
var ErrWatchEnded = errors.New("state: the cache's watch ended")

// LoadCache reads the hot state at one revision and starts the watches
// that keep it current. They stop with ctx, or with Close. Each read is
// bounded by timeout.
func LoadCache(ctx context.Context, cli *clientv3.Client, k Keys, timeout time.Duration) (*Cache, error) {
	rctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	snap, err := ReadActive(rctx, cli, k)
	if err != nil {
		return nil, err
	}
	c := &Cache{cli: cli, k: k, timeout: timeout, snap: snap, workers: map[string]Versioned[*pb.Worker]{}, jobKVs: map[string]map[string]*mvccpb.KeyValue{},
		jobsRev: snap.Rev, workersRev: snap.Rev, LoadedKeys: snap.KeysRead}
	for id, w := range snap.Workers {
		c.workers[id] = w
	}
	for key := range snap.Damaged {
		if id, ok := strings.CutPrefix(key, k.Claims()); ok {
			// ReadActive left the worker out; keep its registration.
			if w, ok := c.readWorker(rctx, id, snap.Rev); ok {
				c.workers[id] = w
			}
		}
	}
	for id, j := range snap.Jobs {
		kvs := map[string]*mvccpb.KeyValue{}
		for _, kv := range j.KVs {
			if !strings.HasPrefix(string(kv.Key), k.Progresses()) {
				kvs[string(kv.Key)] = kv
			}
		}
		c.jobKVs[id] = kvs
	}
	// Progress is read for the jobs decided about, not kept.
	for id := range snap.Jobs {
		c.rebuild(id)
	}
	wctx, wcancel := context.WithCancel(ctx)
	c.cancel = wcancel
	from := clientv3.WithRev(snap.Rev + 1)
	c.jobsWatch = cli.Watch(wctx, k.Active(), clientv3.WithRange(clientv3.GetPrefixRangeEnd(k.Jobs())), from)
	c.workersWatch = cli.Watch(wctx, k.Workers(), clientv3.WithPrefix(), from)
	return c, nil
}

func (c *Cache) readWorker(ctx context.Context, id string, rev int64) (Versioned[*pb.Worker], bool) {
	resp, err := c.cli.Get(ctx, c.k.Worker(id), clientv3.WithRev(rev))
	if err != nil || len(resp.Kvs) == 0 {
		return Versioned[*pb.Worker]{}, false
	}
	kv := resp.Kvs[0]
	w := &pb.Worker{}
	if Unmarshal(kv.Value, w) != nil {
		return Versioned[*pb.Worker]{}, false
	}
	return Versioned[*pb.Worker]{w, kv.ModRevision, kv.CreateRevision, kv.Lease}, true
}

// Close stops the watches.
func (c *Cache) Close() { c.cancel() }

// Snapshot is the current view. It is the cache's own: valid until the
// next Apply or FetchProgress.
func (c *Cache) Snapshot() *Snapshot { return c.snap }

// JobsRev is the revision through which the watch of jobs and claims has
// been applied: the coordinator's own transactions are seen once it
// reaches theirs. WorkersRev is the same for the workers' watch.
func (c *Cache) JobsRev() int64    { return c.jobsRev }
func (c *Cache) WorkersRev() int64 { return c.workersRev }

// Watches are the channels whose responses ApplyJobs and ApplyWorkers
// take.
func (c *Cache) Watches() (jobs, workers clientv3.WatchChan) { return c.jobsWatch, c.workersWatch }

// ApplyJobs brings a response of the jobs and claims watch into the view.
// It reports whether what changed can alter a decision; an error
// (ErrWatchEnded, or a read that failed) means the cache must be loaded
// anew.
func (c *Cache) ApplyJobs(ctx context.Context, wr clientv3.WatchResponse) (changed bool, _ error) {
	changed, err := c.apply(ctx, wr)
	if err == nil {
		c.jobsRev = max(c.jobsRev, lastRev(wr))
	}
	return changed, err
}

// ApplyWorkers brings a response of the workers' watch into the view.
func (c *Cache) ApplyWorkers(ctx context.Context, wr clientv3.WatchResponse) (changed bool, _ error) {
	changed, err := c.apply(ctx, wr)
	if err == nil {
		c.workersRev = max(c.workersRev, lastRev(wr))
	}
	return changed, err
}

// lastRev is the revision through which a watch response brings every
// event of its watch.
func lastRev(wr clientv3.WatchResponse) int64 {
	rev := wr.Header.Revision
	for _, ev := range wr.Events {
		rev = max(rev, ev.Kv.ModRevision)
	}
	return rev
}

func (c *Cache) apply(ctx context.Context, wr clientv3.WatchResponse) (changed bool, _ error) {
	if err := wr.Err(); err != nil {
		return false, fmt.Errorf("%w: %v", ErrWatchEnded, err)
	}
	if wr.Canceled {
		return false, ErrWatchEnded
	}
	k := c.k
	dirty := map[string]bool{}
	for _, ev := range wr.Events {
		kv := ev.Kv
		key := string(kv.Key)
		put := ev.Type == clientv3.EventTypePut
		if kv.ModRevision > c.snap.Rev {
			c.snap.Rev = kv.ModRevision
		}
		switch {
		case strings.HasPrefix(key, k.Workers()):
			id := strings.TrimPrefix(key, k.Workers())
			changed = true
			delete(c.snap.Damaged, key)
			if !put {
				delete(c.workers, id)
				delete(c.snap.Workers, id)
				c.churn += 2
				continue
			}
			w := &pb.Worker{}
			if err := Unmarshal(kv.Value, w); err != nil {
				c.snap.Damaged[key] = err
				delete(c.workers, id)
				delete(c.snap.Workers, id)
				continue
			}
			c.workers[id] = Versioned[*pb.Worker]{w, kv.ModRevision, kv.CreateRevision, kv.Lease}
			if _, bad := c.snap.Damaged[k.Claim(id)]; !bad {
				c.snap.Workers[id] = c.workers[id]
			}
		case strings.HasPrefix(key, k.Claims()):
			id := strings.TrimPrefix(key, k.Claims())
			changed = true
			if _, bad := c.snap.Damaged[key]; bad {
				delete(c.snap.Damaged, key)
				if w, ok := c.workers[id]; ok {
					c.snap.Workers[id] = w
				}
			}
			cl := &pb.Claim{}
			if !put {
				delete(c.snap.Claims, id)
				c.churn++
				continue
			}
			if err := Unmarshal(kv.Value, cl); err != nil {
				// A worker whose claim cannot be read may be busy: it is
				// given nothing.
				c.snap.Damaged[key] = err
				delete(c.snap.Claims, id)
				delete(c.snap.Workers, id)
				c.churn += 2
				continue
			}
			c.snap.Claims[id] = Versioned[*pb.Claim]{cl, kv.ModRevision, kv.CreateRevision, kv.Lease}
		case strings.HasPrefix(key, k.Active()):
			id := strings.TrimPrefix(key, k.Active())
			changed = true
			if !put {
				c.drop(id)
				delete(dirty, id)
				continue
			}
			if _, known := c.jobKVs[id]; known {
				continue
			}
			// The job's keys as of the marker (written with it, or moved
			// back with it on a resume); later changes follow as events.
			rctx, cancel := context.WithTimeout(ctx, c.timeout)
			resp, err := c.cli.Get(rctx, k.Job(id), clientv3.WithPrefix(), clientv3.WithRev(kv.ModRevision))
			cancel()
			if err != nil {
				return changed, fmt.Errorf("state: reading job %s as it became active: %w", id, err)
			}
			kvs := map[string]*mvccpb.KeyValue{}
			for _, jkv := range resp.Kvs {
				kvs[string(jkv.Key)] = jkv
			}
			c.jobKVs[id] = kvs
			dirty[id] = true
		case strings.HasPrefix(key, k.Jobs()):
			id, rest, _ := strings.Cut(strings.TrimPrefix(key, k.Jobs()), "/")
			kvs, known := c.jobKVs[id]
			if !known {
				continue // a finished job's keys, moved or expiring
			}
			if put {
				if prev, ok := kvs[key]; ok && prev.ModRevision >= kv.ModRevision {
					continue // read with the marker already
				}
				kvs[key] = kv
			} else {
				delete(kvs, key)
			}
			dirty[id] = true
			// A job's keys are deleted by the coordinator along with a
			// change of its status (rank reports), which is seen anyway.
			if put && !strings.HasPrefix(rest, "checkpoints/") {
				changed = true
			}
		}
	}
	for id := range dirty {
		c.rebuild(id)
	}
	if c.churn > 4*(len(c.snap.Workers)+len(c.snap.Claims)+len(c.snap.Jobs))+refreshSlack {
		c.refreshMaps()
	}
	return changed, nil
}

// refreshSlack is the churn that refreshMaps allows beyond four times the
// view's size.
var refreshSlack = 1024

// refreshMaps copies the view's maps into new ones: a Go map keeps the
// room of the entries deleted from it, and the view's see a steady churn
// (jobs come and go, claims are written and deleted), which would make
// each pass over them slower as history grows.
func (c *Cache) refreshMaps() {
	c.churn = 0
	c.workers = fresh(c.workers)
	c.jobKVs = fresh(c.jobKVs)
	c.snap.Workers = fresh(c.snap.Workers)
	c.snap.Claims = fresh(c.snap.Claims)
	c.snap.Jobs = fresh(c.snap.Jobs)
	c.snap.Damaged = fresh(c.snap.Damaged)
	c.snap.DamagedJobs = fresh(c.snap.DamagedJobs)
}

func fresh[K comparable, V any](m map[K]V) map[K]V {
	out := make(map[K]V, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// drop forgets a job that is no longer active.
func (c *Cache) drop(id string) {
	c.churn += 2
	delete(c.jobKVs, id)
	delete(c.snap.Jobs, id)
	delete(c.snap.DamagedJobs, id)
	prefix := c.k.Job(id)
	for key := range c.snap.Damaged {
		if strings.HasPrefix(key, prefix) {
			delete(c.snap.Damaged, key)
		}
	}
}

// rebuild decodes a job's keys into its entry.
func (c *Cache) rebuild(id string) {
	prefix := c.k.Job(id)
	for key := range c.snap.Damaged {
		if strings.HasPrefix(key, prefix) {
			delete(c.snap.Damaged, key)
		}
	}
	delete(c.snap.DamagedJobs, id)
	kvs := make([]*mvccpb.KeyValue, 0, len(c.jobKVs[id]))
	for _, kv := range c.jobKVs[id] {
		kvs = append(kvs, kv)
	}
	sortKVs(kvs)
	one := newSnapshot(c.snap.Rev)
	one.decode(c.k, kvs)
	if j := one.Jobs[id]; j != nil {
		c.snap.Jobs[id] = j
	} else {
		// A marker with no keys: an empty entry, which the planner
		// skips like any job without a spec or status.
		c.snap.Jobs[id] = &JobEntry{ID: id}
	}
	for key, err := range one.Damaged {
		c.snap.Damaged[key] = err
	}
	if one.DamagedJobs[id] {
		c.snap.DamagedJobs[id] = true
	}
}

// FetchProgress reads the progress of the given jobs into the view (their
// Progress, ProgressRev, and the key among their KVs), in one request: the
// scheduler needs it for the jobs it decides about only.
func (c *Cache) FetchProgress(ctx context.Context, ids []string) error {
	var ops []clientv3.Op
	var jobs []*JobEntry
	for _, id := range ids {
		if j := c.snap.Jobs[id]; j != nil {
			ops = append(ops, clientv3.OpGet(c.k.Progress(id)))
			jobs = append(jobs, j)
		}
	}
	if len(ops) == 0 {
		return nil
	}
	rctx, cancel := context.WithTimeout(ctx, c.timeout)
	resp, err := c.cli.Txn(rctx).Then(ops...).Commit()
	cancel()
	if err != nil {
		return fmt.Errorf("state: reading the progress of jobs %v: %w", ids, err)
	}
	for i, j := range jobs {
		kvs := resp.Responses[i].GetResponseRange().GetKvs()
		key := c.k.Progress(j.ID)
		keep := j.KVs[:0:0]
		for _, kv := range j.KVs {
			if string(kv.Key) != key {
				keep = append(keep, kv)
			}
		}
		j.KVs, j.Progress, j.ProgressRev = keep, nil, 0
		if len(kvs) == 0 {
			continue
		}
		// The key moves with the job's (onto a retention lease) even when
		// it cannot be decoded: a damaged progress only loses the step of
		// a history entry.
		j.KVs = append(j.KVs, kvs[0])
		if p := (&pb.Progress{}); Unmarshal(kvs[0].Value, p) == nil {
			j.Progress, j.ProgressRev = p, kvs[0].ModRevision
		}
	}
	return nil
}

func sortKVs(kvs []*mvccpb.KeyValue) {
	slices.SortFunc(kvs, func(a, b *mvccpb.KeyValue) int { return bytes.Compare(a.Key, b.Key) })
}
