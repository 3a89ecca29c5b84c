// Package tokens reads and writes token shards in llm.c's format, turns
// text into them, and serves them to the trainer from local disk or from
// object storage.
//
// A shard is a header of 256 little-endian int32 (magic 20240520, version 1,
// token count, the rest zero) followed by the tokens as little-endian
// uint16. Shards are memory-mapped, so a dataset of any size costs no heap
// and a training sample is a slice of the mapping.
//
// The tokenizer is byte-level: token = byte, vocabulary 256. Documents are
// separated by token 0 (NUL does not occur in text), which plays the role of
// GPT-2's end-of-text token.
//
// A Dataset cuts each shard into samples of T+1 tokens (inputs and their
// next-token targets) that start every T tokens, so consecutive samples
// share one token and every token but a shard's last few is a target
// exactly once per epoch. Samples never cross shards: each shard is a
// block that can be fetched on its own. Sample order and the split over
// ranks come from pkg/shard; its block sampler (shard.NewBlockSampler with
// BlockSizes) keeps each shard's samples together in an epoch's order, so a
// reader walks one shard at a time.
//
// # Sources
//
// The trainer reads through Source, which OpenSource returns for a
// location:
//
//   - a local glob or a file:// URL: a Dataset, every shard mapped in
//     place; Prefetch does nothing and Batch never waits.
//   - s3://bucket/prefix/NAME_train_*.bin?endpoint=...: a remote source.
//     Opening lists the objects (nothing is downloaded: a shard's token
//     count is (object size - 1024)/2, so Len and BlockSizes are known at
//     once). Shards are then staged, as the read order nears them, into a
//     directory of the source's own under CacheDir, and mapped.
//
// The one thing to know about a remote source is its window. Prefetch gets
// the rest of the epoch's order each step; it finds the first 1+ReadAhead
// shards that order reads (the one being read and ReadAhead after it:
// galloping over each shard's run of samples, so the cost does not grow
// with the epoch), starts their downloads in that order (two shards at a
// time, each in ranged reads of 8 MiB, four at a time, through
// pkg/checkpoint's Store with its retries and per-request deadlines), and
// drops every staged shard that is neither in the window nor read by the
// last Batch (nor being read by one now). Disk use is therefore about
// ReadAhead+2 shards. Batch pins the shards it reads; one not staged yet is
// fetched at once and waited for, bounded by the caller's context. Stats
// counts those waits: once the window is warm and the network is faster
// than the trainer, no Batch waits.
//
// Every fetch runs in a goroutine the source owns, under a context that
// Close cancels and with a deadline (FetchTimeout); Close waits for them,
// unmaps the shards and removes the staging directory. A fetch that fails
// is reported by the Batch that needs the shard (the next Batch tries
// again). A staged shard's header is checked (magic, version, token count
// against the size) before it is used, and errors name the object.
//
// Limits: every rank downloads every shard it reads samples from, and with
// the block sampler that is every shard (ranks take disjoint samples of
// each global batch, so each reads part of every shard). Prefetch sees one
// epoch: the first step of the next epoch waits for its shard unless the
// trainer passes the next epoch's order too.
package tokens
