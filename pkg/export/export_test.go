package export_test

import (
	"bytes"
	"context"
	"encoding/json"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"

	"github.com/ringmaster/ringmaster/internal/versitygw"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/export"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// tinyConfigs are small models of every family, as a job spec would give
// them (defaults not filled in).
var tinyConfigs = []model.Config{
	{Name: "cnn"},
	{Name: "lstm", Vocab: 11, Ctx: 5, Layers: 2, Dim: 6, Hidden: 7},
	{Name: "gpt", Vocab: 13, Ctx: 6, Layers: 2, Dim: 8, Heads: 2},
	{Name: "gpt", Vocab: 13, Ctx: 6, Layers: 1, Dim: 8, Heads: 2, TieEmbeddings: true},
}

// train builds the model and takes a few SGD steps with momentum on random
// batches, so that its parameters are no longer the initial ones and the
// optimizer has state.
func train(t *testing.T, cfg model.Config, seed uint64) (model.Model, *model.SGD) {
	t.Helper()
	m, err := model.New(cfg, model.NewCPU(1), seed)
	if err != nil {
		t.Fatal(err)
	}
	opt := &model.SGD{LR: 0.05, Momentum: 0.9}
	r := rand.New(rand.NewPCG(seed, 3))
	for range 3 {
		var b model.Batch
		if cfg.Name == "cnn" {
			b = model.Batch{N: 4, X: make([]float32, 4*model.CNNInputSize), Targets: make([]int32, 4)}
			for i := range b.X {
				b.X[i] = float32(r.NormFloat64())
			}
			for i := range b.Targets {
				b.Targets[i] = int32(r.IntN(model.CNNClasses))
			}
		} else {
			n, T := 3, cfg.Ctx
			b = model.Batch{N: n, T: T, Tokens: make([]int32, n*T), Targets: make([]int32, n*T)}
			for i := range b.Tokens {
				b.Tokens[i], b.Targets[i] = int32(r.IntN(cfg.Vocab)), int32(r.IntN(cfg.Vocab))
			}
		}
		m.ZeroGrads()
		if _, err := m.ForwardBackward(b, 1/float32(b.Terms())); err != nil {
			t.Fatal(err)
		}
		opt.Step(m.Params(), m.Grads())
	}
	return m, opt
}

// trainerState is the checkpoint state the trainer writes
// (internal/worker/trainer.go): "model." tensors, then the optimizer's,
// and the metadata. configJSON "" leaves model_config out, as older
// checkpoints do.
func trainerState(m model.Model, opt *model.SGD, step int64, job, configJSON string) *checkpoint.State {
	st := &checkpoint.State{Step: step, World: 1, Seed: 1,
		Meta: map[string]string{"job": job, "model": m.Name(), "optimizer": "sgd", "optimizer_steps": strconv.FormatInt(opt.Steps(), 10)}}
	if configJSON != "" {
		st.Meta["model_config"] = configJSON
	}
	for _, ti := range m.Tensors() {
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "model." + ti.Name, Shape: ti.Shape, Data: ti.Slice(m.Params())})
	}
	for _, ti := range m.Tensors() {
		st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "optim.momentum." + ti.Name, Shape: ti.Shape, Data: ti.Slice(opt.State())})
	}
	return st
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// save writes st as a checkpoint of job under the store's directory and
// returns the checkpoint's URL.
func save(t *testing.T, store checkpoint.Store, job string, st *checkpoint.State) string {
	t.Helper()
	info, err := checkpoint.NewManager(store, job, 10, zaptest.NewLogger(t)).Save(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	return info.URL
}

// wantTensors is what an export of m must hold: every tensor of the model,
// and lm_head.weight = transformer.wte.weight when tied.
func wantTensors(m model.Model) map[string]export.Tensor {
	want := map[string]export.Tensor{}
	for _, ti := range m.Tensors() {
		want[ti.Name] = export.Tensor{Name: ti.Name, Shape: ti.Shape, Data: ti.Slice(m.Params())}
	}
	if m.Config().TieEmbeddings {
		wte := want["transformer.wte.weight"]
		want["lm_head.weight"] = export.Tensor{Name: "lm_head.weight", Shape: wte.Shape, Data: wte.Data}
	}
	return want
}

// checkFile reads a safetensors file with the safetensors library and
// compares names, shapes and every value bit for bit with want.
func checkFile(t *testing.T, path string, want map[string]export.Tensor) map[string]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	got, md, err := export.ReadSafetensors(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		names := make([]string, len(got))
		for i, g := range got {
			names[i] = g.Name
		}
		t.Errorf("file holds %d tensors %v, want %d", len(got), names, len(want))
	}
	for _, g := range got {
		w, ok := want[g.Name]
		if !ok {
			t.Errorf("unexpected tensor %s", g.Name)
			continue
		}
		if !slices.Equal(g.Shape, w.Shape) {
			t.Errorf("%s: shape %v, want %v", g.Name, g.Shape, w.Shape)
		}
		if len(g.Data) != len(w.Data) {
			t.Errorf("%s: %d values, want %d", g.Name, len(g.Data), len(w.Data))
			continue
		}
		for i := range g.Data {
			if math.Float32bits(g.Data[i]) != math.Float32bits(w.Data[i]) {
				t.Errorf("%s[%d] = %g, want %g", g.Name, i, g.Data[i], w.Data[i])
				break
			}
		}
	}
	return md
}

