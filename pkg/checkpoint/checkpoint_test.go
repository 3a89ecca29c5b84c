package checkpoint

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

func state(step int64, fill float32) *State {
	a := make([]float32, 6)
	b := make([]float32, 3)
	for i := range a {
		a[i] = fill + float32(i)
	}
	for i := range b {
		b[i] = -fill - float32(i)
	}
	return &State{
		Step: step, Epoch: 1, EpochSamples: 640, GlobalSamples: 60640, World: 2, Seed: 9,
		Tensors: []Tensor{{Name: "w", Shape: []int{2, 3}, Data: a}, {Name: "b", Shape: []int{3}, Data: b}},
		Meta:    map[string]string{"job": "j1"},
	}
}

func newManager(t *testing.T, keep int) (*Manager, string) {
	dir := t.TempDir()
	st, err := Open("file://" + dir)
	if err != nil {
		t.Fatal(err)
	}
	return NewManager(st, "jobs/j1", keep, zaptest.NewLogger(t)), dir
}

func TestSaveLoadRoundTrip(t *testing.T) {
	m, _ := newManager(t, 3)
	ctx := context.Background()
	if _, _, err := m.Load(ctx, -1); !errors.Is(err, ErrNoCheckpoint) {
		t.Fatalf("empty store: %v, want ErrNoCheckpoint", err)
	}
	want := state(100, 1.5)
	info, err := m.Save(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Valid || info.Step != 100 || !strings.Contains(info.URL, "step-000000000100") {
		t.Errorf("info = %+v", info)
	}
	got, _, err := m.Load(ctx, -1)
	if err != nil {
		t.Fatal(err)
	}
	if got.Step != 100 || got.Epoch != 1 || got.EpochSamples != 640 || got.GlobalSamples != 60640 || got.World != 2 || got.Seed != 9 || got.Meta["job"] != "j1" {
		t.Errorf("position not restored: %+v", got)
	}
	for _, wt := range want.Tensors {
		gt := got.Tensor(wt.Name)
		if gt == nil || !slices.Equal(gt.Shape, wt.Shape) || !slices.Equal(gt.Data, wt.Data) {
			t.Errorf("tensor %s: got %+v, want %+v", wt.Name, gt, wt)
		}
	}
}

func TestCorruptCheckpointFallsBackToPrevious(t *testing.T) {
	m, dir := newManager(t, 5)
	ctx := context.Background()
	for _, s := range []int64{10, 20} {
		if _, err := m.Save(ctx, state(s, float32(s))); err != nil {
			t.Fatal(err)
		}
	}
	// Flip one byte of step 20's data.
	p := filepath.Join(dir, "jobs/j1/step-000000000020/state.bin")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[5] ^= 0x40
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, _, err := m.Load(ctx, -1)
	if err != nil || got.Step != 10 {
		t.Fatalf("Load after corruption: step %v, %v; want step 10", got, err)
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || list[0].Valid || !strings.Contains(list[0].Problem, "corrupt") || !list[1].Valid {
		t.Errorf("List = %+v, want step 20 invalid (corrupt) and step 10 valid", list)
	}
}

func TestUncommittedSaveIsNoCheckpoint(t *testing.T) {
	m, dir := newManager(t, 5)
	ctx := context.Background()
	if _, err := m.Save(ctx, state(10, 1)); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Save(ctx, state(20, 2)); err != nil {
		t.Fatal(err)
	}
	// A process killed between data and manifest: remove step 20's manifest.
	if err := os.Remove(filepath.Join(dir, "jobs/j1/step-000000000020/manifest.json")); err != nil {
		t.Fatal(err)
	}
	got, _, err := m.Load(ctx, -1)
	if err != nil || got.Step != 10 {
		t.Fatalf("Load: %v %v, want step 10", got, err)
	}
	// The orphan is removed once a newer checkpoint commits.
	if _, err := m.Save(ctx, state(30, 3)); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "jobs/j1/step-000000000020")); !os.IsNotExist(err) {
		t.Errorf("orphaned objects of step 20 still there: %v", err)
	}
}

func TestRetentionKeepsNewest(t *testing.T) {
	m, _ := newManager(t, 2)
	ctx := context.Background()
	for s := int64(1); s <= 5; s++ {
		if _, err := m.Save(ctx, state(s, float32(s))); err != nil {
			t.Fatal(err)
		}
	}
	list, err := m.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var steps []int64
	for _, i := range list {
		steps = append(steps, i.Step)
	}
	if !slices.Equal(steps, []int64{5, 4}) {
		t.Errorf("kept steps %v, want [5 4]", steps)
	}
	got, _, err := m.Load(ctx, 4)
	if err != nil || got.Step != 4 {
		t.Errorf("Load(maxStep 4) = %v, %v", got, err)
	}
}

func TestSaveRejectsShapeMismatch(t *testing.T) {
	m, _ := newManager(t, 1)
	st := state(1, 0)
	st.Tensors[0].Shape = []int{4, 4}
	if _, err := m.Save(context.Background(), st); err == nil || !strings.Contains(err.Error(), "tensor w") {
		t.Fatalf("Save = %v, want an error naming tensor w", err)
	}
}

func TestFileStoreKeys(t *testing.T) {
	s, err := NewFileStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"", "../x", "a/../../b", "/abs"} {
		if err := s.Put(context.Background(), bad, strings.NewReader("x"), 1); err == nil {
			t.Errorf("Put(%q) accepted", bad)
		}
	}
	if _, err := s.Get(context.Background(), "missing"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Get(missing) = %v", err)
	}
	if _, err := Open("s4://x"); err == nil {
		t.Error("unknown scheme accepted")
	}
}
