package checkpoint

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap"
)

// ErrNoCheckpoint is returned when no valid checkpoint exists.
var ErrNoCheckpoint = errors.New("checkpoint: no valid checkpoint")

// ErrInvalid marks what verification found wrong with a checkpoint: no
// manifest, a corrupt manifest, a missing or short object, a checksum that
// does not match. Failures to reach the store are not ErrInvalid: a
// checkpoint that could not be read is not thereby invalid, and nothing
// falls back past it or deletes it.
var ErrInvalid = errors.New("checkpoint: invalid")

type invalidError struct{ error }

func (e invalidError) Is(target error) bool { return target == ErrInvalid }
func (e invalidError) Unwrap() error        { return e.error }

func invalidf(format string, a ...any) error { return invalidError{fmt.Errorf(format, a...)} }

// ErrStepExists is returned by Save when the step already has a committed
// checkpoint: commits never replace one.
var ErrStepExists = errors.New("checkpoint: the step already has a committed checkpoint")

// Defaults of a Manager's transfer settings.
const (
	DefaultPartSize    = 16 << 20
	DefaultParallelism = 4
	// DefaultMaxObjectSize splits larger data into several objects.
	DefaultMaxObjectSize = 8 << 30
)

// Info describes a checkpoint in a listing.
type Info struct {
	Step          int64
	Key           string // the checkpoint's directory in the store, ending in '/'
	URL           string
	Size          int64 // data and manifest
	Created       time.Time
	Epoch         int
	GlobalSamples int64
	World         int
	Valid         bool
	Problem       string // why it is not valid
	// Removed, from Save, are the steps of valid checkpoints that
	// retention removed after this one committed.
	Removed []int64
}

// EventKind says what an Event reports.
type EventKind int

const (
	// EventDataWritten: every data object of a save is stored; the
	// manifest comes next.
	EventDataWritten EventKind = iota + 1
	// EventCommitted: the manifest is written; the checkpoint exists.
	EventCommitted
	// EventInvalid: a checkpoint failed verification while loading (Err
	// says why) and an older one is tried.
	EventInvalid
)

// Event is what a Manager reports to its observer.
type Event struct {
	Kind EventKind
	Step int64
	URL  string
	Err  error
}

// Manager saves and loads the checkpoints of one job under a prefix of a
// store. It is safe for concurrent use, but saves of one job should come
// from one place (rank 0) at a time.
type Manager struct {
	store     Store
	prefix    string // ends with '/' unless empty
	keep      int
	keepEvery int64
	partSize  int64
	parallel  int
	maxObject int64
	checksum  string
	observe   func(Event)
	log       *zap.Logger
	now       func() time.Time
}

// Option configures a Manager.
type Option func(*Manager)

// KeepEvery also keeps every checkpoint whose step is a multiple of n,
// beyond the newest keep (0: none).
func KeepEvery(n int64) Option { return func(m *Manager) { m.keepEvery = max(n, 0) } }

// PartSize sets the size of the parts objects are written and read in
// (default 16 MiB; S3 needs at least 5 MiB). With Parallelism it bounds
// the memory a transfer uses beyond the state itself.
func PartSize(n int64) Option {
	return func(m *Manager) {
		if n > 0 {
			m.partSize = n
		}
	}
}

// Parallelism sets how many parts are in flight at once (default 4).
func Parallelism(n int) Option {
	return func(m *Manager) {
		if n > 0 {
			m.parallel = n
		}
	}
}

// MaxObjectSize splits the data of a checkpoint into objects of at most n
// bytes (rounded down to whole parts; default 8 GiB).
func MaxObjectSize(n int64) Option {
	return func(m *Manager) {
		if n > 0 {
			m.maxObject = n
		}
	}
}

// WithChecksum selects the checksum written for new checkpoints:
// ChecksumCRC32C (the default: fast, and computed in parallel) or
// ChecksumSHA256.
func WithChecksum(alg string) Option { return func(m *Manager) { m.checksum = alg } }

// Observe calls fn for every Event (from the goroutine that caused it).
func Observe(fn func(Event)) Option { return func(m *Manager) { m.observe = fn } }

// NewManager returns a manager for the checkpoints under prefix; it keeps
// the newest keep valid checkpoints (at least 1).
func NewManager(store Store, prefix string, keep int, log *zap.Logger, opts ...Option) *Manager {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	m := &Manager{store: store, prefix: prefix, keep: max(keep, 1), partSize: DefaultPartSize, parallel: DefaultParallelism,
		maxObject: DefaultMaxObjectSize, checksum: ChecksumCRC32C, log: log, now: time.Now}
	for _, o := range opts {
		o(m)
	}
	if m.checksum != ChecksumSHA256 {
		m.checksum = ChecksumCRC32C
	}
	m.maxObject = max(m.maxObject/m.partSize, 1) * m.partSize
	return m
}

