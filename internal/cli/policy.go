package cli

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/ringmaster/ringmaster/internal/jobspec"
)

// addPolicyFlags adds the flags of the submission policy: where submitted
// specs may put checkpoints and read datasets. local is `run`, which
// allows more besides (localPolicy.widen).
func addPolicyFlags(cmd *cobra.Command, p *jobspec.Policy, local bool) {
	roots, s3 := "default: --data-dir", "default: none"
	if local {
		roots = "also allowed: the working directory, --data-dir and what JOB.yaml names"
		s3 = "also allowed: what JOB.yaml names"
	}
	f := cmd.Flags()
	f.StringArrayVar(&p.FileRoots, strings.TrimPrefix(jobspec.FlagFileRoot, "--"), nil,
		"allow jobs' file:// checkpoint stores (checkpoint.store, resume, init_from) under `DIR`; repeatable ("+roots+"; the default store is always allowed)")
	f.StringArrayVar(&p.S3Endpoints, strings.TrimPrefix(jobspec.FlagS3Endpoint, "--"), nil,
		"allow jobs' s3:// stores and datasets on the S3 service `HOST:PORT[/BUCKET]` (with a bucket: only that bucket); repeatable ("+s3+"; the default store is always allowed)")
	f.StringArrayVar(&p.DatasetRoots, strings.TrimPrefix(jobspec.FlagDatasetRoot, "--"), nil,
		"allow jobs' dataset paths, globs and file:// dataset URLs under `DIR`; repeatable ("+roots+")")
}

// localPolicy is the submission policy of `run`, whose user submits their
// own spec to a coordinator of their own.
type localPolicy struct{ jobspec.Policy }

// widen returns the policy of a `run` of spec: the flags' roots, plus the
// working directory and the data directory, plus every location the spec
// itself names (the user asked to run it). A spec that does not parse is
// left for the coordinator to report.
func (l *localPolicy) widen(dataDir string, spec []byte) (jobspec.Policy, error) {
	p := jobspec.Policy{
		FileRoots:    append([]string(nil), l.FileRoots...),
		S3Endpoints:  append([]string(nil), l.S3Endpoints...),
		DatasetRoots: append([]string(nil), l.DatasetRoots...),
	}
	wd, err := os.Getwd()
	if err != nil {
		return p, err
	}
	p.FileRoots = append(p.FileRoots, wd, dataDir)
	p.DatasetRoots = append(p.DatasetRoots, wd, dataDir)
	s, err := jobspec.Parse(spec, jobspec.Options{DefaultStore: "file://" + filepath.Join(dataDir, "checkpoints")})
	if err != nil {
		return p, nil
	}
	for _, u := range []string{s.Checkpoint.GetStore(), s.Resume, s.InitFrom} {
		if strings.Contains(u, "://") {
			if err := p.AllowStore(u); err != nil {
				return p, err
			}
		}
	}
	for _, loc := range []string{s.Dataset.GetPath(), s.Dataset.GetValPath()} {
		if loc != "" {
			if err := p.AllowDataset(loc); err != nil {
				return p, err
			}
		}
	}
	return p, nil
}
