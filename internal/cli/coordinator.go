package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"runtime/pprof"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/apiclient"
	"github.com/ringmaster/ringmaster/internal/coordinator"
	"github.com/ringmaster/ringmaster/internal/state"
	"github.com/ringmaster/ringmaster/internal/version"
)

// EnvAddr names the environment variable that says which coordinator the
// CLI talks to.
const EnvAddr = "RINGMASTER_ADDR"

// DefaultAddr is the coordinator API address used when neither --addr nor
// $RINGMASTER_ADDR is given.
const DefaultAddr = "127.0.0.1:7070"

// NewCoordinatorCommand returns the coordinator command tree.
func NewCoordinatorCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "coordinator",
		Version:       version.Version,
		Short:         "Ringmaster coordinator: the control plane of distributed training, and its CLI",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	var addr string
	var cf clientFlags
	pf := root.PersistentFlags()
	pf.StringVar(&addr, "addr", "", "coordinator API address, or the replicas' addresses separated by commas (default $"+EnvAddr+", the credential's coordinator, or "+DefaultAddr+")")
	pf.StringVar(&cf.credentials, "credentials", "", "credential file (default $"+EnvCredentials+", or ringmaster-data/"+coordinator.AdminCredentialFile+" when it exists)")
	pf.BoolVar(&cf.insecure, "insecure", false, "plain text without authentication: for a coordinator run with --insecure (serve and run: serve that way)")
	client := func() (pb.CoordinatorClient, func(), error) {
		opt, credAddr, err := cf.transport()
		if err != nil {
			return nil, nil, err
		}
		a := addr
		if a == "" {
			a = os.Getenv(EnvAddr)
		}
		if a == "" {
			a = credAddr
		}
		if a == "" {
			a = DefaultAddr
		}
		conn, err := apiclient.Dial(a, opt)
		if err != nil {
			return nil, nil, err
		}
		return pb.NewCoordinatorClient(conn), func() { conn.Close() }, nil
	}
	root.AddCommand(newServeCommand(&cf.insecure), newRunCommand(&cf.insecure),
		newSubmitCommand(client), newListCommand(client), newStatusCommand(client), newCancelCommand(client),
		newWatchCommand(client), newWorkersCommand(client), newResumeCommand(client), newCheckpointsCommand(client),
		newPrepareCommand(), newExportCommand(client), newSnapshotCommand(client), newMembersCommand(client),
		newTokenCommand(client), newCredentialsCommand(client, &addr))
	// The all-in-one run command starts workers as processes of this same
	// binary, so `go run ./cmd/coordinator run` needs no second build.
	w := NewWorkerCommand()
	w.Hidden = true
	root.AddCommand(w)
	return root
}

type clientFunc func() (pb.CoordinatorClient, func(), error)

// rpcTimeout bounds every unary call of the CLI.
const rpcTimeout = 15 * time.Second

// rpcError turns a gRPC status into the plain message the coordinator sent.
func rpcError(err error) error {
	if s, ok := status.FromError(err); ok {
		return errors.New(s.Message())
	}
	return err
}

