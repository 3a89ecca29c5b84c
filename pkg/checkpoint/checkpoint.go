package checkpoint

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unsafe"

	"go.uber.org/zap"
)

// FormatVersion is written into every manifest.
const FormatVersion = 1

const (
	stepPrefix   = "step-"
	manifestName = "manifest.json"
	stateName    = "state.bin"
	latestName   = "latest"
)

// ErrNoCheckpoint is returned when no valid checkpoint exists.
var ErrNoCheckpoint = errors.New("checkpoint: no valid checkpoint")

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Tensor is one named tensor of the state. Data is float32 in row-major
// order with the tensor's global shape.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

// State is everything needed to continue training exactly.
type State struct {
	Step          int64 // committed steps so far
	Epoch         int
	EpochSamples  int64 // samples of Epoch already consumed
	GlobalSamples int64
	World         int // ring size that wrote it
	Seed          uint64
	Tensors       []Tensor
	// Meta carries free-form facts: the job id, the spec, the model name.
	Meta map[string]string
}

// Tensor returns the tensor with the given name, or nil.
func (s *State) Tensor(name string) *Tensor {
	for i := range s.Tensors {
		if s.Tensors[i].Name == name {
			return &s.Tensors[i]
		}
	}
	return nil
}

// Manifest is the JSON document that commits a checkpoint.
type Manifest struct {
	Format        int               `json:"format"`
	Step          int64             `json:"step"`
	Epoch         int               `json:"epoch"`
	EpochSamples  int64             `json:"epoch_samples"`
	GlobalSamples int64             `json:"global_samples"`
	World         int               `json:"world"`
	Seed          uint64            `json:"seed"`
	Created       time.Time         `json:"created"`
	Objects       []ObjectEntry     `json:"objects"`
	Tensors       []TensorEntry     `json:"tensors"`
	Meta          map[string]string `json:"meta,omitempty"`
}

// ObjectEntry lists one data object of a checkpoint.
type ObjectEntry struct {
	Key    string `json:"key"` // relative to the checkpoint's prefix
	Size   int64  `json:"size"`
	CRC32C uint32 `json:"crc32c"`
}

// TensorEntry locates one tensor inside a data object.
type TensorEntry struct {
	Name   string `json:"name"`
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	Object string `json:"object"`
	Offset int64  `json:"offset"` // bytes
}

// Info describes a checkpoint in a listing.
type Info struct {
	Step    int64
	Key     string // the checkpoint's prefix in the store
	URL     string
	Size    int64
	Created time.Time
	Valid   bool
	Problem string // why it is not valid
}

// Manager saves and loads the checkpoints of one job under a prefix of a
// store.
type Manager struct {
	store  Store
	prefix string // ends with '/' unless empty
	keep   int
	log    *zap.Logger
}

// NewManager returns a manager for the checkpoints under prefix; it keeps
// the newest keep valid checkpoints (at least 1).
func NewManager(store Store, prefix string, keep int, log *zap.Logger) *Manager {
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return &Manager{store: store, prefix: prefix, keep: max(keep, 1), log: log}
}

func (m *Manager) stepKey(step int64) string {
	return fmt.Sprintf("%s%s%012d/", m.prefix, stepPrefix, step)
}

