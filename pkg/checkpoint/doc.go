// Package checkpoint saves and restores training state in object storage:
// atomically, verified, in the background, in bounded memory, and
// resumable with any number of workers.
//
// # Layout
//
// A checkpoint is a directory (a key prefix) per step:
//
//	<prefix>/step-000000000100/data-<save id>-000.bin   tensor data, float32 little-endian
//	<prefix>/step-000000000100/data-<save id>-001.bin   (data over MaxObjectSize is split)
//	<prefix>/step-000000000100/manifest.json            written last: the commit
//	<prefix>/latest                                     "step-000000000100": a hint
//
// The manifest lists every object with its size and checksum (CRC32C or
// SHA-256), every tensor with its name, type, global shape and offset, the
// training position (step, epoch, samples consumed, world size, seed), RNG
// state and the job spec. A checkpoint exists if and only if its manifest
// exists and verifies: data is written first and the manifest last, with a
// create-only write, so a save that dies half-way leaves no checkpoint, and
// a committed checkpoint is never replaced. The latest pointer moves after
// the manifest, forward only (compare-and-swap on its version); loading
// trusts only manifests. Nothing is ever renamed by copy and delete.
//
// Loading checks sizes and checksums while it reads; a corrupt or partial
// checkpoint is reported (log and EventInvalid) and the previous valid one
// is used. Tensors are stored with their global shapes, so a checkpoint
// resumes with any number of workers; state marked rank-local
// (Tensor.Local, RNGState.Local) is refused by State.CheckWorld when the
// ring size changes, never resharded silently. Retention keeps the newest
// K valid checkpoints and every M-th, and once a newer checkpoint has
// committed it removes what saves that never committed left behind (data
// objects, temporary files, S3 multipart uploads).
//
// # Memory and speed
//
// Data objects are written and read in parts (PartSize), Parallelism parts
// at a time: a save reads straight from the tensors' memory (a part that
// straddles two tensors is copied into one of Parallelism part buffers) and
// a load reads straight into the one buffer that backs the returned
// tensors. Memory beyond the state is therefore bounded by part size x
// parallelism, never by the checkpoint size. CRC32C is computed per part
// and the parts' CRCs are combined (crc32c.Combine); internal/crc32c
// checksums at memory speed with 512-bit carry-less multiplies. A file
// store preallocates each object (fallocate: a full disk fails the save at
// its start) and writes each part with one pwrite from a single writer
// (the kernel serializes writes to one file, and concurrent writers
// contend for it) while a goroutine beside it checksums the same part on
// the other core; for S3 goroutines of their own checksum beside the ones
// that send the parts. The buffers a load fills and the async saver's copy
// ask for transparent huge pages, so that filling fresh memory does not
// fault once per 4 KiB page.
//
// AsyncSaver keeps saves off the training loop: Save waits only while the
// state is copied into a host buffer reused from save to save, and Begin
// not even for that: the copy runs in the background, in 1 MiB chunks, and
// Pending.Wait, which the trainer calls before its next optimizer step,
// waits for (and helps with) what is left of it. The upload runs in the
// background, one at a time (a newer save waits or is skipped, by
// BusyPolicy), and a failure is reported without stopping anything.
//
// # Stores
//
// Store is a small interface with a file:// implementation (FileStore:
// temporary file, fsync, rename or hard link) and an s3:// one (S3Store,
// through minio-go, for AWS S3, MinIO, Ceph RGW, versitygw...). S3 objects
// larger than a part go up as multipart uploads with the parts written
// concurrently and stream down with ranged GETs; requests that fail in a
// way worth retrying (503 SlowDown, timeouts, refused or reset
// connections) are retried with jittered exponential backoff, each try
// under a deadline; other errors fail at once with the service's message.
// Conditional writes use If-None-Match and If-Match. See ParseS3URL for
// endpoints, regions, path-style addressing, TLS (on by default) and
// credentials.
package checkpoint
