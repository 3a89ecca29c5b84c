package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/export"
)

func newExportCommand(client clientFunc) *cobra.Command {
	var format, outPath string
	var step int64
	var timeout time.Duration
	var lf logFlags
	cmd := &cobra.Command{
		Use:   "export JOB|CHECKPOINT_URL --format safetensors [--step N] [-o FILE]",
		Short: "Write a job's trained weights as a safetensors file that loads into the equivalent PyTorch module",
		Long: `Write the model weights of a job's checkpoint as a safetensors file: the
newest valid checkpoint, or the one of --step (see 'coordinator checkpoints
JOB'). Instead of a job id, give a checkpoint URL as that command prints it
(file:///ckpt/JOB/step-000000000100, s3://bucket/prefix/JOB/step-...?endpoint=...),
or the directory of a job's checkpoints; then no coordinator is needed.
The checkpoint is read from its store by this command (S3 credentials from
the environment, as for the workers) and verified while it is read.

Tensors keep the model's PyTorch names and shapes (conv1.weight ...;
transformer.h.0.attn.c_attn.weight ...), float32; the optimizer state is
left out. A GPT with tied embeddings gets lm_head.weight as a copy of
transformer.wte.weight, so that load_state_dict(strict=True) accepts the
file. The file's __metadata__ holds the job, the step, the model and its
configuration as JSON (model_config); scripts/load_safetensors.py builds the
torch module from it and loads the file.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := export.CheckFormat(format); err != nil {
				return err
			}
			if cmd.Flags().Changed("step") && step < 0 {
				return fmt.Errorf("--step %d: steps are not negative", step)
			}
			if !cmd.Flags().Changed("step") {
				step = -1
			}
			log, err := lf.build()
			if err != nil {
				return err
			}
			defer log.Sync()
			ctx, stop := runContext(cmd.Context())
			defer stop()
			ctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()

			src, job := args[0], ""
			if !strings.Contains(src, "://") {
				job = src
				if src, step, err = jobCheckpoint(ctx, client, job, step); err != nil {
					return err
				}
			}
			st, info, err := export.LoadCheckpoint(ctx, src, step, log)
			if err != nil {
				return err
			}
			w, err := export.FromCheckpoint(st)
			if err != nil {
				return fmt.Errorf("%s: %w", info.URL, err)
			}
			if w.Job == "" {
				w.Job = job
			}
			if outPath == "" {
				name := w.Job
				if name == "" {
					name = w.Config.Name
				}
				outPath = export.FileName(name, w.Step)
			}
			report := cmd.OutOrStdout()
			if outPath == "-" {
				report = cmd.ErrOrStderr()
				bw := bufio.NewWriterSize(cmd.OutOrStdout(), 1<<20)
				if err := w.WriteSafetensors(bw); err != nil {
					return err
				}
				if err := bw.Flush(); err != nil {
					return err
				}
			} else if err := export.WriteFile(outPath, w); err != nil {
				return err
			}
			printExport(report, outPath, info, w)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&format, "format", export.FormatSafetensors, "output format: "+strings.Join(export.Formats(), ", "))
	f.Int64Var(&step, "step", 0, "export the checkpoint of this step (default: the newest valid one)")
	f.StringVarP(&outPath, "output", "o", "", "file to write, - for standard output (default JOB-step-N.safetensors)")
	f.DurationVar(&timeout, "timeout", 30*time.Minute, "give up after this long")
	addLogFlags(cmd, &lf)
	return cmd
}

// jobCheckpoint asks the coordinator for a job's checkpoints and returns
// the URL of the directory that holds them and the step to export: the
// one asked for (step >= 0), or -1 for the newest valid one. Errors name
// the steps there are.
func jobCheckpoint(ctx context.Context, client clientFunc, job string, step int64) (string, int64, error) {
	resp, err := call(ctx, client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.ListCheckpointsResponse, error) {
		return c.ListCheckpoints(ctx, &pb.ListCheckpointsRequest{JobId: job})
	})
	if err != nil {
		return "", 0, err
	}
	if len(resp.Checkpoints) == 0 {
		return "", 0, fmt.Errorf("job %s has no checkpoints in %s yet; it saves one every checkpoint.every_steps steps", job, resp.Store)
	}
	var valid []string
	for _, c := range resp.Checkpoints {
		if c.Valid {
			valid = append(valid, fmt.Sprint(c.Step))
		}
	}
	if step < 0 {
		if len(valid) == 0 {
			return "", 0, fmt.Errorf("job %s has no valid checkpoint in %s (see 'coordinator checkpoints %s' for why)", job, resp.Store, job)
		}
		return resp.Store, -1, nil
	}
	for _, c := range resp.Checkpoints {
		if c.Step != step {
			continue
		}
		if !c.Valid {
			return "", 0, fmt.Errorf("the checkpoint of job %s at step %d is not valid: %s; valid steps: %s", job, step, c.Problem, listOrNone(valid))
		}
		return resp.Store, step, nil
	}
	return "", 0, fmt.Errorf("job %s has no checkpoint at step %d; valid steps: %s", job, step, listOrNone(valid))
}

func listOrNone(s []string) string {
	if len(s) == 0 {
		return "none"
	}
	return strings.Join(s, ", ")
}

func printExport(w io.Writer, path string, info checkpoint.Info, wt *export.Weights) {
	if path == "-" {
		path = "standard output"
	}
	fmt.Fprintf(w, "wrote %s: %d tensors, %d parameters, %s, %s model %s\n",
		path, len(wt.Tensors), wt.Parameters(), humanBytes(wt.Bytes()), wt.Config.Name, wt.Metadata()["model_config"])
	fmt.Fprintf(w, "from %s (step %d)\n", info.URL, wt.Step)
	if !wt.Verified {
		fmt.Fprintf(w, "note: the checkpoint predates model_config and names only its model (%s); the tensors were not checked against a configuration\n", wt.Config.Name)
	}
}