// Store returns the manager's store.
func (m *Manager) Store() Store { return m.store }

// URL is the URL of the directory that holds the checkpoints.
func (m *Manager) URL() string { return ObjectURL(m.store, m.prefix) }

func (m *Manager) stepKey(step int64) string { return m.prefix + stepDir(step) + "/" }

func (m *Manager) emit(e Event) {
	if m.observe != nil {
		m.observe(e)
	}
}

// Save writes st as the checkpoint of st.Step: the data objects first
// (parts in parallel, straight from the tensors' memory), then the
// manifest, with a write that fails if the step already has one, then the
// latest pointer; then it applies retention. A save that fails leaves no
// checkpoint; what it wrote is removed now or by a later retention.
func (m *Manager) Save(ctx context.Context, st *State) (Info, error) {
	if err := st.validate(); err != nil {
		return Info{}, err
	}
	dir := m.stepKey(st.Step)
	url := ObjectURL(m.store, dir)
	switch _, err := m.store.Stat(ctx, dir+manifestName); {
	case err == nil:
		return Info{}, fmt.Errorf("%w: step %d at %s", ErrStepExists, st.Step, url)
	case !errors.Is(err, ErrNotFound):
		return Info{}, fmt.Errorf("checkpoint: saving step %d to %s: %w", st.Step, url, err)
	}
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	man := &Manifest{
		Format: FormatVersion, Step: st.Step, Epoch: st.Epoch, EpochSamples: st.EpochSamples, GlobalSamples: st.GlobalSamples,
		World: max(st.World, 1), Seed: st.Seed, Created: m.now().UTC(), SaveID: hex.EncodeToString(rnd[:]), Checksum: m.checksum,
		Spec: st.Spec, Meta: st.Meta,
	}
	segs := make([][]byte, 0, len(st.Tensors))
	for _, t := range st.Tensors {
		man.Tensors = append(man.Tensors, TensorEntry{Name: t.Name, DType: "float32", Shape: t.Shape, Offset: man.Size, Local: t.Local, Rank: t.Rank})
		segs = append(segs, floatBytes(t.Data))
		man.Size += 4 * int64(len(t.Data))
	}
	for _, r := range st.RNG {
		man.RNG = append(man.RNG, RNGEntry{Name: r.Name, State: r.State, Local: r.Local, Rank: r.Rank})
	}
	for off, i := int64(0), 0; off < man.Size; off, i = off+m.maxObject, i+1 {
		man.Objects = append(man.Objects, ObjectEntry{Key: fmt.Sprintf("data-%s-%03d.bin", man.SaveID, i), Offset: off, Size: min(m.maxObject, man.Size-off)})
	}
	if err := m.writeObjects(ctx, dir, man, newSource(segs)); err != nil {
		m.removeObjects(ctx, dir, man)
		return Info{}, fmt.Errorf("checkpoint: saving step %d to %s: %w", st.Step, url, err)
	}
	m.emit(Event{Kind: EventDataWritten, Step: st.Step, URL: url})
	mb, err := json.MarshalIndent(man, "", " ")
	if err != nil {
		m.removeObjects(ctx, dir, man)
		return Info{}, err
	}
	if err := putBytes(ctx, m.store, dir+manifestName, mb, Condition{IfAbsent: true}); err != nil {
		m.removeObjects(ctx, dir, man)
		if errors.Is(err, ErrPrecondition) {
			return Info{}, fmt.Errorf("%w: step %d at %s (written by another save meanwhile)", ErrStepExists, st.Step, url)
		}
		return Info{}, fmt.Errorf("checkpoint: committing step %d to %s: %w", st.Step, url, err)
	}
	m.emit(Event{Kind: EventCommitted, Step: st.Step, URL: url})
	if err := m.moveLatest(ctx, st.Step); err != nil {
		// The checkpoint is committed; only the hint is stale.
		m.log.Warn("checkpoint: updating the latest pointer failed", zap.Int64("step", st.Step), zap.Error(err))
	}
	info := Info{Step: st.Step, Key: dir, URL: url, Size: man.Size + int64(len(mb)), Created: man.Created,
		Epoch: man.Epoch, GlobalSamples: man.GlobalSamples, World: man.World, Valid: true}
	removed, err := m.retain(ctx, st.Step)
	if err != nil {
		m.log.Warn("checkpoint: retention failed", zap.Error(err))
	}
	info.Removed = removed
	return info, nil
}