func TestExportSafetensors(t *testing.T) {
	ctx := context.Background()
	for i, cfg := range tinyConfigs {
		name := cfg.Name
		if cfg.TieEmbeddings {
			name += "-tied"
		}
		t.Run(name, func(t *testing.T) {
			m, opt := train(t, cfg, uint64(10+i))
			store, err := checkpoint.NewFileStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			url := save(t, store, "job-"+name, trainerState(m, opt, 30, "job-"+name, mustJSON(t, cfg)))

			st, info, err := export.LoadCheckpoint(ctx, url, -1, zaptest.NewLogger(t))
			if err != nil {
				t.Fatal(err)
			}
			if info.Step != 30 {
				t.Fatalf("loaded step %d, want 30", info.Step)
			}
			w, err := export.FromCheckpoint(st)
			if err != nil {
				t.Fatal(err)
			}
			if !w.Verified {
				t.Error("Verified = false for a checkpoint with its model_config")
			}
			if got, want := w.Parameters(), int64(len(m.Params())); got != want {
				t.Errorf("Parameters() = %d, want %d (a tied head counted once)", got, want)
			}
			path := filepath.Join(t.TempDir(), "out.safetensors")
			if err := export.WriteFile(path, w); err != nil {
				t.Fatal(err)
			}
			md := checkFile(t, path, wantTensors(m))

			if md["job"] != "job-"+name || md["step"] != "30" || md["model"] != cfg.Name || md["format"] != "pt" {
				t.Errorf("metadata %v: want job %s, step 30, model %s, format pt", md, "job-"+name, cfg.Name)
			}
			var got model.Config
			if err := json.Unmarshal([]byte(md["model_config"]), &got); err != nil {
				t.Fatalf("model_config %q: %v", md["model_config"], err)
			}
			if got != m.Config() {
				t.Errorf("model_config = %+v, want the model's config with defaults %+v", got, m.Config())
			}
			if md["parameters"] != strconv.Itoa(len(m.Params())) {
				t.Errorf("parameters = %s, want %d", md["parameters"], len(m.Params()))
			}
		})
	}
}