// Save writes st as the checkpoint of st.Step: data first, manifest last,
// then the latest pointer; then it applies retention.
func (m *Manager) Save(ctx context.Context, st *State) (Info, error) {
	dir := m.stepKey(st.Step)
	man := Manifest{
		Format: FormatVersion, Step: st.Step, Epoch: st.Epoch, EpochSamples: st.EpochSamples,
		GlobalSamples: st.GlobalSamples, World: st.World, Seed: st.Seed, Created: time.Now().UTC(), Meta: st.Meta,
	}
	var size int64
	for _, t := range st.Tensors {
		n := int64(1)
		for _, d := range t.Shape {
			n *= int64(d)
		}
		if n != int64(len(t.Data)) {
			return Info{}, fmt.Errorf("checkpoint: tensor %s has shape %v but %d elements", t.Name, t.Shape, len(t.Data))
		}
		man.Tensors = append(man.Tensors, TensorEntry{Name: t.Name, DType: "float32", Shape: t.Shape, Object: stateName, Offset: size})
		size += 4 * n
	}
	pr, pw := io.Pipe()
	crc := crc32.New(castagnoli)
	go func() {
		bw := bufio.NewWriterSize(io.MultiWriter(pw, crc), 1<<20)
		for _, t := range st.Tensors {
			if _, err := bw.Write(floatBytes(t.Data)); err != nil {
				pw.CloseWithError(err)
				return
			}
		}
		pw.CloseWithError(bw.Flush())
	}()
	err := m.store.Put(ctx, dir+stateName, pr, size)
	pr.CloseWithError(err) // unblocks the writer if Put stopped early
	if err != nil {
		return Info{}, fmt.Errorf("checkpoint: saving step %d: %w", st.Step, err)
	}
	man.Objects = []ObjectEntry{{Key: stateName, Size: size, CRC32C: crc.Sum32()}}
	mb, err := json.MarshalIndent(&man, "", "  ")
	if err != nil {
		return Info{}, err
	}
	if err := m.store.Put(ctx, dir+manifestName, bytes.NewReader(mb), int64(len(mb))); err != nil {
		return Info{}, fmt.Errorf("checkpoint: committing step %d: %w", st.Step, err)
	}
	latest := []byte(strings.TrimSuffix(strings.TrimPrefix(dir, m.prefix), "/") + "\n")
	if err := m.store.Put(ctx, m.prefix+latestName, bytes.NewReader(latest), int64(len(latest))); err != nil {
		// The checkpoint is committed; only the hint is stale.
		m.log.Warn("checkpoint: updating the latest pointer failed", zap.Int64("step", st.Step), zap.Error(err))
	}
	info := Info{Step: st.Step, Key: dir, URL: m.store.URL() + "/" + dir, Size: size + int64(len(mb)), Created: man.Created, Valid: true}
	if err := m.retain(ctx); err != nil {
		m.log.Warn("checkpoint: retention failed", zap.Error(err))
	}
	return info, nil
}

// List returns every checkpoint under the prefix, newest first, each
// verified.
func (m *Manager) List(ctx context.Context) ([]Info, error) {
	steps, err := m.steps(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]Info, 0, len(steps))
	for _, s := range steps {
		info, _, verr := m.verify(ctx, s, false)
		info.Valid = verr == nil
		if verr != nil {
			info.Problem = verr.Error()
		}
		out = append(out, info)
	}
	return out, nil
}

// steps returns the step numbers that have any object, newest first.
func (m *Manager) steps(ctx context.Context) ([]int64, error) {
	objs, err := m.store.List(ctx, m.prefix+stepPrefix)
	if err != nil {
		return nil, fmt.Errorf("checkpoint: listing %s: %w", m.prefix, err)
	}
	seen := map[int64]bool{}
	var steps []int64
	for _, o := range objs {
		rest := strings.TrimPrefix(o.Key, m.prefix+stepPrefix)
		num, _, ok := strings.Cut(rest, "/")
		if !ok {
			continue
		}
		s, err := strconv.ParseInt(num, 10, 64)
		if err != nil || seen[s] {
			continue
		}
		seen[s] = true
		steps = append(steps, s)
	}
	sort.Slice(steps, func(i, j int) bool { return steps[i] > steps[j] })
	return steps, nil
}