// call dials the coordinator, makes one request with a deadline of timeout,
// closes the connection, and turns a gRPC status into its message.
func call[T any](ctx context.Context, client clientFunc, timeout time.Duration, req func(context.Context, pb.CoordinatorClient) (T, error)) (T, error) {
	var zero T
	cli, done, err := client()
	if err != nil {
		return zero, err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	resp, err := req(ctx, cli)
	if err != nil {
		return zero, rpcError(err)
	}
	return resp, nil
}

func newServeCommand(insecure *bool) *cobra.Command {
	var cfg coordinator.Config
	var lf logFlags
	var cpuProfile string
	cmd := &cobra.Command{
		Use:   "serve [--listen ADDR] [--etcd-endpoints A,B] [--nats-url URL] [--data-dir DIR]",
		Short: "Run the control plane: the API, the scheduler, and embedded etcd and NATS unless external ones are given",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := lf.build()
			if err != nil {
				return err
			}
			defer log.Sync()
			if cpuProfile != "" {
				f, err := os.Create(cpuProfile)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := pprof.StartCPUProfile(f); err != nil {
					return err
				}
				defer pprof.StopCPUProfile()
			}
			cfg.Insecure = *insecure
			c, err := coordinator.Start(cfg, log)
			if err != nil {
				return err
			}
			defer c.Close()
			if p := c.AdminCredentialPath(); p != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "serving mutual TLS; admin credential: %s (the CLI finds it from this directory, or export %s=%s)\n", p, EnvCredentials, p)
			}
			ctx, stop := runContext(cmd.Context())
			defer stop()
			select {
			case <-ctx.Done():
				return nil
			case err := <-c.Err():
				return err
			}
		},
	}
	f := cmd.Flags()
	f.StringVar(&cfg.Listen, "listen", DefaultAddr, "API listen address")
	f.StringSliceVar(&cfg.EtcdEndpoints, "etcd-endpoints", nil, "external etcd endpoints (default: run an embedded etcd)")
	f.StringVar(&cfg.NATSURL, "nats-url", "", "external NATS URL (default: run an embedded NATS server)")
	f.StringVar(&cfg.DataDir, "data-dir", "ringmaster-data", "directory for the embedded etcd and default checkpoints")
	f.StringVar(&cfg.EmbeddedEtcdListen, "embedded-etcd-listen", "127.0.0.1:0", "client address of the embedded etcd (port 0: a free one, kept across restarts of this data directory)")
	f.StringVar(&cfg.EmbeddedNATSListen, "embedded-nats-listen", "127.0.0.1:0", "address of the embedded NATS server (port 0: a free one, kept across restarts of this data directory)")
	f.StringVar(&cfg.AdvertiseHost, "advertise-host", "", "host workers use to reach the embedded etcd and NATS (for listening on 0.0.0.0)")
	f.StringVar(&cfg.HealthListen, "health-listen", "", "serve the HTTP probes /healthz and /readyz (ready: this replica reaches an etcd quorum) on host:port; empty: none")
	f.StringVar(&cfg.DefaultStore, "default-store", "", "checkpoint store of jobs that name none (default file://DATA_DIR/checkpoints)")
	f.StringVar(&cpuProfile, "cpu-profile", "", "write a CPU profile of the coordinator (with its embedded etcd and NATS) to this file until it stops")
	f.DurationVar(&cfg.JobRetention, "job-retention", 7*24*time.Hour, "how long a finished job stays listed (spec, final state, history); 0 keeps it for ever")
	f.StringVar(&cfg.Name, "name", "ringmaster", "this replica's name (its embedded etcd member and its entry in --initial-cluster and --nats-routes)")
	f.StringVar(&cfg.InitialCluster, "initial-cluster", "", "run as one of several replicas forming an embedded etcd cluster: name=http://host:port (etcd peer URLs) of every replica, this one included")
	f.StringVar(&cfg.NATSRoutes, "nats-routes", "", "with --initial-cluster: name=nats://host:port (NATS route URLs) of every replica; this one listens on its own entry")
	f.DurationVar(&cfg.EtcdElectionTimeout, "etcd-election-timeout", 500*time.Millisecond, "the embedded etcd's election timeout; raise it to about 10 round trips between replicas on a slow network")
	f.StringVar(&cfg.PeerListenHost, "peer-listen-host", "", "host to listen on for the other replicas (default: the host of this replica's own entries; 0.0.0.0 in a pod)")
	addPolicyFlags(cmd, &cfg.Policy, false)
	f.StringVar(&cfg.CADir, "ca-dir", "", "directory holding the cluster's CA (ca.crt and ca.key, or tls.crt and tls.key: a mounted Secret; replicas share it); default DATA_DIR/pki, created at first start")
	addExternalTLSFlags(cmd, &cfg.EtcdTLS, &cfg.NATSTLS)
	f.StringVar(&cfg.BootstrapTokenFile, "bootstrap-token-file", "", "a worker join token (ID.SECRET) to accept until it is replaced: one generated into a Secret the workers mount")
	f.StringSliceVar(&cfg.TLSHosts, "tls-host", nil, "more DNS names or addresses for this replica's certificate (a Service name, a load balancer)")
	addLogFlags(cmd, &lf)
	return cmd
}

