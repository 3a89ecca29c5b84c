package coordinator

import (
	"fmt"
	"path/filepath"
	"slices"
)

// policyDefaults completes the submission policy: roots made absolute
// (flags may be relative to the working directory, as --data-dir is),
// DataDir/checkpoints and DataDir/datasets as the roots of file stores
// and datasets when none is given (not all of DataDir: it holds etcd's
// data and the CA key),
// and the default store allowed whatever the roots, since jobs that name
// no store use it.
func (c *Config) policyDefaults() error {
	p := &c.Policy
	for i, roots := range []*[]string{&p.FileRoots, &p.DatasetRoots} {
		abs := make([]string, 0, len(*roots))
		for _, d := range *roots {
			if d == "" {
				return fmt.Errorf("an empty directory in the submission policy's roots (--allow-file-root, --allow-dataset-root); give a directory")
			}
			a, err := filepath.Abs(d)
			if err != nil {
				return err
			}
			abs = append(abs, a)
		}
		if len(abs) == 0 {
			abs = []string{filepath.Join(c.DataDir, []string{"checkpoints", "datasets"}[i])}
		}
		*roots = abs
	}
	p.S3Endpoints = slices.Clone(p.S3Endpoints)
	if err := p.Validate(); err != nil {
		return err
	}
	if p.CheckStore(c.DefaultStore) != nil {
		if err := p.AllowStore(c.DefaultStore); err != nil {
			return fmt.Errorf("--default-store %q: %v", c.DefaultStore, err)
		}
	}
	return nil
}