// removeObjects deletes the data objects of a save that did not commit,
// best effort: retention removes what remains.
func (m *Manager) removeObjects(ctx context.Context, dir string, man *Manifest) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	for _, o := range man.Objects {
		if err := m.store.Delete(ctx, dir+o.Key); err != nil {
			m.log.Debug("checkpoint: removing an uncommitted object failed; retention will", zap.String("key", dir+o.Key), zap.Error(err))
			return
		}
	}
}

// moveLatest points latest at step unless it already points at a newer
// one, with a compare-and-swap on the pointer's version so that two
// writers never move it backwards.
func (m *Manager) moveLatest(ctx context.Context, step int64) error {
	key := m.prefix + latestName
	body := []byte(stepDir(step) + "\n")
	for range 5 {
		cond := Condition{IfAbsent: true}
		info, err := m.store.Stat(ctx, key)
		switch {
		case err == nil:
			cur, rerr := readSmall(ctx, m.store, key, 1<<10)
			if rerr == nil {
				if s, ok := parseStepDir(strings.TrimSpace(string(cur))); ok && s >= step {
					return nil
				}
			}
			cond = Condition{IfMatch: info.ETag}
		case !errors.Is(err, ErrNotFound):
			return err
		}
		err = putBytes(ctx, m.store, key, body, cond)
		if !errors.Is(err, ErrPrecondition) {
			return err
		}
	}
	return errors.New("the latest pointer kept changing")
}

// Latest returns the step the latest pointer names (a hint: loading
// trusts only manifests).
func (m *Manager) Latest(ctx context.Context) (int64, error) {
	b, err := readSmall(ctx, m.store, m.prefix+latestName, 1<<10)
	if err != nil {
		return 0, err
	}
	s, ok := parseStepDir(strings.TrimSpace(string(b)))
	if !ok {
		return 0, fmt.Errorf("checkpoint: latest pointer holds %q", b)
	}
	return s, nil
}

// listing is the objects under the prefix, by step.
type listing map[int64][]ObjectInfo

func (m *Manager) list(ctx context.Context) (listing, []int64, error) {
	objs, err := m.store.List(ctx, m.prefix+stepPrefix)
	if err != nil {
		return nil, nil, fmt.Errorf("checkpoint: listing %s: %w", m.URL(), err)
	}
	out := listing{}
	for _, o := range objs {
		name, _, ok := strings.Cut(strings.TrimPrefix(o.Key, m.prefix), "/")
		if s, sok := parseStepDir(name); ok && sok {
			out[s] = append(out[s], o)
		}
	}
	steps := make([]int64, 0, len(out))
	for s := range out {
		steps = append(steps, s)
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i] > steps[j] })
	return out, steps, nil
}

// manifest reads and checks the manifest of step.
func (m *Manager) manifest(ctx context.Context, step int64) (*Manifest, int64, error) {
	b, err := readSmall(ctx, m.store, m.stepKey(step)+manifestName, maxManifest)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, 0, invalidf("no manifest (the save never committed)")
		}
		if errors.Is(err, errTooLarge) {
			return nil, 0, invalidError{err}
		}
		return nil, 0, fmt.Errorf("reading the manifest: %w", err)
	}
	man, err := parseManifest(b)
	if err != nil {
		return nil, 0, invalidError{err}
	}
	if man.Step != step {
		return nil, 0, invalidf("the manifest is for step %d", man.Step)
	}
	return man, int64(len(b)), nil
}

// check is the quick verification: the manifest is sound and every
// object it lists exists with its size. objs are the step's objects.
func (m *Manager) check(ctx context.Context, step int64, objs []ObjectInfo) (*Manifest, Info, error) {
	dir := m.stepKey(step)
	info := Info{Step: step, Key: dir, URL: ObjectURL(m.store, dir)}
	man, mlen, err := m.manifest(ctx, step)
	if err != nil {
		return nil, info, err
	}
	info.Created, info.Epoch, info.GlobalSamples, info.World = man.Created, man.Epoch, man.GlobalSamples, man.World
	info.Size = man.Size + mlen
	sizes := map[string]int64{}
	for _, o := range objs {
		sizes[strings.TrimPrefix(o.Key, dir)] = o.Size
	}
	for _, o := range man.Objects {
		got, ok := sizes[o.Key]
		if !ok {
			return man, info, invalidf("object %s is missing (partial checkpoint)", o.Key)
		}
		if got != o.Size {
			return man, info, invalidf("object %s has %d bytes, the manifest says %d (partial or corrupt)", o.Key, got, o.Size)
		}
	}
	return man, info, nil
}

