package jobspec

import (
	"errors"
	"fmt"
	"math"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/model"
)

// Models and datasets this build knows. The model list is the single place a
// new model must be added for the job spec to accept it.
var (
	knownModels     = model.Names()
	knownDatasets   = []string{"mnist", "tokens"}
	knownOptimizers = []string{"sgd", "adamw"}
	knownWires      = []string{"f32", "bf16"}
	knownStores     = []string{"file", "s3"}
	knownIfBusy     = []string{"wait", "skip"}
	knownChecksums  = []string{"crc32c", "sha256"}
	knownSchedules  = []string{"constant", "cosine"}
)

// Defaults applied to fields the spec leaves out.
const (
	DefaultBatchSize         = 32
	DefaultLR                = 0.01
	DefaultMomentum          = 0.9
	DefaultEpochs            = 1
	DefaultSeed              = 1
	DefaultCheckpointEvery   = 500
	DefaultCheckpointKeep    = 3
	DefaultCollectiveTimeout = 30 * time.Second
	DefaultLogEvery          = 50
	DefaultAdamWWeightDecay  = 0.01
	DefaultBeta1             = 0.9
	DefaultBeta2             = 0.999
	DefaultEps               = 1e-8
	DefaultBucketBytes       = 1 << 20
	MaxWorkers               = 1024
	// DefaultMaxRestarts is how many failures a job absorbs by default.
	DefaultMaxRestarts = 3
)

// file is the YAML form. Pointers tell "left out" (take the default) from an
// explicit zero (which may be an error, e.g. workers: 0).
type file struct {
	Name              *string     `yaml:"name"`
	Model             *string     `yaml:"model"`
	Dataset           *datasetY   `yaml:"dataset"`
	Workers           *workersY   `yaml:"workers"`
	MaxRestarts       *int        `yaml:"max_restarts"`
	BatchSize         *int        `yaml:"batch_size"`
	Optimizer         *optimizerY `yaml:"optimizer"`
	Epochs            *int        `yaml:"epochs"`
	Steps             *int64      `yaml:"steps"`
	Seed              *uint64     `yaml:"seed"`
	Checkpoint        *checkptY   `yaml:"checkpoint"`
	Resume            *string     `yaml:"resume"`
	CollectiveTimeout *string     `yaml:"collective_timeout"`
	LogEvery          *int        `yaml:"log_every"`
	ModelConfig       *modelY     `yaml:"model_config"`
	GradAccum         *int        `yaml:"grad_accum"`
	InitFrom          *string     `yaml:"init_from"`
	InitExclude       []string    `yaml:"init_exclude"`
	Collective        *collY      `yaml:"collective"`
}

// workersY is `workers: N` (a plain job) or `workers: {min: A, max: B}`
// (an elastic job).
type workersY struct {
	N, Min, Max *int
}

func (w *workersY) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		return n.Decode(&w.N)
	}
	var m struct {
		Min *int `yaml:"min"`
		Max *int `yaml:"max"`
	}
	if err := n.Decode(&m); err != nil {
		return err
	}
	w.Min, w.Max = m.Min, m.Max
	return nil
}

type modelY struct {
	Vocab         *int  `yaml:"vocab"`
	Ctx           *int  `yaml:"ctx"`
	Layers        *int  `yaml:"layers"`
	Dim           *int  `yaml:"dim"`
	Heads         *int  `yaml:"heads"`
	Hidden        *int  `yaml:"hidden"`
	BPTT          *int  `yaml:"bptt"`
	TieEmbeddings *bool `yaml:"tie_embeddings"`
}

type collY struct {
	BucketBytes *int64  `yaml:"bucket_bytes"`
	Wire        *string `yaml:"wire"`
}

type datasetY struct {
	Name    *string `yaml:"name"`
	Path    *string `yaml:"path"`
	ValPath *string `yaml:"val_path"`
	Digits  []int   `yaml:"digits"`
}

type optimizerY struct {
	Name        *string  `yaml:"name"`
	LR          *float64 `yaml:"lr"`
	Momentum    *float64 `yaml:"momentum"`
	WeightDecay *float64 `yaml:"weight_decay"`
	Nesterov    *bool    `yaml:"nesterov"`
	Schedule    *string  `yaml:"schedule"`
	WarmupSteps *int64   `yaml:"warmup_steps"`
	MinLRRatio  *float64 `yaml:"min_lr_ratio"`
	Beta1       *float64 `yaml:"beta1"`
	Beta2       *float64 `yaml:"beta2"`
	Eps         *float64 `yaml:"eps"`
	GradClip    *float64 `yaml:"grad_clip"`
}

