package model

import (
	"fmt"
	"strings"
)

// Config selects a model and its architecture. Fields a model does not use
// must be zero; the rest are checked by Validate, whose errors name the
// field. Zero values of optional fields mean the defaults noted.
type Config struct {
	// Name is "cnn", "lstm" or "gpt".
	Name string `json:"name" yaml:"name"`
	// Vocab is the number of token ids (lstm, gpt).
	Vocab int `json:"vocab,omitempty" yaml:"vocab,omitempty"`
	// Ctx is the sequence length trained on: the GPT's context (rows of its
	// position embedding) and the LSTM's unroll length (lstm, gpt).
	Ctx int `json:"ctx,omitempty" yaml:"ctx,omitempty"`
	// Layers is the number of LSTM layers or transformer blocks.
	Layers int `json:"layers,omitempty" yaml:"layers,omitempty"`
	// Dim is the embedding width (lstm) or the model width C (gpt).
	Dim int `json:"dim,omitempty" yaml:"dim,omitempty"`
	// Heads is the number of attention heads; it must divide Dim (gpt).
	Heads int `json:"heads,omitempty" yaml:"heads,omitempty"`
	// Hidden is the LSTM's hidden size (default Dim) or the width of the
	// GPT's MLP (default 4·Dim).
	Hidden int `json:"hidden,omitempty" yaml:"hidden,omitempty"`
	// BPTT is the LSTM's truncation length: gradients flow back through at
	// most BPTT steps, in windows [0, BPTT), [BPTT, 2·BPTT), ... of each
	// sequence, while the state itself carries on (default Ctx: no
	// truncation within a sequence).
	BPTT int `json:"bptt,omitempty" yaml:"bptt,omitempty"`
	// TieEmbeddings makes the GPT's output layer share the token embedding
	// (nanoGPT's weight tying): lm_head.weight is then not a tensor of its
	// own, and an export writes transformer.wte.weight under both names.
	TieEmbeddings bool `json:"tie_embeddings,omitempty" yaml:"tie_embeddings,omitempty"`
}

// Names lists the models New knows.
func Names() []string { return []string{"cnn", "lstm", "gpt"} }

// DefaultConfig returns a small working configuration of the named model:
// the GPT of the benchmarks (4 layers, width 128, 4 heads, context 64,
// byte vocabulary), an LSTM of the same scale, and the CNN.
func DefaultConfig(name string) (Config, error) {
	switch name {
	case "cnn":
		return Config{Name: "cnn"}, nil
	case "lstm":
		return Config{Name: "lstm", Vocab: 256, Ctx: 64, Layers: 2, Dim: 128, Hidden: 256}, nil
	case "gpt":
		return Config{Name: "gpt", Vocab: 256, Ctx: 64, Layers: 4, Dim: 128, Heads: 4}, nil
	}
	return Config{}, unknownModel(name)
}

func unknownModel(name string) error {
	return fmt.Errorf("model: unknown model %q (known: %s)", name, strings.Join(Names(), ", "))
}

// maxParams bounds a model's parameter count, so that sizes stay far from
// int overflow and a typo does not ask for terabytes.
const maxParams = 1 << 31

// Validate reports the first field that is missing, out of range, or set
// for a model that does not use it.
func (c Config) Validate() error {
	_, err := c.withDefaults()
	return err
}

// withDefaults validates c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	field := func(name, format string, args ...any) error {
		return fmt.Errorf("model: %s: %s: "+format, append([]any{c.Name, name}, args...)...)
	}
	type intField struct {
		name string
		v    int
	}
	unused := func(fields ...intField) error {
		for _, f := range fields {
			if f.v != 0 {
				return field(f.name, "%d is set, but %s does not use it", f.v, c.Name)
			}
		}
		return nil
	}
	positive := func(fields ...intField) error {
		for _, f := range fields {
			if f.v <= 0 {
				return field(f.name, "must be positive, got %d", f.v)
			}
		}
		return nil
	}
	switch c.Name {
	case "cnn":
		if err := unused(intField{"vocab", c.Vocab}, intField{"ctx", c.Ctx}, intField{"layers", c.Layers}, intField{"dim", c.Dim},
			intField{"heads", c.Heads}, intField{"hidden", c.Hidden}, intField{"bptt", c.BPTT}); err != nil {
			return c, err
		}
		if c.TieEmbeddings {
			return c, field("tie_embeddings", "is set, but cnn has no embeddings")
		}
		return c, nil
	case "lstm":
		if err := positive(intField{"vocab", c.Vocab}, intField{"ctx", c.Ctx}, intField{"layers", c.Layers}, intField{"dim", c.Dim}); err != nil {
			return c, err
		}
		if err := unused(intField{"heads", c.Heads}); err != nil {
			return c, err
		}
		if c.TieEmbeddings {
			return c, field("tie_embeddings", "is not supported by lstm")
		}
		if c.Hidden < 0 {
			return c, field("hidden", "must not be negative, got %d", c.Hidden)
		}
		if c.Hidden == 0 {
			c.Hidden = c.Dim
		}
		if c.BPTT < 0 || c.BPTT > c.Ctx {
			return c, field("bptt", "must be in [0, ctx=%d], got %d", c.Ctx, c.BPTT)
		}
		if c.BPTT == 0 {
			c.BPTT = c.Ctx
		}
	case "gpt":
		if err := positive(intField{"vocab", c.Vocab}, intField{"ctx", c.Ctx}, intField{"layers", c.Layers}, intField{"dim", c.Dim}, intField{"heads", c.Heads}); err != nil {
			return c, err
		}
		if err := unused(intField{"bptt", c.BPTT}); err != nil {
			return c, err
		}
		if c.Dim%c.Heads != 0 {
			return c, field("heads", "%d does not divide dim %d", c.Heads, c.Dim)
		}
		if c.Hidden < 0 {
			return c, field("hidden", "must not be negative, got %d", c.Hidden)
		}
		if c.Hidden == 0 {
			c.Hidden = 4 * c.Dim
		}
	case "":
		return c, fmt.Errorf("model: name: missing (known: %s)", strings.Join(Names(), ", "))
	default:
		return c, unknownModel(c.Name)
	}
	if n := c.paramCount(); n > maxParams {
		return c, fmt.Errorf("model: %s: %.0f parameters, more than the %d supported", c.Name, n, maxParams)
	}
	return c, nil
}

// paramCount is the number of parameters of a language model's config with
// defaults filled, in float64 so that it cannot overflow.
func (c Config) paramCount() float64 {
	V, T, L, C, H := float64(c.Vocab), float64(c.Ctx), float64(c.Layers), float64(c.Dim), float64(c.Hidden)
	switch c.Name {
	case "lstm":
		return V*C + 4*H*(C+H+2) + (L-1)*4*H*(2*H+2) + V*H + V
	case "gpt":
		n := V*C + T*C + L*(4*C+3*C*C+3*C+C*C+C+2*C*H+H+C) + 2*C
		if !c.TieEmbeddings {
			n += V * C
		}
		return n
	}
	return 0
}

// New returns the model cfg describes, on backend be, with parameters
// initialised from seed (see each model's constructor for the recipe).
func New(cfg Config, be Backend, seed uint64) (Model, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if be == nil {
		return nil, fmt.Errorf("model: %s: nil backend", cfg.Name)
	}
	switch cfg.Name {
	case "cnn":
		return NewCNN(be, seed), nil
	case "lstm":
		return newLSTM(cfg, be, seed), nil
	case "gpt":
		return newGPT(cfg, be, seed), nil
	}
	return nil, unknownModel(cfg.Name)
}
