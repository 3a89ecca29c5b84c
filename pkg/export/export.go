package export

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"slices"
	"strconv"
	"strings"
	"unsafe"

	"github.com/nlpodyssey/safetensors"

	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// FormatSafetensors is the name of the safetensors format.
const FormatSafetensors = "safetensors"

// Formats lists the formats an export can write.
func Formats() []string { return []string{FormatSafetensors} }

// CheckFormat returns an error naming the known formats unless format is
// one of them.
func CheckFormat(format string) error {
	if slices.Contains(Formats(), format) {
		return nil
	}
	return fmt.Errorf("export: unknown format %q; use --format %s", format, strings.Join(Formats(), " or --format "))
}

// The checkpoint's names: the trainer stores a model tensor NAME as
// "model.NAME" (optimizer state under other prefixes), the model's name in
// Meta["model"] and its Config as JSON in Meta["model_config"].
const (
	modelPrefix   = "model."
	metaJob       = "job"
	metaModel     = "model"
	metaConfig    = "model_config"
	tiedHead      = "lm_head.weight"
	tiedEmbedding = "transformer.wte.weight"
)

// FileName is the default name of an export of job (or model) at step:
// "<job>-step-<step>.safetensors", with the name cut down to letters,
// digits, '.', '_' and '-' (others become '-', leading dots and dashes
// go, at most 100 characters kept), since it comes from the checkpoint's
// stored metadata and must not name another directory.
func FileName(job string, step int64) string {
	b := make([]byte, 0, len(job))
	for i := 0; i < len(job) && len(b) < maxNameBytes; i++ {
		c := job[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		case c == '.' || c == '-':
			if len(b) == 0 {
				continue
			}
		default:
			if len(b) == 0 || b[len(b)-1] == '-' {
				continue
			}
			c = '-'
		}
		b = append(b, c)
	}
	name := string(b)
	if name == "" {
		name = "model"
	}
	return fmt.Sprintf("%s-step-%d.safetensors", name, step)
}

const maxNameBytes = 100

// Tensor is one exported tensor: float32, row-major, PyTorch's name and
// shape.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
}

// Weights are a model's trained parameters as a PyTorch user sees them.
type Weights struct {
	// Job is the id of the job that trained them (may be empty).
	Job string
	// Step is the number of training steps behind them.
	Step int64
	// Config is the model's configuration, with defaults filled in when
	// Verified.
	Config model.Config
	// Verified says the tensors were checked, names and shapes, against
	// the table of model.New(Config): the file then loads with
	// load_state_dict(strict=True) into the equivalent torch module. It is
	// false only for an old checkpoint without Meta["model_config"] whose
	// model needs more than its name.
	Verified bool
	// Tensors are in the model's state_dict order; with tied embeddings
	// lm_head.weight shares its Data with transformer.wte.weight.
	Tensors []Tensor
}

// FromCheckpoint returns the model weights of a checkpoint written by the
// trainer: its "model." tensors, renamed without the prefix, and no
// optimizer state. The tensors share memory with st.
func FromCheckpoint(st *checkpoint.State) (*Weights, error) {
	w := &Weights{Job: st.Meta[metaJob], Step: st.Step}
	var fromName bool
	switch raw := st.Meta[metaConfig]; {
	case raw != "":
		if err := json.Unmarshal([]byte(raw), &w.Config); err != nil {
			return nil, fmt.Errorf("export: the checkpoint at step %d has a model_config that is not a model configuration (%v): %s", st.Step, err, raw)
		}
	case st.Meta[metaModel] != "":
		// Written before the trainer recorded the configuration.
		w.Config, fromName = model.Config{Name: st.Meta[metaModel]}, true
	default:
		return nil, fmt.Errorf("export: the checkpoint at step %d names no model (its metadata has neither %q nor %q); was it written by the ringmaster trainer?", st.Step, metaConfig, metaModel)
	}

	var have []Tensor // the checkpoint's model tensors, in its order
	byName := map[string]int{}
	for _, t := range st.Tensors {
		name, ok := strings.CutPrefix(t.Name, modelPrefix)
		if !ok {
			continue // optimizer state, not exported
		}
		if n := numel(t.Shape); n != len(t.Data) {
			return nil, fmt.Errorf("export: checkpoint tensor %s has shape %v but %d elements", t.Name, t.Shape, len(t.Data))
		}
		byName[name] = len(have)
		have = append(have, Tensor{Name: name, Shape: slices.Clone(t.Shape), Data: t.Data})
	}
	if len(have) == 0 {
		return nil, fmt.Errorf("export: the checkpoint at step %d holds no %s* tensors, so no model weights", st.Step, modelPrefix)
	}

	m, err := model.New(w.Config, model.NewCPU(1), 0)
	switch {
	case err != nil && !fromName:
		return nil, fmt.Errorf("export: the checkpoint at step %d has a model_config that does not describe a model: %w", st.Step, err)
	case err != nil:
		// Only the name is known (a language model needs its sizes):
		// export what is there, unchecked.
		w.Tensors = have
	default:
		w.Config, w.Verified = m.Config(), true
		table := m.Tensors()
		for _, ti := range table {
			i, ok := byName[ti.Name]
			if !ok {
				return nil, fmt.Errorf("export: the checkpoint at step %d has no tensor %s%s, which a %s model with %s has", st.Step, modelPrefix, ti.Name, w.Config.Name, configJSON(w.Config))
			}
			if !slices.Equal(have[i].Shape, ti.Shape) {
				return nil, fmt.Errorf("export: checkpoint tensor %s%s has shape %v; a %s model with %s has %v", modelPrefix, ti.Name, have[i].Shape, w.Config.Name, configJSON(w.Config), ti.Shape)
			}
			w.Tensors = append(w.Tensors, have[i])
			delete(byName, ti.Name)
		}
		if len(byName) > 0 {
			extra := make([]string, 0, len(byName))
			for name := range byName {
				extra = append(extra, modelPrefix+name)
			}
			slices.Sort(extra)
			return nil, fmt.Errorf("export: the checkpoint at step %d holds %s, which a %s model with %s does not have", st.Step, strings.Join(extra, ", "), w.Config.Name, configJSON(w.Config))
		}
	}

	// A tied head is the token embedding, stored once; the torch module's
	// state_dict lists it under both names.
	// (Unverified, a GPT without lm_head.weight can only be a tied one.)
	if w.Config.Name == "gpt" {
		if _, ok := w.tensor(tiedHead); !ok {
			if wte, ok := w.tensor(tiedEmbedding); ok {
				w.Tensors = append(w.Tensors, Tensor{Name: tiedHead, Shape: slices.Clone(wte.Shape), Data: wte.Data})
			}
		}
	}
	return w, nil
}