type checkptY struct {
	EverySteps *int64  `yaml:"every_steps"`
	Store      *string `yaml:"store"`
	Keep       *int    `yaml:"keep"`
	KeepEvery  *int64  `yaml:"keep_every"`
	Async      *bool   `yaml:"async"`
	IfBusy     *string `yaml:"if_busy"`
	Checksum   *string `yaml:"checksum"`
}

// FieldError is one problem with one field of a spec.
type FieldError struct {
	Field   string // YAML path, e.g. "optimizer.lr"; empty for the whole document
	Line    int    // 1-based line in the YAML, 0 if unknown
	Problem string // what is wrong and what is allowed
}

func (e FieldError) Error() string {
	loc := ""
	if e.Line > 0 {
		loc = fmt.Sprintf(" (line %d)", e.Line)
	}
	if e.Field == "" {
		return "job spec" + loc + ": " + e.Problem
	}
	return e.Field + loc + ": " + e.Problem
}

// Error lists every problem found in a spec.
type Error struct {
	Problems []FieldError
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("invalid job spec:")
	for _, p := range e.Problems {
		b.WriteString("\n  - ")
		b.WriteString(p.Error())
	}
	return b.String()
}

// Options are the environment-dependent parts of validation.
type Options struct {
	// DefaultStore is the checkpoint store URL used when the spec names none.
	DefaultStore string
	// CheckPaths makes Parse check that a dataset path exists on this
	// machine. Only a path that Policy allows is looked at.
	CheckPaths bool
	// Policy, if not nil, is where the spec's stores and datasets may lie
	// (a server's submission policy); nil allows any location.
	Policy *Policy
}

// MaxSpecBytes bounds a job spec: a real one is a few hundred bytes, and
// YAML's aliases can make a small document expand a lot.
const MaxSpecBytes = 64 << 10

// Parse decodes, validates and defaults a YAML job spec.
func Parse(data []byte, opt Options) (*pb.JobSpec, error) {
	if len(data) > MaxSpecBytes {
		return nil, &Error{Problems: []FieldError{{Problem: fmt.Sprintf("the spec is %d bytes; a job spec may have at most %d (put data in the dataset, not in the spec)", len(data), MaxSpecBytes)}}}
	}
	var root yaml.Node
	if err := yaml.Unmarshal(data, &root); err != nil {
		return nil, &Error{Problems: []FieldError{{Problem: "YAML syntax error: " + strings.TrimPrefix(err.Error(), "yaml: ") + "; fix the YAML syntax"}}}
	}
	if root.Kind == 0 || len(root.Content) == 0 {
		return nil, &Error{Problems: []FieldError{{Problem: "empty document; a job spec needs at least a name and a model"}}}
	}
	doc := root.Content[0]
	var errs []FieldError
	checkKeys(doc, "", schema, &errs)
	if len(errs) > 0 {
		return nil, &Error{Problems: errs}
	}
	var f file
	if err := doc.Decode(&f); err != nil {
		return nil, &Error{Problems: typeErrors(err)}
	}
	spec, errs := build(&f, doc, opt)
	if len(errs) > 0 {
		return nil, &Error{Problems: errs}
	}
	return spec, nil
}

// schema lists the allowed keys at each level; nil means a scalar.
type fields map[string]fields

var schema = fields{
	"name": nil, "model": nil, "workers": nil, "max_restarts": nil, "batch_size": nil, "epochs": nil,
	"steps": nil, "seed": nil, "resume": nil, "collective_timeout": nil, "log_every": nil,
	"grad_accum": nil, "init_from": nil, "init_exclude": nil,
	"model_config": {"vocab": nil, "ctx": nil, "layers": nil, "dim": nil, "heads": nil, "hidden": nil, "bptt": nil, "tie_embeddings": nil},
	"collective":   {"bucket_bytes": nil, "wire": nil},
	"dataset":      {"name": nil, "path": nil, "val_path": nil, "digits": nil},
	"optimizer": {"name": nil, "lr": nil, "momentum": nil, "weight_decay": nil, "nesterov": nil,
		"schedule": nil, "warmup_steps": nil, "min_lr_ratio": nil, "beta1": nil, "beta2": nil, "eps": nil, "grad_clip": nil},
	"checkpoint": {"every_steps": nil, "store": nil, "keep": nil, "keep_every": nil, "async": nil, "if_busy": nil, "checksum": nil},
}

var workersSchema = fields{"min": nil, "max": nil}

// listFields are the fields whose value is a list of scalars.
var listFields = map[string]bool{"dataset.digits": true, "init_exclude": true}

