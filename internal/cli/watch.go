package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/state"
)

func newWatchCommand(client clientFunc) *cobra.Command {
	return &cobra.Command{
		Use:   "watch JOB",
		Short: "Follow a job's progress (step, epoch, loss, samples/s) until it ends",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			ctx, stop := runContext(cmd.Context())
			defer stop()
			final, err := watchJob(ctx, cli, args[0], cmd.OutOrStdout())
			if err != nil {
				return err
			}
			return finalError(args[0], final)
		},
	}
}

// finalError turns a job's terminal state into the command's exit status.
func finalError(id string, st *pb.StateChange) error {
	if st == nil || st.State == pb.JobState_JOB_STATE_SUCCEEDED {
		return nil
	}
	return fmt.Errorf("job %s %s: %s", id, state.StateName(st.State), st.Message)
}

// watchJob renders a job's events until it reaches a terminal state, which
// it returns. On a terminal it draws a live progress bar; otherwise it
// prints a progress line every few seconds.
func watchJob(ctx context.Context, cli pb.CoordinatorClient, id string, out io.Writer) (*pb.StateChange, error) {
	stream, err := cli.WatchJob(ctx, &pb.WatchJobRequest{JobId: id})
	if err != nil {
		return nil, rpcError(err)
	}
	r := newRenderer(out)
	defer r.close()
	for {
		ev, err := stream.Recv()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil, fmt.Errorf("the coordinator ended the watch of %s before the job ended", id)
			}
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, rpcError(err)
		}
		switch e := ev.Event.(type) {
		case *pb.JobEvent_Step:
			r.step(e.Step)
		case *pb.JobEvent_State:
			s := e.State
			if s.State == pb.JobState_JOB_STATE_UNSPECIFIED {
				r.println(s.Detail)
				continue
			}
			r.println(fmt.Sprintf("%s: %s", state.StateName(s.State), s.Message))
			if state.IsTerminal(s.State) {
				return s, nil
			}
		}
	}
}

type renderer struct {
	out      io.Writer
	bar      *progressbar.ProgressBar
	tty      bool
	lastLine time.Time
}

func newRenderer(out io.Writer) *renderer {
	r := &renderer{out: out}
	if f, ok := out.(*os.File); ok && isatty.IsTerminal(f.Fd()) {
		r.tty = true
	}
	return r
}

func (r *renderer) step(m *pb.StepMetrics) {
	desc := fmt.Sprintf("epoch %d/%d  loss %.4f  %6.0f samples/s", min(m.Epoch+1, max(m.Epochs, 1)), m.Epochs, m.Loss, m.SamplesPerSec)
	if m.Epochs == 0 {
		desc = fmt.Sprintf("loss %.4f  %6.0f samples/s", m.Loss, m.SamplesPerSec)
	}
	if !r.tty {
		if time.Since(r.lastLine) >= 5*time.Second || m.Step == m.TotalSteps {
			r.lastLine = time.Now()
			fmt.Fprintf(r.out, "step %d/%d  %s\n", m.Step, m.TotalSteps, desc)
		}
		return
	}
	if r.bar == nil {
		r.bar = progressbar.NewOptions64(m.TotalSteps,
			progressbar.OptionSetWriter(r.out),
			progressbar.OptionSetWidth(30),
			progressbar.OptionShowCount(),
			progressbar.OptionSetItsString("steps"),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetRenderBlankState(true),
		)
	}
	r.bar.ChangeMax64(m.TotalSteps)
	r.bar.Describe(fmt.Sprintf("step %d  %s", m.Step, desc))
	_ = r.bar.Set64(m.Step)
}

func (r *renderer) println(s string) {
	if r.bar != nil {
		_ = r.bar.Clear()
	}
	fmt.Fprintln(r.out, s)
}

func (r *renderer) close() {
	if r.bar != nil {
		_ = r.bar.Exit()
		fmt.Fprintln(r.out)
	}
}