// The file's bytes are the format's, checked without the library: an
// 8-byte little-endian header length, a JSON header padded to a multiple
// of 8, F32 data at the offsets it names.
func TestSafetensorsLayout(t *testing.T) {
	w := &export.Weights{Job: "j", Step: 7, Config: model.Config{Name: "cnn"}, Tensors: []export.Tensor{
		{Name: "b", Shape: []int{2}, Data: []float32{1.5, -2}},
		{Name: "a", Shape: []int{1, 3}, Data: []float32{0, 1, float32(math.Inf(-1))}},
	}}
	var buf bytes.Buffer
	if err := w.WriteSafetensors(&buf); err != nil {
		t.Fatal(err)
	}
	b := buf.Bytes()
	n := int(uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24)
	if n%8 != 0 || len(b) != 8+n+4*5 {
		t.Fatalf("header length %d (want a multiple of 8), file %d bytes (want %d)", n, len(b), 8+n+20)
	}
	var header map[string]json.RawMessage
	if err := json.Unmarshal(b[8:8+n], &header); err != nil {
		t.Fatal(err)
	}
	var md map[string]string
	if err := json.Unmarshal(header["__metadata__"], &md); err != nil || md["step"] != "7" || md["job"] != "j" {
		t.Errorf("__metadata__ %s: %v", header["__metadata__"], err)
	}
	data := b[8+n:]
	for name, want := range map[string][]float32{"a": {0, 1, float32(math.Inf(-1))}, "b": {1.5, -2}} {
		var info struct {
			DType   string   `json:"dtype"`
			Shape   []int    `json:"shape"`
			Offsets [2]int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(header[name], &info); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if info.DType != "F32" || info.Offsets[1]-info.Offsets[0] != int64(4*len(want)) {
			t.Errorf("%s: %+v", name, info)
			continue
		}
		for i, v := range want {
			o := info.Offsets[0] + int64(4*i)
			bits := uint32(data[o]) | uint32(data[o+1])<<8 | uint32(data[o+2])<<16 | uint32(data[o+3])<<24
			if bits != math.Float32bits(v) {
				t.Errorf("%s[%d] = %g, want %g", name, i, math.Float32frombits(bits), v)
			}
		}
	}
}

// Checkpoints written before model_config existed carry only the model's
// name: enough for the CNN; a language model is exported unchecked, with a
// tied head restored from the token embedding.
func TestExportWithoutModelConfig(t *testing.T) {
	cnn, opt := train(t, model.Config{Name: "cnn"}, 1)
	w, err := export.FromCheckpoint(trainerState(cnn, opt, 5, "old", ""))
	if err != nil {
		t.Fatal(err)
	}
	if !w.Verified || w.Metadata()["model_config"] != `{"name":"cnn"}` || len(w.Tensors) != len(cnn.Tensors()) {
		t.Errorf("cnn: verified %v, model_config %s, %d tensors", w.Verified, w.Metadata()["model_config"], len(w.Tensors))
	}

	gpt, opt := train(t, tinyConfigs[3], 2)
	w, err = export.FromCheckpoint(trainerState(gpt, opt, 5, "old", ""))
	if err != nil {
		t.Fatal(err)
	}
	if w.Verified || w.Metadata()["model_config"] != `{"name":"gpt"}` {
		t.Errorf("gpt: verified %v, model_config %s; want unverified, the name only", w.Verified, w.Metadata()["model_config"])
	}
	path := filepath.Join(t.TempDir(), "gpt.safetensors")
	if err := export.WriteFile(path, w); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, wantTensors(gpt))
}

func TestExportRefuses(t *testing.T) {
	gpt, opt := train(t, tinyConfigs[2], 3)
	cfg := mustJSON(t, tinyConfigs[2])
	cases := []struct {
		name  string
		edit  func(st *checkpoint.State)
		error string
	}{
		{"no model", func(st *checkpoint.State) { delete(st.Meta, "model"); delete(st.Meta, "model_config") }, "names no model"},
		{"bad config JSON", func(st *checkpoint.State) { st.Meta["model_config"] = "{" }, "not a model configuration"},
		{"invalid config", func(st *checkpoint.State) { st.Meta["model_config"] = `{"name":"gpt","vocab":13}` }, "does not describe a model"},
		{"other sizes", func(st *checkpoint.State) {
			st.Meta["model_config"] = mustJSON(t, model.Config{Name: "gpt", Vocab: 14, Ctx: 6, Layers: 2, Dim: 8, Heads: 2})
		}, "has shape [13 8]; a gpt model"},
		{"missing tensor", func(st *checkpoint.State) {
			st.Tensors = slices.DeleteFunc(st.Tensors, func(t checkpoint.Tensor) bool { return t.Name == "model.transformer.ln_f.bias" })
		}, "no tensor model.transformer.ln_f.bias"},
		{"extra tensor", func(st *checkpoint.State) {
			st.Tensors = append(st.Tensors, checkpoint.Tensor{Name: "model.extra", Shape: []int{1}, Data: []float32{1}})
		}, "holds model.extra"},
		{"no model tensors", func(st *checkpoint.State) {
			st.Tensors = slices.DeleteFunc(st.Tensors, func(t checkpoint.Tensor) bool { return strings.HasPrefix(t.Name, "model.") })
		}, "no model.* tensors"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			st := trainerState(gpt, opt, 9, "j", cfg)
			c.edit(st)
			_, err := export.FromCheckpoint(st)
			if err == nil || !strings.Contains(err.Error(), c.error) {
				t.Errorf("FromCheckpoint: %v, want an error containing %q", err, c.error)
			}
		})
	}
}