func checkKeys(n *yaml.Node, path string, allowed fields, errs *[]FieldError) {
	if n.Kind != yaml.MappingNode {
		*errs = append(*errs, FieldError{Field: path, Line: n.Line, Problem: "must be a mapping of fields"})
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		full := join(path, k.Value)
		sub, ok := allowed[k.Value]
		if full == "workers" && v.Kind == yaml.MappingNode {
			sub = workersSchema // workers: {min, max} makes a job elastic
		}
		if !ok {
			*errs = append(*errs, FieldError{Field: full, Line: k.Line,
				Problem: "unknown field; allowed fields here: " + strings.Join(keys(allowed), ", ")})
			continue
		}
		if sub != nil && v.Kind != yaml.ScalarNode {
			checkKeys(v, full, sub, errs)
		} else if sub != nil && v.Tag != "!!null" {
			*errs = append(*errs, FieldError{Field: full, Line: v.Line,
				Problem: "must be a mapping with fields " + strings.Join(keys(sub), ", ")})
		} else if sub == nil && v.Kind == yaml.SequenceNode && listFields[full] {
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					*errs = append(*errs, FieldError{Field: full, Line: item.Line, Problem: "must be a list of single values"})
				}
			}
		} else if sub == nil && v.Kind != yaml.ScalarNode {
			*errs = append(*errs, FieldError{Field: full, Line: v.Line, Problem: "must be a single value, not a list or mapping"})
		}
	}
}