// verify reads the manifest of step and checks every object's size and
// checksum; with load set it also returns the state.
func (m *Manager) verify(ctx context.Context, step int64, load bool) (Info, *State, error) {
	dir := m.stepKey(step)
	info := Info{Step: step, Key: dir, URL: m.store.URL() + "/" + dir}
	rc, err := m.store.Get(ctx, dir+manifestName)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return info, nil, fmt.Errorf("no manifest (the save never committed)")
		}
		return info, nil, err
	}
	mb, err := io.ReadAll(io.LimitReader(rc, 64<<20))
	rc.Close()
	if err != nil {
		return info, nil, fmt.Errorf("reading manifest: %w", err)
	}
	var man Manifest
	if err := json.Unmarshal(mb, &man); err != nil {
		return info, nil, fmt.Errorf("manifest is corrupt: %w", err)
	}
	if man.Format != FormatVersion || man.Step != step {
		return info, nil, fmt.Errorf("manifest has format %d step %d, expected format %d step %d", man.Format, man.Step, FormatVersion, step)
	}
	info.Created = man.Created
	info.Size = int64(len(mb))
	blobs := map[string][]byte{}
	for _, o := range man.Objects {
		info.Size += o.Size
		data, err := m.readVerified(ctx, dir+o.Key, o, load)
		if err != nil {
			return info, nil, err
		}
		blobs[o.Key] = data
	}
	if !load {
		return info, nil, nil
	}
	st := &State{Step: man.Step, Epoch: man.Epoch, EpochSamples: man.EpochSamples, GlobalSamples: man.GlobalSamples,
		World: man.World, Seed: man.Seed, Meta: man.Meta}
	for _, te := range man.Tensors {
		blob, ok := blobs[te.Object]
		n := int64(1)
		for _, d := range te.Shape {
			if d < 0 {
				return info, nil, fmt.Errorf("tensor %s has a negative dimension", te.Name)
			}
			n *= int64(d)
		}
		if !ok || te.DType != "float32" || te.Offset < 0 || te.Offset+4*n > int64(len(blob)) {
			return info, nil, fmt.Errorf("tensor %s (%s, shape %v at %d in %s) does not fit its object", te.Name, te.DType, te.Shape, te.Offset, te.Object)
		}
		data := make([]float32, n)
		copy(floatBytes(data), blob[te.Offset:te.Offset+4*n])
		st.Tensors = append(st.Tensors, Tensor{Name: te.Name, Shape: te.Shape, Data: data})
	}
	return info, st, nil
}

func (m *Manager) readVerified(ctx context.Context, key string, o ObjectEntry, keep bool) ([]byte, error) {
	rc, err := m.store.Get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", o.Key, err)
	}
	defer rc.Close()
	crc := crc32.New(castagnoli)
	var buf bytes.Buffer
	var w io.Writer = crc
	if keep {
		buf.Grow(int(o.Size))
		w = io.MultiWriter(crc, &buf)
	}
	n, err := io.Copy(w, ctxReader{ctx, rc})
	if err != nil {
		return nil, fmt.Errorf("object %s: %w", o.Key, err)
	}
	if n != o.Size {
		return nil, fmt.Errorf("object %s has %d bytes, the manifest says %d", o.Key, n, o.Size)
	}
	if got := crc.Sum32(); got != o.CRC32C {
		return nil, fmt.Errorf("object %s has CRC32C %08x, the manifest says %08x (corrupt)", o.Key, got, o.CRC32C)
	}
	return buf.Bytes(), nil
}

// Load returns the newest valid checkpoint at or below maxStep (any step if
// maxStep < 0). Invalid checkpoints on the way are logged and skipped.
func (m *Manager) Load(ctx context.Context, maxStep int64) (*State, Info, error) {
	steps, err := m.steps(ctx)
	if err != nil {
		return nil, Info{}, err
	}
	for _, s := range steps {
		if maxStep >= 0 && s > maxStep {
			continue
		}
		info, st, err := m.verify(ctx, s, true)
		if err != nil {
			if ctx.Err() != nil {
				return nil, Info{}, ctx.Err()
			}
			m.log.Warn("checkpoint: skipping invalid checkpoint, trying the previous one",
				zap.Int64("step", s), zap.String("url", info.URL), zap.String("problem", err.Error()))
			continue
		}
		info.Valid = true
		return st, info, nil
	}
	return nil, Info{}, ErrNoCheckpoint
}

// retain deletes all but the newest keep valid checkpoints, and objects of
// uncommitted saves older than the newest valid checkpoint. It never
// deletes the newest valid checkpoint.
func (m *Manager) retain(ctx context.Context) error {
	steps, err := m.steps(ctx)
	if err != nil {
		return err
	}
	valid := 0
	for _, s := range steps {
		_, _, verr := m.verify(ctx, s, false)
		switch {
		case verr == nil && valid < m.keep:
			valid++
			continue
		case verr != nil && valid == 0:
			// Newer than every valid checkpoint: may be a save in flight.
			continue
		}
		if err := m.deleteStep(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

func (m *Manager) deleteStep(ctx context.Context, step int64) error {
	dir := m.stepKey(step)
	objs, err := m.store.List(ctx, dir)
	if err != nil {
		return err
	}
	// The manifest goes first, so a partly deleted checkpoint is never
	// mistaken for a valid one.
	sort.Slice(objs, func(i, j int) bool { return strings.HasSuffix(objs[i].Key, manifestName) })
	for _, o := range objs {
		if err := m.store.Delete(ctx, o.Key); err != nil {
			return err
		}
	}
	return nil
}

func floatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}