// A job's directory: the newest valid checkpoint, or a chosen step; a
// corrupt newest one is skipped. Wrong steps and paths are named.
func TestLoadCheckpoint(t *testing.T) {
	ctx := context.Background()
	log := zaptest.NewLogger(t)
	cnn, opt := train(t, model.Config{Name: "cnn"}, 4)
	dir := t.TempDir()
	store, err := checkpoint.NewFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	cfg := mustJSON(t, model.Config{Name: "cnn"})
	save(t, store, "job", trainerState(cnn, opt, 10, "job", cfg))
	url20 := save(t, store, "job", trainerState(cnn, opt, 20, "job", cfg))
	jobURL := "file://" + filepath.Join(dir, "job")

	for _, c := range []struct {
		url  string
		step int64
		want int64
	}{{jobURL, -1, 20}, {jobURL + "/", 10, 10}, {url20, -1, 20}, {url20, 20, 20}} {
		_, info, err := export.LoadCheckpoint(ctx, c.url, c.step, log)
		if err != nil || info.Step != c.want {
			t.Errorf("LoadCheckpoint(%s, %d) = step %d, %v; want step %d", c.url, c.step, info.Step, err, c.want)
		}
	}

	// Corrupt step 20's data: the newest valid one is step 10.
	objs, err := store.List(ctx, "job/step-000000000020/data-")
	if err != nil || len(objs) == 0 {
		t.Fatalf("data objects of step 20: %v %v", objs, err)
	}
	p, _ := store.Path(objs[0].Key)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, info, err := export.LoadCheckpoint(ctx, jobURL, -1, log); err != nil || info.Step != 10 {
		t.Errorf("newest valid after corrupting step 20: step %d, %v; want step 10", info.Step, err)
	}

	for _, c := range []struct {
		url   string
		step  int64
		error string
	}{
		{url20, 10, "is the checkpoint of step 20, but step 10 was asked for"},
		{jobURL, 20, "corrupt"},
		{jobURL, 15, "no valid checkpoint at step 15"},
		{"file://" + filepath.Join(dir, "nojob"), -1, "no such directory"},
		{"file://" + filepath.Join(dir), -1, "no valid checkpoint under"},
		{"http://host/x", -1, "not supported"},
	} {
		_, _, err := export.LoadCheckpoint(ctx, c.url, c.step, log)
		if err == nil || !strings.Contains(err.Error(), c.error) {
			t.Errorf("LoadCheckpoint(%s, %d): %v, want an error containing %q", c.url, c.step, err, c.error)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "nojob")); !os.IsNotExist(err) {
		t.Errorf("LoadCheckpoint created the directory it was asked to read: %v", err)
	}
}

// The same through an S3 store (versitygw), with credentials from the
// environment as the CLI gets them.
func TestExportFromS3(t *testing.T) {
	srv := versitygw.Start(t, "ckpt")
	store, err := checkpoint.NewS3Store(srv.Config("ckpt", "runs"))
	if err != nil {
		t.Fatal(err)
	}
	for _, kv := range versitygw.Env() {
		k, v, _ := strings.Cut(kv, "=")
		t.Setenv(k, v)
	}
	cfg := tinyConfigs[1]
	m, opt := train(t, cfg, 5)
	url := save(t, store, "lm", trainerState(m, opt, 3, "lm", mustJSON(t, cfg)))
	if !strings.HasPrefix(url, "s3://ckpt/runs/lm/step-000000000003") {
		t.Fatalf("checkpoint URL %s", url)
	}
	st, _, err := export.LoadCheckpoint(context.Background(), url, -1, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	w, err := export.FromCheckpoint(st)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "lstm.safetensors")
	if err := export.WriteFile(path, w); err != nil {
		t.Fatal(err)
	}
	checkFile(t, path, wantTensors(m))
}

func TestCheckFormat(t *testing.T) {
	if err := export.CheckFormat("safetensors"); err != nil {
		t.Error(err)
	}
	if err := export.CheckFormat("onnx"); err == nil || !strings.Contains(err.Error(), "--format safetensors") {
		t.Errorf("CheckFormat(onnx) = %v, want an error naming --format safetensors", err)
	}
}
