// Package export turns a training checkpoint into a file that other
// frameworks load: today safetensors, for PyTorch.
//
// The one thing to know: the model's tensor names, shapes and layouts are
// already PyTorch's (see pkg/model: each model's Tensors() is the
// state_dict of an equivalent torch module), so an export renames nothing
// but the checkpoint's "model." prefix and converts nothing. FromCheckpoint
// takes the checkpoint's model tensors, drops the optimizer state, checks
// the tensors against the table of the model that the checkpoint's
// metadata describes (so that the file loads with load_state_dict(strict=True)
// into the equivalent module), and adds what the module expects but the
// checkpoint stores once: with tied embeddings (model.Config.TieEmbeddings)
// the GPT's lm_head.weight is transformer.wte.weight, written under both
// names.
//
// The file's __metadata__ (string to string, as the format requires) holds
// "format": "pt" (the key Hugging Face tools look for), the job id, the
// step, the model name and the model's configuration as JSON with defaults
// filled in ("model_config"), from which scripts/load_safetensors.py builds
// the torch module. Checkpoints written before the trainer recorded
// Meta["model_config"] fall back to {"name": Meta["model"]}; a CNN needs no
// more, and for a language model the export then says it could not check
// the tensors against a configuration (Weights.Verified is false).
//
// LoadCheckpoint opens a checkpoint by URL, with pkg/checkpoint's
// conventions: the directory of one checkpoint
// (file:///ckpt/JOB/step-000000000100, s3://bucket/prefix/JOB/step-...)
// or the directory of a job's checkpoints, where it takes the newest valid
// one or a given step. Writing goes through
// github.com/nlpodyssey/safetensors (SerializeToWriter), which lays out the
// header, the 8-byte alignment and the offsets; WriteFile makes the file
// appear whole or not at all (temporary file, fsync, rename).
package export
