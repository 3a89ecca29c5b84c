package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unsafe"
)

// FormatVersion is written into every manifest; Load refuses others.
const FormatVersion = 2

const (
	stepPrefix   = "step-"
	manifestName = "manifest.json"
	latestName   = "latest"
	// maxManifest bounds what Load reads as a manifest.
	maxManifest = 64 << 20
)

// Checksum algorithms a manifest may use for its objects.
const (
	ChecksumCRC32C = "crc32c"
	ChecksumSHA256 = "sha256"
)

// Tensor is one named tensor of the state: float32, row-major, with its
// global shape.
type Tensor struct {
	Name  string
	Shape []int
	Data  []float32
	// Local marks state that belongs to one rank (Rank) of the ring that
	// saved it, rather than global state that every rank shares. Local
	// state cannot be resharded: loading it into a ring of another size is
	// refused (State.CheckWorld).
	Local bool
	Rank  int
}

// RNGState is the state of one random generator, opaque to this package.
type RNGState struct {
	Name  string
	State []byte
	Local bool // one rank's generator (see Tensor.Local)
	Rank  int
}

// State is everything needed to continue training exactly.
type State struct {
	Step          int64 // committed steps so far
	Epoch         int
	EpochSamples  int64 // samples of Epoch already consumed: the data position
	GlobalSamples int64
	World         int // ring size that wrote it
	Seed          uint64
	RNG           []RNGState
	// Spec is the job spec that trained it, as JSON.
	Spec    json.RawMessage
	Tensors []Tensor
	// Meta carries free-form facts: the job id, the model name.
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

// Bytes is the size of the tensor data.
func (s *State) Bytes() int64 {
	var n int64
	for _, t := range s.Tensors {
		n += 4 * int64(len(t.Data))
	}
	return n
}

// CheckWorld returns an error naming every piece of rank-local state if
// the state is to continue in a ring of another size than the one that
// saved it: such state would have to be resharded, and this package never
// does that silently.
func (s *State) CheckWorld(world int) error {
	if world == s.World {
		return nil
	}
	var local []string
	for _, t := range s.Tensors {
		if t.Local {
			local = append(local, fmt.Sprintf("tensor %s (rank %d)", t.Name, t.Rank))
		}
	}
	for _, r := range s.RNG {
		if r.Local {
			local = append(local, fmt.Sprintf("RNG %s (rank %d)", r.Name, r.Rank))
		}
	}
	if len(local) == 0 {
		return nil
	}
	return fmt.Errorf("%w: the checkpoint at step %d was saved by %d workers and holds rank-local state that cannot be resharded to %d workers: %s; resume with %d workers",
		ErrNotReshardable, s.Step, s.World, world, strings.Join(local, ", "), s.World)
}

// ErrNotReshardable is returned by State.CheckWorld.
var ErrNotReshardable = errors.New("checkpoint: state cannot be resharded")

// validate checks the state before it is written.
func (s *State) validate() error {
	if s.Step < 0 {
		return fmt.Errorf("checkpoint: negative step %d", s.Step)
	}
	seen := make(map[string]bool, len(s.Tensors))
	for _, t := range s.Tensors {
		if t.Name == "" || seen[t.Name] {
			return fmt.Errorf("checkpoint: tensor name %q is empty or used twice", t.Name)
		}
		seen[t.Name] = true
		n := int64(1)
		for _, d := range t.Shape {
			if d < 0 {
				return fmt.Errorf("checkpoint: tensor %s has a negative dimension in %v", t.Name, t.Shape)
			}
			n *= int64(d)
		}
		if n != int64(len(t.Data)) {
			return fmt.Errorf("checkpoint: tensor %s has shape %v but %d elements", t.Name, t.Shape, len(t.Data))
		}
	}
	if len(s.Spec) > 0 && !json.Valid(s.Spec) {
		return errors.New("checkpoint: the job spec is not valid JSON")
	}
	return nil
}

// Manifest is the JSON document that commits a checkpoint. Data offsets
// are positions in the concatenation of the objects, in order.
type Manifest struct {
	Format        int               `json:"format"`
	Step          int64             `json:"step"`
	Epoch         int               `json:"epoch"`
	EpochSamples  int64             `json:"epoch_samples"`
	GlobalSamples int64             `json:"global_samples"`
	World         int               `json:"world"`
	Seed          uint64            `json:"seed"`
	Created       time.Time         `json:"created"`
	SaveID        string            `json:"save_id"`
	Checksum      string            `json:"checksum"` // crc32c or sha256
	Size          int64             `json:"size"`     // bytes of data in all objects
	Objects       []ObjectEntry     `json:"objects"`
	Tensors       []TensorEntry     `json:"tensors"`
	RNG           []RNGEntry        `json:"rng,omitempty"`
	Spec          json.RawMessage   `json:"job_spec,omitempty"`
	Meta          map[string]string `json:"meta,omitempty"`
}

// ObjectEntry lists one data object of a checkpoint.
type ObjectEntry struct {
	Key    string `json:"key"`    // relative to the checkpoint's directory
	Offset int64  `json:"offset"` // of its first byte in the data
	Size   int64  `json:"size"`
	CRC32C string `json:"crc32c,omitempty"` // 8 hex digits
	SHA256 string `json:"sha256,omitempty"` // 64 hex digits
}

// TensorEntry locates one tensor in the data.
type TensorEntry struct {
	Name   string `json:"name"`
	DType  string `json:"dtype"`
	Shape  []int  `json:"shape"`
	Offset int64  `json:"offset"` // bytes, in the data
	Local  bool   `json:"local,omitempty"`
	Rank   int    `json:"rank,omitempty"`
}

// RNGEntry is one generator's state.
type RNGEntry struct {
	Name  string `json:"name"`
	State []byte `json:"state"` // base64 in JSON
	Local bool   `json:"local,omitempty"`
	Rank  int    `json:"rank,omitempty"`
}

// parseManifest decodes and checks a manifest: every object and tensor
// must fit the data, and the checksums must be well formed.
func parseManifest(b []byte) (*Manifest, error) {
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("manifest is corrupt: %w", err)
	}
	if m.Format != FormatVersion {
		return nil, fmt.Errorf("manifest has format %d; this version reads format %d", m.Format, FormatVersion)
	}
	if m.Step < 0 || m.World < 1 || m.Size < 0 {
		return nil, fmt.Errorf("manifest has step %d, world %d, size %d", m.Step, m.World, m.Size)
	}
	if m.Checksum != ChecksumCRC32C && m.Checksum != ChecksumSHA256 {
		return nil, fmt.Errorf("manifest names checksum %q; known: %s, %s", m.Checksum, ChecksumCRC32C, ChecksumSHA256)
	}
	var off int64
	keys := map[string]bool{}
	for _, o := range m.Objects {
		if o.Key == "" || strings.Contains(o.Key, "/") || o.Key == manifestName || keys[o.Key] {
			return nil, fmt.Errorf("manifest lists object %q twice or under a bad name", o.Key)
		}
		keys[o.Key] = true
		if o.Offset != off || o.Size < 0 || o.Size > m.Size-off {
			return nil, fmt.Errorf("object %s at %d of %d bytes does not follow the previous one (at %d) within the data (%d bytes)", o.Key, o.Offset, o.Size, off, m.Size)
		}
		off += o.Size
		switch m.Checksum {
		case ChecksumCRC32C:
			if _, err := parseCRC(o.CRC32C); err != nil {
				return nil, fmt.Errorf("object %s: %w", o.Key, err)
			}
		case ChecksumSHA256:
			if len(o.SHA256) != 64 || strings.Trim(o.SHA256, "0123456789abcdef") != "" {
				return nil, fmt.Errorf("object %s has a malformed sha256 %q", o.Key, o.SHA256)
			}
		}
	}
	if off != m.Size {
		return nil, fmt.Errorf("the objects hold %d bytes, the manifest says %d", off, m.Size)
	}
	names := map[string]bool{}
	for _, t := range m.Tensors {
		if t.Name == "" || names[t.Name] {
			return nil, fmt.Errorf("manifest lists tensor %q twice or without a name", t.Name)
		}
		names[t.Name] = true
		if t.DType != "float32" {
			return nil, fmt.Errorf("tensor %s has dtype %q; this version reads float32", t.Name, t.DType)
		}
		n := int64(1)
		for _, d := range t.Shape {
			if d < 0 || (d > 0 && n > math.MaxInt64/4/int64(d)) {
				return nil, fmt.Errorf("tensor %s has shape %v", t.Name, t.Shape)
			}
			n *= int64(d)
		}
		if t.Offset < 0 || t.Offset%4 != 0 || 4*n > m.Size-t.Offset {
			return nil, fmt.Errorf("tensor %s (shape %v at byte %d) does not fit the data (%d bytes)", t.Name, t.Shape, t.Offset, m.Size)
		}
	}
	return &m, nil
}

func parseCRC(s string) (uint32, error) {
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil || len(s) != 8 {
		return 0, fmt.Errorf("malformed crc32c %q", s)
	}
	return uint32(v), nil
}

func formatCRC(v uint32) string { return fmt.Sprintf("%08x", v) }

// parseStepDir reads "step-000000000100" as 100.
func parseStepDir(name string) (int64, bool) {
	num, ok := strings.CutPrefix(name, stepPrefix)
	if !ok || len(num) == 0 {
		return 0, false
	}
	s, err := strconv.ParseInt(num, 10, 64)
	return s, err == nil && s >= 0
}

func stepDir(step int64) string { return fmt.Sprintf("%s%012d", stepPrefix, step) }

func floatBytes(f []float32) []byte {
	if len(f) == 0 {
		return nil
	}
	return unsafe.Slice((*byte)(unsafe.Pointer(&f[0])), len(f)*4)
}