func keys(f fields) []string {
	out := make([]string, 0, len(f))
	for k := range f {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func join(path, k string) string {
	if path == "" {
		return k
	}
	return path + "." + k
}

// typeErrors turns yaml.v3's decode errors ("line 4: cannot unmarshal !!str
// `abc` into int") into field errors. yaml.v3 does not report the field path,
// so the line is what locates it.
func typeErrors(err error) []FieldError {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		return []FieldError{{Problem: err.Error()}}
	}
	out := make([]FieldError, 0, len(te.Errors))
	for _, e := range te.Errors {
		var line int
		msg := e
		if _, scanErr := fmt.Sscanf(e, "line %d:", &line); scanErr == nil {
			msg = strings.TrimSpace(e[strings.Index(e, ":")+1:])
		}
		out = append(out, FieldError{Line: line, Problem: "wrong type: " + msg})
	}
	return out
}

// line finds the line of a key path in the document, for error messages.
func line(doc *yaml.Node, path ...string) int {
	n := doc
	l := 0
	for _, p := range path {
		if n == nil || n.Kind != yaml.MappingNode {
			return l
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == p {
				l = n.Content[i].Line
				next = n.Content[i+1]
			}
		}
		n = next
	}
	return l
}

func build(f *file, doc *yaml.Node, opt Options) (*pb.JobSpec, []FieldError) {
	var errs []FieldError
	bad := func(problem string, path ...string) {
		errs = append(errs, FieldError{Field: strings.Join(path, "."), Line: line(doc, path...), Problem: problem})
	}
	s := &pb.JobSpec{
		Dataset:   &pb.Dataset{Name: "mnist"},
		Optimizer: &pb.Optimizer{Name: "sgd", Lr: DefaultLR, Momentum: DefaultMomentum, Schedule: "constant"},
		Checkpoint: &pb.CheckpointPolicy{
			EverySteps: DefaultCheckpointEvery, Store: opt.DefaultStore, Keep: DefaultCheckpointKeep,
			IfBusy: "wait", Checksum: "crc32c",
		},
		Workers:             1,
		BatchSize:           DefaultBatchSize,
		Epochs:              DefaultEpochs,
		Seed:                DefaultSeed,
		CollectiveTimeoutMs: DefaultCollectiveTimeout.Milliseconds(),
		LogEvery:            DefaultLogEvery,
	}

	switch {
	case f.Name == nil || strings.TrimSpace(*f.Name) == "":
		bad("required; give the job a name (letters, digits, '-', '_')", "name")
	case !validName(*f.Name):
		bad(fmt.Sprintf("%q is not allowed; use 1 to 48 letters, digits, '-' or '_', starting with a letter or digit", *f.Name), "name")
	default:
		s.Name = *f.Name
	}
	if f.Model == nil || *f.Model == "" {
		bad("required; allowed models: "+strings.Join(knownModels, ", "), "model")
	} else if !contains(knownModels, *f.Model) {
		bad(fmt.Sprintf("unknown model %q; allowed models: %s", *f.Model, strings.Join(knownModels, ", ")), "model")
	} else {
		s.Model = *f.Model
		s.ModelConfig = modelConfig(s.Model, f.ModelConfig, bad)
		if s.Model != "cnn" {
			// The language models read token shards; the CNN reads MNIST.
			s.Dataset.Name = "tokens"
		}
	}

	if d := f.Dataset; d != nil {
		if d.Name != nil {
			if !contains(knownDatasets, *d.Name) {
				bad(fmt.Sprintf("unknown dataset %q; allowed datasets: %s", *d.Name, strings.Join(knownDatasets, ", ")), "dataset", "name")
			} else if want := datasetFor(s.Model); s.Model != "" && *d.Name != want {
				bad(fmt.Sprintf("model %s trains on the %s dataset, not %q", s.Model, want, *d.Name), "dataset", "name")
			}
			s.Dataset.Name = *d.Name
		}
	}
	if s.Dataset.Name == "tokens" {
		tokenDataset(f.Dataset, s.Dataset, opt, bad)
	} else if d := f.Dataset; d != nil {
		if d.ValPath != nil {
			bad("only the tokens dataset has validation shards; MNIST's test set is used for evaluation", "dataset", "val_path")
		}
		seen := map[int]bool{}
		for _, digit := range d.Digits {
			if digit < 0 || digit > 9 || seen[digit] {
				bad(fmt.Sprintf("%v is not allowed; list distinct digits from 0 to 9, e.g. [0, 1, 2, 3, 4]", d.Digits), "dataset", "digits")
				break
			}
			seen[digit] = true
			s.Dataset.Digits = append(s.Dataset.Digits, int32(digit))
		}
		if d.Digits != nil && len(d.Digits) == 0 {
			bad("empty; list the digits to train on, or leave the field out for all ten", "dataset", "digits")
		}
		if d.Path != nil {
			p := *d.Path
			switch {
			case p == "":
				bad("empty; leave the field out to use the MNIST copy shipped with the build, or give a directory holding the IDX files", "dataset", "path")
			case !filepath.IsAbs(p):
				bad(fmt.Sprintf("%q must be an absolute path (workers resolve it on their own machines)", p), "dataset", "path")
			default:
				// Only a directory the policy allows is looked at.
				if err := opt.Policy.checkDatasetDir(p); err != nil {
					bad(err.Error(), "dataset", "path")
				} else if opt.CheckPaths {
					if st, err := os.Stat(p); err != nil {
						bad(fmt.Sprintf("%q does not exist; give a directory that holds the IDX files (train-images-idx3-ubyte[.gz] etc.), or leave the field out for the shipped MNIST", p), "dataset", "path")
					} else if !st.IsDir() {
						bad(fmt.Sprintf("%q is not a directory; give the directory that holds the IDX files", p), "dataset", "path")
					}
				}
			}
			s.Dataset.Path = p
		}
	}

	s.MaxRestarts = DefaultMaxRestarts
	if w := f.Workers; w != nil {
		inRange := func(n int, path ...string) {
			if n < 1 || n > MaxWorkers {
				bad(fmt.Sprintf("%d is out of range; a job needs between 1 and %d workers", n, MaxWorkers), path...)
			}
		}
		switch {
		case w.N != nil:
			inRange(*w.N, "workers")
			s.Workers = int32(*w.N)
		case w.Min == nil || w.Max == nil:
			bad("an elastic job needs both min and max, e.g. workers: {min: 2, max: 4}; or give one number", "workers")
		default:
			inRange(*w.Min, "workers", "min")
			inRange(*w.Max, "workers", "max")
			if *w.Min > *w.Max {
				bad(fmt.Sprintf("min %d is above max %d; min is the fewest workers the job trains on, max the most", *w.Min, *w.Max), "workers")
			}
			// The global batch is batch_size x max, whatever the ring's size.
			s.Workers, s.MinWorkers = int32(*w.Max), int32(*w.Min)
		}
	}
	if f.MaxRestarts != nil {
		if *f.MaxRestarts < 0 || *f.MaxRestarts > 1000 {
			bad(fmt.Sprintf("%d is out of range; give how many failures the job may absorb, 0 to 1000", *f.MaxRestarts), "max_restarts")
		}
		s.MaxRestarts = int32(*f.MaxRestarts)
	}
	if f.BatchSize != nil {
		if *f.BatchSize < 1 || *f.BatchSize > 65536 {
			bad(fmt.Sprintf("%d is out of range; the per-worker batch size must be between 1 and 65536", *f.BatchSize), "batch_size")
		}
		s.BatchSize = int32(*f.BatchSize)
	}

	if o := f.Optimizer; o != nil {
		if o.Name != nil {
			if !contains(knownOptimizers, *o.Name) {
				bad(fmt.Sprintf("unknown optimizer %q; allowed: %s", *o.Name, strings.Join(knownOptimizers, ", ")), "optimizer", "name")
			}
			s.Optimizer.Name = *o.Name
		}
		if o.LR != nil {
			if !(*o.LR > 0) || *o.LR > 10 {
				bad(fmt.Sprintf("%g is not allowed; the learning rate must be greater than 0 and at most 10 (typical: 0.001 to 0.1)", *o.LR), "optimizer", "lr")
			}
			s.Optimizer.Lr = float32(*o.LR)
		}
		if o.Momentum != nil {
			if !(*o.Momentum >= 0 && *o.Momentum < 1) {
				bad(fmt.Sprintf("%g is not allowed; momentum must be in [0, 1)", *o.Momentum), "optimizer", "momentum")
			}
			s.Optimizer.Momentum = float32(*o.Momentum)
		}
		if o.WeightDecay != nil {
			if !(*o.WeightDecay >= 0 && *o.WeightDecay < 1) {
				bad(fmt.Sprintf("%g is not allowed; weight_decay must be in [0, 1)", *o.WeightDecay), "optimizer", "weight_decay")
			}
			s.Optimizer.WeightDecay = float32(*o.WeightDecay)
		}
		if o.Schedule != nil {
			if !contains(knownSchedules, *o.Schedule) {
				bad(fmt.Sprintf("unknown schedule %q; allowed: %s", *o.Schedule, strings.Join(knownSchedules, ", ")), "optimizer", "schedule")
			}
			s.Optimizer.Schedule = *o.Schedule
		}
		if o.WarmupSteps != nil {
			if *o.WarmupSteps < 0 {
				bad(fmt.Sprintf("%d is not allowed; warmup_steps must be 0 or more", *o.WarmupSteps), "optimizer", "warmup_steps")
			}
			s.Optimizer.WarmupSteps = *o.WarmupSteps
		}
		if o.MinLRRatio != nil {
			if !(*o.MinLRRatio >= 0 && *o.MinLRRatio <= 1) {
				bad(fmt.Sprintf("%g is not allowed; min_lr_ratio must be in [0, 1]", *o.MinLRRatio), "optimizer", "min_lr_ratio")
			}
			s.Optimizer.MinLrRatio = float32(*o.MinLRRatio)
		}
		if o.Nesterov != nil {
			s.Optimizer.Nesterov = *o.Nesterov
			if *o.Nesterov && s.Optimizer.Momentum == 0 {
				bad("nesterov needs a momentum greater than 0", "optimizer", "nesterov")
			}
		}
	}

	optimizerExtras(f.Optimizer, s.Optimizer, bad)

	if f.GradAccum != nil {
		if *f.GradAccum < 1 || *f.GradAccum > int(s.BatchSize) {
			bad(fmt.Sprintf("%d is out of range; grad_accum splits each worker's batch into micro-batches, so it must be between 1 and batch_size (%d)", *f.GradAccum, s.BatchSize), "grad_accum")
		}
		s.GradAccum = int32(*f.GradAccum)
	}
	if f.InitFrom != nil {
		switch v := *f.InitFrom; {
		case v == "":
			bad("empty; give a job id or a checkpoint URL, or leave the field out to start from random weights", "init_from")
		case f.Resume != nil && *f.Resume != "":
			bad("set either resume (continue a job's training) or init_from (start new training from its weights), not both", "init_from")
		case strings.Contains(v, "://"):
			if err := checkStoreURL(v); err != nil {
				bad(err.Error(), "init_from")
			} else if err := opt.Policy.CheckStore(v); err != nil {
				bad(err.Error(), "init_from")
			}
		}
		s.InitFrom = *f.InitFrom
	}
	for _, g := range f.InitExclude {
		if _, err := path.Match(g, ""); err != nil || g == "" {
			bad(fmt.Sprintf("%q is not a glob over tensor names; write it like fc2.* or transformer.wte.weight", g), "init_exclude")
		}
	}
	if len(f.InitExclude) > 0 && s.InitFrom == "" {
		bad("init_exclude needs init_from: it names tensors of the checkpoint not to load", "init_exclude")
	}
	s.InitExclude = f.InitExclude
	s.Collective = &pb.Collective{BucketBytes: DefaultBucketBytes, Wire: "f32"}
	if c := f.Collective; c != nil {
		if c.BucketBytes != nil {
			if *c.BucketBytes < 0 || *c.BucketBytes > 1<<30 {
				bad(fmt.Sprintf("%d is out of range; use 0 (one all-reduce after the backward pass) up to 1073741824", *c.BucketBytes), "collective", "bucket_bytes")
			}
			s.Collective.BucketBytes = *c.BucketBytes
		}
		if c.Wire != nil {
			if !contains(knownWires, *c.Wire) {
				bad(fmt.Sprintf("unknown wire encoding %q; allowed: %s", *c.Wire, strings.Join(knownWires, ", ")), "collective", "wire")
			}
			s.Collective.Wire = *c.Wire
		}
	}

	if f.Epochs != nil {
		if *f.Epochs < 1 || *f.Epochs > 100000 {
			bad(fmt.Sprintf("%d is out of range; epochs must be between 1 and 100000 (or set steps)", *f.Epochs), "epochs")
		}
		s.Epochs = int32(*f.Epochs)
	}
	if f.Steps != nil {
		if *f.Steps < 1 {
			bad(fmt.Sprintf("%d is not allowed; steps must be at least 1 (leave it out to train for the given epochs)", *f.Steps), "steps")
		}
		if f.Epochs != nil {
			bad("set either steps or epochs, not both", "steps")
		}
		s.Steps = *f.Steps
	}
	if f.Seed != nil {
		s.Seed = *f.Seed
	}

	if c := f.Checkpoint; c != nil {
		if c.EverySteps != nil {
			if *c.EverySteps < 0 {
				bad(fmt.Sprintf("%d is not allowed; every_steps must be 0 (only at the end) or more", *c.EverySteps), "checkpoint", "every_steps")
			}
			s.Checkpoint.EverySteps = *c.EverySteps
		}
		if c.Keep != nil {
			if *c.Keep < 1 {
				bad(fmt.Sprintf("%d is not allowed; keep at least 1 checkpoint", *c.Keep), "checkpoint", "keep")
			}
			s.Checkpoint.Keep = int32(*c.Keep)
		}
		if c.Store != nil {
			if err := checkStoreURL(*c.Store); err != nil {
				bad(err.Error(), "checkpoint", "store")
			} else if err := opt.Policy.CheckStore(*c.Store); err != nil {
				bad(err.Error(), "checkpoint", "store")
			}
			s.Checkpoint.Store = *c.Store
		}
		if c.KeepEvery != nil {
			if *c.KeepEvery < 0 {
				bad(fmt.Sprintf("%d is not allowed; keep_every must be 0 (none) or a step interval", *c.KeepEvery), "checkpoint", "keep_every")
			}
			s.Checkpoint.KeepEvery = *c.KeepEvery
		}
		if c.Async != nil {
			s.Checkpoint.Synchronous = !*c.Async
		}
		if c.IfBusy != nil {
			if !contains(knownIfBusy, *c.IfBusy) {
				bad(fmt.Sprintf("%q is not allowed; a save while the previous one uploads can %s", *c.IfBusy, strings.Join(knownIfBusy, " or ")), "checkpoint", "if_busy")
			}
			s.Checkpoint.IfBusy = *c.IfBusy
		}
		if c.Checksum != nil {
			if !contains(knownChecksums, *c.Checksum) {
				bad(fmt.Sprintf("unknown checksum %q; allowed: %s", *c.Checksum, strings.Join(knownChecksums, ", ")), "checkpoint", "checksum")
			}
			s.Checkpoint.Checksum = *c.Checksum
		}
	}
	if s.Checkpoint.Store == "" {
		bad("no store given and the coordinator has no default; set a URL such as file:///var/lib/ringmaster/checkpoints", "checkpoint", "store")
	}

	if f.Resume != nil {
		s.Resume = *f.Resume
		if strings.Contains(s.Resume, "://") {
			if err := checkStoreURL(s.Resume); err != nil {
				bad(err.Error(), "resume")
			} else if err := opt.Policy.CheckStore(s.Resume); err != nil {
				bad(err.Error(), "resume")
			}
		}
	}
	if f.CollectiveTimeout != nil {
		d, err := time.ParseDuration(*f.CollectiveTimeout)
		switch {
		case err != nil:
			bad(fmt.Sprintf("%q is not a duration; write it like 30s or 2m", *f.CollectiveTimeout), "collective_timeout")
		case d < 100*time.Millisecond || d > time.Hour:
			bad(fmt.Sprintf("%s is out of range; use between 100ms and 1h", d), "collective_timeout")
		default:
			s.CollectiveTimeoutMs = d.Milliseconds()
		}
	}
	if f.LogEvery != nil {
		if *f.LogEvery < 1 {
			bad(fmt.Sprintf("%d is not allowed; log_every must be at least 1", *f.LogEvery), "log_every")
		}
		s.LogEvery = int32(*f.LogEvery)
	}
	return s, errs
}

func checkStoreURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" {
		return fmt.Errorf("%q is not a store URL; write it like file:///var/lib/ringmaster/checkpoints", raw)
	}
	if !contains(knownStores, u.Scheme) {
		return fmt.Errorf("store scheme %q is not supported; allowed: %s (e.g. file:///var/lib/ringmaster/checkpoints)", u.Scheme, strings.Join(knownStores, ", "))
	}
	if err := noCredentials(u); err != nil {
		return err
	}
	if err := checkpoint.CheckURL(raw); err != nil {
		msg := strings.TrimPrefix(err.Error(), "checkpoint: ")
		if u.Scheme == "s3" {
			msg += " (e.g. s3://bucket/prefix?endpoint=minio:9000&path_style=true)"
		}
		return errors.New(msg)
	}
	return nil
}

