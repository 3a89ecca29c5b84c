// Package tokens reads and writes token shards in llm.c's format and turns
// text into them.
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
// A Dataset cuts the concatenation of its shards into samples of T+1
// tokens (inputs and their next-token targets) that start every T tokens,
// so consecutive samples share one token and every token is a target
// exactly once per epoch. Sample order and the split over ranks come from
// pkg/shard.
package tokens