func newSubmitCommand(client clientFunc) *cobra.Command {
	return &cobra.Command{
		Use:   "submit JOB.yaml",
		Short: "Submit a job spec; prints the job id",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			spec, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			resp, err := call(cmd.Context(), client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.SubmitJobResponse, error) {
				return c.SubmitJob(ctx, &pb.SubmitJobRequest{SpecYaml: spec})
			})
			if err != nil {
				return fmt.Errorf("%s: %w", args[0], err)
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.JobId)
			return nil
		},
	}
}

func newListCommand(client clientFunc) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List jobs",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(cmd.Context(), client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.ListJobsResponse, error) {
				return c.ListJobs(ctx, &pb.ListJobsRequest{})
			})
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "JOB\tSTATE\tMODEL\tWORKERS\tSTEP\tLOSS\tAGE\tMESSAGE")
			for _, j := range resp.Jobs {
				step, loss := "-", "-"
				if p := j.Progress; p != nil {
					step = fmt.Sprintf("%d/%d", p.Step, p.TotalSteps)
					loss = fmt.Sprintf("%.4f", p.Loss)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", j.Id, state.StateName(j.Status.State), j.Spec.Model,
					j.Spec.Workers, step, loss, age(j.Status.CreatedMs), oneLine(j.Status.Message, 80))
			}
			return tw.Flush()
		},
	}
}

func newStatusCommand(client clientFunc) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status JOB",
		Short: "Show a job's spec, state, assignment, progress and checkpoints",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			j, err := call(cmd.Context(), client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.Job, error) {
				return c.GetJob(ctx, &pb.GetJobRequest{JobId: args[0]})
			})
			if err != nil {
				return err
			}
			if asJSON {
				b, _ := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(j)
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			printJob(cmd.OutOrStdout(), j)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the job as JSON")
	return cmd
}

func printJob(w io.Writer, j *pb.Job) {
	s := j.Status
	fmt.Fprintf(w, "Job:        %s\n", j.Id)
	fmt.Fprintf(w, "State:      %s (attempt %d)\n", state.StateName(s.State), s.Attempt)
	fmt.Fprintf(w, "Message:    %s\n", s.Message)
	fmt.Fprintf(w, "Submitted:  %s (%s ago)\n", time.UnixMilli(s.CreatedMs).Format(time.RFC3339), age(s.CreatedMs))
	sp := j.Spec
	length := fmt.Sprintf("%d epochs", sp.Epochs)
	if sp.Steps > 0 {
		length = fmt.Sprintf("%d steps", sp.Steps)
	}
	workers := fmt.Sprint(sp.Workers)
	if sp.MinWorkers > 0 {
		workers = fmt.Sprintf("%d-%d", sp.MinWorkers, sp.Workers)
	}
	fmt.Fprintf(w, "Spec:       model %s, dataset %s, %s workers x batch %d, %s lr %g, %s, seed %d\n",
		modelSummary(sp), sp.Dataset.Name, workers, sp.BatchSize, sp.Optimizer.Name, sp.Optimizer.Lr, length, sp.Seed)
	fmt.Fprintf(w, "Failures:   %d absorbed of max_restarts %d\n", s.Restarts, sp.MaxRestarts)
	if sp.InitFrom != "" {
		fmt.Fprintf(w, "Init from:  %s\n", sp.InitFrom)
	}
	fmt.Fprintf(w, "Checkpoint: every %d steps to %s, keep %d\n", sp.Checkpoint.EverySteps, sp.Checkpoint.Store, sp.Checkpoint.Keep)
	if a := j.Assignment; a != nil {
		fmt.Fprintf(w, "Assignment: generation %d\n", a.Generation)
		for _, r := range a.Ranks {
			fmt.Fprintf(w, "  rank %d  %s  %s\n", r.Rank, r.WorkerId, r.Addr)
		}
	}
	if p := j.Progress; p != nil {
		fmt.Fprintf(w, "Progress:   step %d/%d, epoch %d, %d samples, loss %.4f, %.0f samples/s (updated %s ago)\n",
			p.Step, p.TotalSteps, p.Epoch, p.GlobalSamples, p.Loss, p.SamplesPerSec, age(p.UpdatedMs))
	}
	if r := s.Result; r != nil {
		fmt.Fprintf(w, "Result:     %s, final loss %.4f after %d steps\n", evalSummary(sp, r), r.FinalLoss, r.Steps)
		if r.LastCheckpoint != "" {
			fmt.Fprintf(w, "            last checkpoint %s\n", r.LastCheckpoint)
		}
	}
	if len(s.History) > 0 {
		fmt.Fprintf(w, "History:\n")
		for _, h := range s.History {
			fmt.Fprintf(w, "  %s  generation %d  step %d  %-9s %s\n", time.UnixMilli(h.TimeMs).Format("15:04:05.000"), h.Generation, h.Step, h.Event, h.Detail)
		}
	}
	switch {
	case j.CheckpointsError != "":
		fmt.Fprintf(w, "Checkpoints: %s\n", j.CheckpointsError)
	case len(j.Checkpoints) > 0:
		fmt.Fprintf(w, "Checkpoints (valid, in the store):\n")
		for _, c := range j.Checkpoints {
			fmt.Fprintf(w, "  step %d  %s  %d bytes  %s\n", c.Step, time.UnixMilli(c.TimeMs).Format(time.RFC3339), c.SizeBytes, c.Url)
		}
	}
}

