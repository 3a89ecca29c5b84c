// Package checkpoint saves and restores training state in object storage.
//
// A checkpoint is a set of objects under one prefix per step:
//
//	<prefix>/step-000000000100/state.bin      tensors, little-endian float32, back to back
//	<prefix>/step-000000000100/manifest.json  written last
//	<prefix>/latest                           name of the newest committed step
//
// The manifest lists every object with its size and CRC32C, every tensor
// with its name, shape and offset, and the training position (step, epoch,
// samples consumed, world size, seed). A checkpoint exists if and only if its
// manifest exists and verifies: data is written first and the manifest
// last, so a save that dies half-way leaves no checkpoint, only objects that
// retention removes later. Loading checks sizes and checksums; a corrupt
// checkpoint is reported and the previous valid one is used. The latest
// pointer is a hint for humans and tools; loading trusts only manifests.
//
// Stores are small interfaces (Store) with a file:// implementation; every
// write to a file store is atomic (temporary file, fsync, rename).
package checkpoint
