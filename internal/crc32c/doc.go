// Package crc32c computes CRC-32C (Castagnoli), the checksum of checkpoint
// objects, faster than hash/crc32 on CPUs with 512-bit carry-less
// multiplication, and combines the checksums of pieces computed apart.
//
// The standard library computes CRC-32C with the SSE4.2 crc32 instruction,
// three streams at once: about 7 to 10 GB/s on one core. A checkpoint save
// checksums every byte it writes, beside the kernel's copy into the page
// cache, so that rate bounds the save. On amd64 with AVX-512 and
// VPCLMULQDQ this package folds the input instead, in the manner of Intel's
// "Fast CRC Computation for Generic Polynomials Using PCLMULQDQ": sixteen
// 128-bit accumulators, in four 512-bit registers, each multiplied forward
// by x^2048 modulo the polynomial and xored with the next 256 bytes. Every
// fold keeps the accumulated value congruent to the input so far, modulo
// the CRC polynomial, so the 16-byte remainder of the final fold, followed
// by the input's tail, has the input's CRC; the standard library computes
// that last short stretch. Constants are derived at start-up from the
// polynomial, not copied from tables.
//
// Elsewhere, and for inputs shorter than a few hundred bytes, Update is
// hash/crc32's.
package crc32c