func newCancelCommand(client clientFunc) *cobra.Command {
	var wait time.Duration
	cmd := &cobra.Command{
		Use:   "cancel JOB",
		Short: "Cancel a pending or running job",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cli, done, err := client()
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), rpcTimeout)
			defer cancel()
			if _, err := cli.CancelJob(ctx, &pb.CancelJobRequest{JobId: args[0]}); err != nil {
				return rpcError(err)
			}
			deadline := time.Now().Add(wait)
			for {
				ctx, cancel := context.WithTimeout(cmd.Context(), rpcTimeout)
				j, err := cli.GetJob(ctx, &pb.GetJobRequest{JobId: args[0]})
				cancel()
				if err != nil {
					return rpcError(err)
				}
				if state.IsTerminal(j.Status.State) {
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", args[0], state.StateName(j.Status.State))
					return nil
				}
				if time.Now().After(deadline) {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: cancel requested; the coordinator has not acted on it yet\n", args[0])
					return nil
				}
				time.Sleep(200 * time.Millisecond)
			}
		},
	}
	cmd.Flags().DurationVar(&wait, "wait", 30*time.Second, "how long to wait for the job to stop")
	return cmd
}

func newResumeCommand(client clientFunc) *cobra.Command {
	var req pb.ResumeJobRequest
	cmd := &cobra.Command{
		Use:   "resume JOB [--step N] [--workers M] [--discard-newer]",
		Short: "Restart a failed or cancelled job from its latest valid checkpoint or a chosen one, on the same or another number of workers",
		Long: `Restart a failed or cancelled job from its latest valid checkpoint, or from
the checkpoint of --step (see 'coordinator checkpoints JOB'), on its own
number of workers or on --workers. The job keeps its global batch (the
spec's workers x batch_size), so the steps and the learning-rate schedule
are the same whatever the number of workers; with the same number the
losses are exactly those of an uninterrupted run.

Resuming from a step older than the newest checkpoint deletes the newer
checkpoints, so that the new run's checkpoints never mix with them; it
needs --discard-newer to say so.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req.JobId = args[0]
			j, err := call(cmd.Context(), client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.Job, error) {
				return c.ResumeJob(ctx, &req)
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s\n", j.Id, state.StateName(j.Status.State), j.Status.Message)
			return nil
		},
	}
	f := cmd.Flags()
	f.Int64Var(&req.Step, "step", 0, "resume from the checkpoint of this step (default: the latest valid one)")
	f.Int32Var(&req.Workers, "workers", 0, "run on this many workers from now on (default: as before)")
	f.BoolVar(&req.DiscardNewer, "discard-newer", false, "delete the checkpoints after --step")
	return cmd
}

func newCheckpointsCommand(client clientFunc) *cobra.Command {
	var verify, asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "checkpoints JOB [--verify]",
		Short: "List a job's checkpoints in its store: step, time, size, store, and whether each is valid",
		Long: `List a job's checkpoints as its store holds them, newest first. A
checkpoint is valid when its manifest parses and every object it lists
exists with its size; --verify also reads every object and checks its
checksum (slow for large checkpoints).`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := call(cmd.Context(), client, timeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.ListCheckpointsResponse, error) {
				return c.ListCheckpoints(ctx, &pb.ListCheckpointsRequest{JobId: args[0], Verify: verify})
			})
			if err != nil {
				return err
			}
			if asJSON {
				b, _ := protojson.MarshalOptions{Multiline: true, UseProtoNames: true}.Marshal(resp)
				fmt.Fprintln(cmd.OutOrStdout(), string(b))
				return nil
			}
			printCheckpoints(cmd.OutOrStdout(), resp)
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&verify, "verify", false, "read every object and check its checksum")
	f.BoolVar(&asJSON, "json", false, "print as JSON")
	f.DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	return cmd
}

func printCheckpoints(w io.Writer, resp *pb.ListCheckpointsResponse) {
	fmt.Fprintf(w, "Store: %s\n", resp.Store)
	if len(resp.Checkpoints) == 0 {
		fmt.Fprintln(w, "no checkpoints")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tTIME\tSIZE\tWORKERS\tEPOCH\tVALID\tURL / PROBLEM")
	for _, c := range resp.Checkpoints {
		when, valid, where := "-", "yes", c.Url
		if c.TimeMs != 0 {
			when = time.UnixMilli(c.TimeMs).UTC().Format(time.RFC3339)
		}
		if !c.Valid {
			valid, where = "NO", c.Problem
		}
		workers, epoch := "-", "-"
		if c.World > 0 {
			workers, epoch = fmt.Sprint(c.World), fmt.Sprint(c.Epoch)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", c.Step, when, humanBytes(c.SizeBytes), workers, epoch, valid, where)
	}
	tw.Flush()
}

func humanBytes(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

func newWorkersCommand(client clientFunc) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "workers",
		Short: "List registered workers",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(cmd.Context(), client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.ListWorkersResponse, error) {
				return c.ListWorkers(ctx, &pb.ListWorkersRequest{})
			})
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(resp.Workers)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "WORKER\tADDR\tDEVICES\tJOB\tVERSION\tHOST\tREGISTERED")
			for _, w := range resp.Workers {
				job := w.JobId
				if job == "" {
					job = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", w.Id, w.Addr, strings.Join(w.Devices, ","), job, w.Version, w.Hostname, age(w.RegisteredMs))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			for _, w := range resp.Workers {
				if w.Excluded != "" {
					fmt.Fprintf(cmd.OutOrStdout(), "%s is excluded until it registers anew: %s\n", w.Id, w.Excluded)
				}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}

func age(ms int64) string {
	if ms == 0 {
		return "-"
	}
	d := time.Since(time.UnixMilli(ms))
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

func oneLine(s string, n int) string {
	s = strings.ReplaceAll(s, "\n", " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}

// evalSummary says how a finished job did on its evaluation set: test
// accuracy for the CNN, validation loss and perplexity for the language
// models.
func evalSummary(sp *pb.JobSpec, r *pb.JobResult) string {
	if sp.GetDataset().GetName() != "tokens" {
		return fmt.Sprintf("test accuracy %.2f%% (%d MNIST test images)", 100*r.TestAccuracy, r.TestSamples)
	}
	if r.TestSamples == 0 {
		return "no validation set (dataset.val_path)"
	}
	return fmt.Sprintf("validation loss %.4f (perplexity %.2f, next-token accuracy %.2f%%, %d tokens)",
		r.EvalLoss, math.Exp(r.EvalLoss), 100*r.TestAccuracy, r.TestSamples)
}

// modelSummary names the model and, for the language models, its shape.
func modelSummary(sp *pb.JobSpec) string {
	c := sp.GetModelConfig()
	switch sp.Model {
	case "gpt":
		return fmt.Sprintf("gpt (%d layers, dim %d, %d heads, ctx %d, vocab %d)", c.GetLayers(), c.GetDim(), c.GetHeads(), c.GetCtx(), c.GetVocab())
	case "lstm":
		return fmt.Sprintf("lstm (%d layers, dim %d, hidden %d, ctx %d, vocab %d)", c.GetLayers(), c.GetDim(), c.GetHidden(), c.GetCtx(), c.GetVocab())
	}
	return sp.Model
}