func (w *Weights) tensor(name string) (Tensor, bool) {
	for _, t := range w.Tensors {
		if t.Name == name {
			return t, true
		}
	}
	return Tensor{}, false
}

// Metadata is the safetensors file's __metadata__: format "pt", job, step,
// model and model_config (the Config as JSON).
func (w *Weights) Metadata() map[string]string {
	md := map[string]string{
		"format":     "pt",
		"step":       strconv.FormatInt(w.Step, 10),
		metaModel:    w.Config.Name,
		metaConfig:   configJSON(w.Config),
		"producer":   "ringmaster",
		"parameters": strconv.FormatInt(w.Parameters(), 10),
	}
	if w.Job != "" {
		md[metaJob] = w.Job
	}
	return md
}

// Parameters is the number of distinct parameters: every tensor's elements,
// a tied head counted once (as PyTorch's parameters() does).
func (w *Weights) Parameters() int64 {
	var n int64
	seen := map[*float32]bool{}
	for _, t := range w.Tensors {
		if len(t.Data) > 0 {
			if seen[&t.Data[0]] {
				continue
			}
			seen[&t.Data[0]] = true
		}
		n += int64(len(t.Data))
	}
	return n
}

// Bytes is the size of the tensor data in the file.
func (w *Weights) Bytes() int64 {
	var n int64
	for _, t := range w.Tensors {
		n += 4 * int64(len(t.Data))
	}
	return n
}

// WriteSafetensors writes the weights as a safetensors file: F32 tensors
// under their PyTorch names, Metadata as __metadata__. It writes the
// tensors' memory directly on little-endian machines, and a converted copy
// of each tensor elsewhere.
func (w *Weights) WriteSafetensors(out io.Writer) error {
	views := make(map[string]safetensors.TensorView, len(w.Tensors))
	for _, t := range w.Tensors {
		if _, dup := views[t.Name]; dup {
			return fmt.Errorf("export: tensor %s twice", t.Name)
		}
		shape := make([]uint64, len(t.Shape))
		for i, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("export: tensor %s has a negative dimension in %v", t.Name, t.Shape)
			}
			shape[i] = uint64(d)
		}
		v, err := safetensors.NewTensorView(safetensors.F32, shape, littleEndian(t.Data))
		if err != nil {
			return fmt.Errorf("export: tensor %s: %w", t.Name, err)
		}
		views[t.Name] = v
	}
	if err := safetensors.SerializeToWriter(views, w.Metadata(), out); err != nil {
		return fmt.Errorf("export: writing safetensors: %w", err)
	}
	return nil
}

// ReadSafetensors parses a safetensors file of F32 tensors, as
// WriteSafetensors writes it, into its tensors (in the file's order, which
// is by name) and metadata. The tensors are copies.
func ReadSafetensors(b []byte) ([]Tensor, map[string]string, error) {
	st, err := safetensors.Deserialize(b)
	if err != nil {
		return nil, nil, fmt.Errorf("export: not a safetensors file: %w", err)
	}
	_, md, err := safetensors.ReadMetadata(b)
	if err != nil {
		return nil, nil, fmt.Errorf("export: not a safetensors file: %w", err)
	}
	var out []Tensor
	for _, nv := range st.Tensors() {
		if nv.TensorView.DType() != safetensors.F32 {
			return nil, nil, fmt.Errorf("export: tensor %s is %s, not F32", nv.Name, nv.TensorView.DType())
		}
		shape := make([]int, len(nv.TensorView.Shape()))
		for i, d := range nv.TensorView.Shape() {
			if d > math.MaxInt32 {
				return nil, nil, fmt.Errorf("export: tensor %s has a dimension of %d", nv.Name, d)
			}
			shape[i] = int(d)
		}
		raw := nv.TensorView.Data()
		data := make([]float32, len(raw)/4)
		for i := range data {
			data[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
		}
		out = append(out, Tensor{Name: nv.Name, Shape: shape, Data: data})
	}
	slices.SortFunc(out, func(a, b Tensor) int { return strings.Compare(a.Name, b.Name) })
	return out, md.Metadata(), nil
}

// configJSON is c as JSON (a Config always marshals).
func configJSON(c model.Config) string {
	b, err := json.Marshal(c)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func numel(shape []int) int {
	n := 1
	for _, d := range shape {
		n *= d
	}
	return n
}

// hostLittleEndian says whether float32 memory is already in the file's
// byte order.
var hostLittleEndian = binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// littleEndian returns f's bytes in little-endian order: f's own memory
// when the host is little-endian, a copy otherwise.
func littleEndian(f []float32) []byte {
	if len(f) == 0 {
		return []byte{}
	}
	if hostLittleEndian {
		return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), 4*len(f))
	}
	b := make([]byte, 4*len(f))
	for i, v := range f {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}