// List returns every checkpoint under the prefix, newest first. Without
// verify it checks manifests and object sizes (cheap); with verify it
// also reads every object and checks its checksum, in bounded memory.
func (m *Manager) List(ctx context.Context, verify bool) ([]Info, error) {
	objs, steps, err := m.list(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(steps))
	for _, s := range steps {
		man, info, err := m.check(ctx, s, objs[s])
		if err == nil && verify {
			err = m.readObjects(ctx, info.Key, man, nil)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil && !errors.Is(err, ErrInvalid) {
			return nil, fmt.Errorf("checkpoint: reading step %d at %s: %w", s, info.URL, err)
		}
		info.Valid = err == nil
		if err != nil {
			info.Problem = err.Error()
		}
		out = append(out, info)
	}
	return out, nil
}

// Load returns the newest valid checkpoint at or below maxStep (any step if
// maxStep < 0), reading its objects in parallel straight into the
// returned tensors and verifying sizes and checksums. An invalid
// checkpoint on the way is reported (log and EventInvalid) and the
// previous one is tried.
func (m *Manager) Load(ctx context.Context, maxStep int64) (*State, Info, error) {
	objs, steps, err := m.list(ctx)
	if err != nil {
		return nil, Info{}, err
	}
	for _, s := range steps {
		if maxStep >= 0 && s > maxStep {
			continue
		}
		st, info, err := m.load(ctx, s, objs[s])
		if err == nil {
			return st, info, nil
		}
		if ctx.Err() != nil {
			return nil, Info{}, ctx.Err()
		}
		if !errors.Is(err, ErrInvalid) {
			// The store failed, not the checkpoint: falling back would
			// silently lose training.
			return nil, info, fmt.Errorf("checkpoint: reading step %d at %s: %w", s, info.URL, err)
		}
		m.log.Warn("checkpoint: skipping invalid checkpoint, trying the previous one",
			zap.Int64("step", s), zap.String("url", info.URL), zap.String("problem", err.Error()))
		m.emit(Event{Kind: EventInvalid, Step: s, URL: info.URL, Err: err})
	}
	return nil, Info{}, ErrNoCheckpoint
}

// LoadStep returns the checkpoint of exactly this step, or an error that
// says why it cannot be used; it never falls back to another step.
func (m *Manager) LoadStep(ctx context.Context, step int64) (*State, Info, error) {
	dir := m.stepKey(step)
	objs, err := m.store.List(ctx, dir)
	if err != nil {
		return nil, Info{}, fmt.Errorf("checkpoint: listing %s: %w", ObjectURL(m.store, dir), err)
	}
	if len(objs) == 0 {
		return nil, Info{}, fmt.Errorf("%w at step %d under %s", ErrNoCheckpoint, step, m.URL())
	}
	st, info, err := m.load(ctx, step, objs)
	if err != nil && errors.Is(err, ErrInvalid) {
		m.emit(Event{Kind: EventInvalid, Step: step, URL: info.URL, Err: err})
		return nil, info, fmt.Errorf("checkpoint at step %d (%s) is not valid: %w", step, info.URL, err)
	}
	if err != nil {
		return nil, info, fmt.Errorf("checkpoint: reading step %d at %s: %w", step, info.URL, err)
	}
	return st, info, nil
}

func (m *Manager) load(ctx context.Context, step int64, objs []ObjectInfo) (*State, Info, error) {
	man, info, err := m.check(ctx, step, objs)
	if err != nil {
		return nil, info, err
	}
	// One allocation holds every tensor; the objects are read into it.
	backing := make([]float32, (man.Size+3)/4)
	adviseHuge(floatBytes(backing))
	data := floatBytes(backing)[:man.Size]
	if err := m.readObjects(ctx, info.Key, man, data); err != nil {
		return nil, info, err
	}
	st := &State{Step: man.Step, Epoch: man.Epoch, EpochSamples: man.EpochSamples, GlobalSamples: man.GlobalSamples,
		World: man.World, Seed: man.Seed, Spec: man.Spec, Meta: man.Meta}
	for _, te := range man.Tensors {
		n := int64(1)
		for _, d := range te.Shape {
			n *= int64(d)
		}
		at := te.Offset / 4
		st.Tensors = append(st.Tensors, Tensor{Name: te.Name, Shape: te.Shape, Data: backing[at : at+n : at+n], Local: te.Local, Rank: te.Rank})
	}
	for _, r := range man.RNG {
		st.RNG = append(st.RNG, RNGState{Name: r.Name, State: r.State, Local: r.Local, Rank: r.Rank})
	}
	info.Valid = true
	return st, info, nil
}

// Delete removes the checkpoint of step, manifest first, so that a partly
// deleted checkpoint is never mistaken for a valid one.
func (m *Manager) Delete(ctx context.Context, step int64) error {
	dir := m.stepKey(step)
	objs, err := m.store.List(ctx, dir)
	if err != nil {
		return err
	}
	return m.deleteObjects(ctx, dir, objs)
}

func (m *Manager) deleteObjects(ctx context.Context, dir string, objs []ObjectInfo) error {
	sort.SliceStable(objs, func(i, j int) bool { return objs[i].Key == dir+manifestName })
	for _, o := range objs {
		if err := m.store.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}

// retain applies retention after step committed: it keeps the newest keep
// valid checkpoints and every one whose step is a multiple of keepEvery,
// and removes the rest, along with everything of saves that never
// committed at steps older than the one just committed (saves of that
// step and newer ones may still be in flight elsewhere) and objects of
// other attempts inside older kept checkpoints. The checkpoint just committed is the newest valid one, so
// the last valid checkpoint is never removed.
func (m *Manager) retain(ctx context.Context, committed int64) (removed []int64, err error) {
	objs, steps, err := m.list(ctx)
	if err != nil {
		return nil, err
	}
	kept := 0
	for _, s := range steps {
		if s > committed {
			continue
		}
		dir := m.stepKey(s)
		man, _, verr := m.check(ctx, s, objs[s])
		if verr != nil && !errors.Is(verr, ErrInvalid) {
			return removed, verr // unreadable is not invalid: delete nothing
		}
		keep := verr == nil && (kept < m.keep || (m.keepEvery > 0 && s%m.keepEvery == 0))
		if verr == nil && kept < m.keep {
			kept++
		}
		if !keep {
			if err := m.deleteObjects(ctx, dir, objs[s]); err != nil {
				return removed, err
			}
			if verr == nil {
				removed = append(removed, s)
			}
			continue
		}
		if s == committed {
			continue // another writer may still be trying this step
		}
		// Leftovers of failed attempts at the same step.
		listed := map[string]bool{manifestName: true}
		for _, o := range man.Objects {
			listed[o.Key] = true
		}
		for _, o := range objs[s] {
			if !listed[strings.TrimPrefix(o.Key, dir)] {
				if err := m.store.Delete(ctx, o.Key); err != nil {
					return removed, err
				}
			}
		}
	}
	if c, ok := m.store.(IncompleteCleaner); ok {
		n, err := c.AbortIncomplete(ctx, m.prefix+stepPrefix, func(key string, _ time.Time) bool {
			name, _, _ := strings.Cut(strings.TrimPrefix(key, m.prefix), "/")
			s, ok := parseStepDir(name)
			return ok && s < committed
		})
		if err != nil {
			return removed, err
		}
		if n > 0 {
			m.log.Info("checkpoint: removed unfinished uploads of saves that never committed", zap.Int("count", n))
		}
	}
	return removed, nil
}

// Newer returns the steps above step that have any object (valid or
// not), newest first.
func (m *Manager) Newer(ctx context.Context, step int64) ([]int64, error) {
	_, steps, err := m.list(ctx)
	if err != nil {
		return nil, err
	}
	var out []int64
	for _, s := range steps {
		if s > step {
			out = append(out, s)
		}
	}
	return out, nil
}

// DiscardNewer deletes every checkpoint above step (manifests first) and
// points latest at step: what resuming from an older checkpoint needs, so
// that the new run's checkpoints never meet the old run's later ones.
func (m *Manager) DiscardNewer(ctx context.Context, step int64) error {
	objs, steps, err := m.list(ctx)
	if err != nil {
		return err
	}
	for _, s := range steps {
		if s > step {
			if err := m.deleteObjects(ctx, m.stepKey(s), objs[s]); err != nil {
				return fmt.Errorf("checkpoint: deleting step %d: %w", s, err)
			}
		}
	}
	return putBytes(ctx, m.store, m.prefix+latestName, []byte(stepDir(step)+"\n"), Condition{})
}