// noCredentials refuses a URL from a spec that names where credentials
// are read (credentials_file, profile): whoever submits a job must not
// make the workers read a file of their choosing, or a credential the
// operator did not give the job. Workers take S3 credentials from their
// own environment (the chart's objectStore.credentialsSecret).
func noCredentials(u *url.URL) error {
	for _, p := range []string{"credentials_file", "profile"} {
		if u.Query().Has(p) {
			return fmt.Errorf("%s= is not allowed in a job spec: workers take S3 credentials from their own environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, or the Secret the operator gives them); remove %s=", p, p)
		}
	}
	return nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 48 {
		return false
	}
	for i, r := range s {
		alnum := r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9'
		if !alnum && (i == 0 || (r != '-' && r != '_')) {
			return false
		}
	}
	return true
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// datasetFor is the dataset a model trains on.
func datasetFor(m string) string {
	if m == "cnn" {
		return "mnist"
	}
	return "tokens"
}

// modelConfig fills the model's default architecture, overrides the fields
// the spec sets, and validates the result with the model package's own
// rules, reporting its errors against model_config fields.
func modelConfig(name string, y *modelY, bad func(string, ...string)) *pb.ModelConfig {
	cfg, err := model.DefaultConfig(name)
	if err != nil {
		bad(err.Error(), "model")
		return nil
	}
	if y != nil {
		set := func(dst *int, v *int) {
			if v != nil {
				*dst = *v
			}
		}
		if name == "cnn" {
			// The CNN's architecture is fixed; any field is an error, which
			// Validate names.
			cfg = model.Config{Name: name}
		}
		set(&cfg.Vocab, y.Vocab)
		set(&cfg.Ctx, y.Ctx)
		set(&cfg.Layers, y.Layers)
		set(&cfg.Dim, y.Dim)
		set(&cfg.Heads, y.Heads)
		set(&cfg.Hidden, y.Hidden)
		set(&cfg.BPTT, y.BPTT)
		if y.TieEmbeddings != nil {
			cfg.TieEmbeddings = *y.TieEmbeddings
		}
		if cfg.Vocab > 1<<16 {
			bad(fmt.Sprintf("%d is more than token shards can hold (uint16 ids: at most 65536)", cfg.Vocab), "model_config", "vocab")
			return nil
		}
	}
	if err := cfg.Validate(); err != nil {
		// "model: gpt: heads: 3 does not divide dim 128" -> field heads.
		msg := strings.TrimPrefix(err.Error(), "model: "+name+": ")
		field, problem, ok := strings.Cut(msg, ": ")
		if !ok {
			bad(msg, "model_config")
		} else {
			bad(problem, "model_config", field)
		}
		return nil
	}
	return &pb.ModelConfig{Vocab: int32(cfg.Vocab), Ctx: int32(cfg.Ctx), Layers: int32(cfg.Layers), Dim: int32(cfg.Dim),
		Heads: int32(cfg.Heads), Hidden: int32(cfg.Hidden), Bptt: int32(cfg.BPTT), TieEmbeddings: cfg.TieEmbeddings}
}

// ModelConfig is the model configuration a parsed spec trains.
func ModelConfig(s *pb.JobSpec) model.Config {
	c := s.GetModelConfig()
	return model.Config{Name: s.GetModel(), Vocab: int(c.GetVocab()), Ctx: int(c.GetCtx()), Layers: int(c.GetLayers()), Dim: int(c.GetDim()),
		Heads: int(c.GetHeads()), Hidden: int(c.GetHidden()), BPTT: int(c.GetBptt()), TieEmbeddings: c.GetTieEmbeddings()}
}

// tokenDataset checks the token shard locations of a language model's
// dataset.
func tokenDataset(d *datasetY, out *pb.Dataset, opt Options, bad func(string, ...string)) {
	if d == nil || d.Path == nil || *d.Path == "" {
		bad("required for the tokens dataset; give the training shards as an absolute glob (/data/go_train_*.bin) or a URL (s3://bucket/prefix/go_train_*.bin?endpoint=...), e.g. as written by `coordinator prepare`", "dataset", "path")
		return
	}
	if len(d.Digits) > 0 {
		bad("only the mnist dataset has digits", "dataset", "digits")
	}
	check := func(loc string, field string) {
		if strings.Contains(loc, "://") {
			u, err := url.Parse(loc)
			if err != nil || (u.Scheme != "file" && u.Scheme != "s3") {
				bad(fmt.Sprintf("%q is not allowed; use a file:// or s3:// URL, or an absolute path", loc), "dataset", field)
				return
			}
			if err := noCredentials(u); err != nil {
				bad(err.Error(), "dataset", field)
			} else if err := opt.Policy.checkDataset(loc); err != nil {
				bad(err.Error(), "dataset", field)
			}
			return
		}
		if !filepath.IsAbs(loc) {
			bad(fmt.Sprintf("%q must be an absolute path (workers resolve it on their own machines)", loc), "dataset", field)
			return
		}
		// Only a location the policy allows is globbed: the coordinator's
		// file system is not for submitters to explore.
		if err := opt.Policy.checkDataset(loc); err != nil {
			bad(err.Error(), "dataset", field)
			return
		}
		if opt.CheckPaths {
			if m, err := filepath.Glob(loc); err != nil || len(m) == 0 {
				bad(fmt.Sprintf("%q matches no shard on this machine; run `coordinator prepare --out DIR` and give DIR/NAME_train_*.bin", loc), "dataset", field)
			}
		}
	}
	out.Path = *d.Path
	check(out.Path, "path")
	if d.ValPath != nil {
		out.ValPath = *d.ValPath
		if out.ValPath == "" {
			bad("empty; give the validation shards, or leave the field out", "dataset", "val_path")
		} else {
			check(out.ValPath, "val_path")
		}
	}
}

// optimizerExtras applies the settings that depend on the optimizer:
// AdamW's betas and epsilon (and its default weight decay), SGD's
// momentum, and gradient clipping for both.
func optimizerExtras(o *optimizerY, out *pb.Optimizer, bad func(string, ...string)) {
	if o == nil {
		o = &optimizerY{}
	}
	if out.Name == "adamw" {
		if o.Momentum != nil {
			bad("momentum is an SGD setting; adamw uses beta1 and beta2", "optimizer", "momentum")
		}
		if o.Nesterov != nil {
			bad("nesterov is an SGD setting; leave it out for adamw", "optimizer", "nesterov")
		}
		out.Momentum = 0
		if o.WeightDecay == nil {
			out.WeightDecay = DefaultAdamWWeightDecay
		}
		out.Beta1, out.Beta2, out.Eps = DefaultBeta1, DefaultBeta2, DefaultEps
		unit := func(v *float64, dst *float32, name string) {
			if v == nil {
				return
			}
			if !(*v >= 0 && *v < 1) {
				bad(fmt.Sprintf("%g is not allowed; %s must be in [0, 1)", *v, name), "optimizer", name)
			}
			*dst = float32(*v)
		}
		unit(o.Beta1, &out.Beta1, "beta1")
		unit(o.Beta2, &out.Beta2, "beta2")
		if o.Eps != nil {
			if !(*o.Eps > 0 && *o.Eps < 1) {
				bad(fmt.Sprintf("%g is not allowed; eps must be greater than 0 and less than 1 (typical: 1e-8)", *o.Eps), "optimizer", "eps")
			}
			out.Eps = float32(*o.Eps)
		}
	} else {
		for name, v := range map[string]*float64{"beta1": o.Beta1, "beta2": o.Beta2, "eps": o.Eps} {
			if v != nil {
				bad(fmt.Sprintf("%s is an adamw setting; set optimizer.name: adamw, or leave it out", name), "optimizer", name)
			}
		}
	}
	if o.GradClip != nil {
		if !(*o.GradClip >= 0) || math.IsInf(*o.GradClip, 0) {
			bad(fmt.Sprintf("%g is not allowed; grad_clip is a maximum gradient norm, 0 (off) or more (typical: 1.0)", *o.GradClip), "optimizer", "grad_clip")
		}
		out.GradClip = float32(*o.GradClip)
	}
}
