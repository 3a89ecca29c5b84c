package worker

import (
	"context"
	"fmt"

	"github.com/ringmaster/ringmaster/pkg/mnist"
	"github.com/ringmaster/ringmaster/pkg/model"
	"github.com/ringmaster/ringmaster/pkg/shard"
	"github.com/ringmaster/ringmaster/pkg/tokens"
)

// Data is a set of samples the trainer draws batches from: MNIST images for
// the CNN, token sequences for the language models.
type Data interface {
	// Len is the number of samples.
	Len() int
	// Sampler returns the per-epoch order of the samples for seed.
	Sampler(seed uint64) *shard.Sampler
	// Prefetch hints which samples come next (Sampler.Upcoming's slice;
	// not kept), so that remote data can be fetched ahead.
	Prefetch(upcoming []int32)
	// Fill gathers samples idx into b, growing b's buffers as needed.
	Fill(ctx context.Context, idx []int32, b *model.Batch) error
	// TermsPerSample is the number of loss terms a sample contributes (1
	// for an image, T for a sequence of T next-token targets).
	TermsPerSample() int
}

// MNISTData serves a set of MNIST images.
func MNISTData(s *mnist.Set) Data { return mnistData{s} }

type mnistData struct{ s *mnist.Set }

func (d mnistData) Len() int                           { return d.s.N }
func (d mnistData) Sampler(seed uint64) *shard.Sampler { return shard.NewSampler(d.s.N, seed) }
func (d mnistData) Prefetch([]int32)                   {}
func (d mnistData) TermsPerSample() int                { return 1 }
func (d mnistData) Fill(_ context.Context, idx []int32, b *model.Batch) error {
	n := len(idx)
	b.N, b.T = n, 0
	b.X = grow(b.X, n*mnist.Pixels)
	b.Targets = grow(b.Targets, n)
	d.s.Gather(idx, b.X, b.Targets)
	return nil
}

// digitFilter keeps the images of the listed digits (all when empty).
func digitFilter(s *mnist.Set, digits []int32) *mnist.Set {
	if len(digits) == 0 {
		return s
	}
	keep := [10]bool{}
	for _, d := range digits {
		keep[d] = true
	}
	return s.Filter(func(l uint8) bool { return int(l) < len(keep) && keep[l] })
}

// TokenData serves sequences of t tokens from src to a model with a
// vocabulary of vocab ids.
func TokenData(src tokens.Source, t, vocab int) Data { return &tokenData{src: src, t: t, vocab: vocab} }

type tokenData struct {
	src      tokens.Source
	t, vocab int
}

func (d *tokenData) Len() int { return d.src.Len() }

// Sampler keeps each shard's samples together in an epoch's order, so
// that a worker reads (or fetches) one shard at a time.
func (d *tokenData) Sampler(seed uint64) *shard.Sampler {
	return shard.NewBlockSampler(d.src.BlockSizes(), seed)
}
func (d *tokenData) Prefetch(upcoming []int32) { d.src.Prefetch(upcoming) }
func (d *tokenData) TermsPerSample() int       { return d.t }

func (d *tokenData) Fill(ctx context.Context, idx []int32, b *model.Batch) error {
	n := len(idx)
	b.N, b.T = n, d.t
	b.Tokens = grow(b.Tokens, n*d.t)
	b.Targets = grow(b.Targets, n*d.t)
	if err := d.src.Batch(ctx, idx, b.Tokens, b.Targets); err != nil {
		return err
	}
	// A shard written with a larger tokenizer would index past the
	// embedding; say so rather than train on garbage.
	for _, s := range [2][]int32{b.Tokens, b.Targets} {
		for _, tok := range s {
			if tok < 0 || int(tok) >= d.vocab {
				return fmt.Errorf("the dataset holds token id %d, outside the model's vocabulary of %d; set model_config.vocab to the tokenizer's vocabulary size", tok, d.vocab)
			}
		}
	}
	return nil
}

func grow[T any](buf []T, n int) []T {
	if cap(buf) < n {
		return make([]T, n)
	}
	return buf[:n]
}
