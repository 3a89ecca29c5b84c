package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"go.etcd.io/etcd/etcdutl/v3/snapshot"
	"go.uber.org/zap"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/embedded"
)

func newSnapshotCommand(client clientFunc) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "snapshot",
		Short: "Back up the control plane's etcd state, and restore it into a data directory",
	}
	cmd.AddCommand(newSnapshotSaveCommand(client), newSnapshotRestoreCommand())
	return cmd
}

func newSnapshotSaveCommand(client clientFunc) *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "save FILE",
		Short: "Write a consistent snapshot of the cluster's etcd (jobs, workers, checkpoint records) to FILE",
		Long: `Streams a snapshot of the etcd the coordinator uses (embedded or external)
to FILE. The file is written next to FILE first and renamed when complete,
so FILE is either the whole snapshot or untouched. Training goes on while
it is taken. Restore it with 'coordinator snapshot restore'.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			n, version, err := saveSnapshot(cmd.Context(), client, timeout, args[0])
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "saved a snapshot of etcd %s to %s (%d bytes)\n", version, args[0], n)
			return nil
		},
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	return cmd
}

func saveSnapshot(ctx context.Context, client clientFunc, timeout time.Duration, path string) (int64, string, error) {
	cli, done, err := client()
	if err != nil {
		return 0, "", err
	}
	defer done()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stream, err := cli.SaveSnapshot(ctx, &pb.SaveSnapshotRequest{})
	if err != nil {
		return 0, "", rpcError(err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), filepath.Base(path)+".part-*")
	if err != nil {
		return 0, "", err
	}
	defer os.Remove(tmp.Name()) // after the rename, a no-op
	defer tmp.Close()
	var n int64
	var version string
	for {
		chunk, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return 0, "", rpcError(err)
		}
		if chunk.EtcdVersion != "" {
			version = chunk.EtcdVersion
		}
		w, err := tmp.Write(chunk.Data)
		n += int64(w)
		if err != nil {
			return 0, "", err
		}
	}
	if n == 0 {
		return 0, "", errors.New("the coordinator sent an empty snapshot")
	}
	if err := tmp.Sync(); err != nil {
		return 0, "", err
	}
	if err := tmp.Close(); err != nil {
		return 0, "", err
	}
	return n, version, os.Rename(tmp.Name(), path)
}

func newSnapshotRestoreCommand() *cobra.Command {
	var dataDir, name, initialCluster string
	cmd := &cobra.Command{
		Use:   "restore FILE --data-dir DIR [--name N --initial-cluster N=http://HOST:PORT,...]",
		Short: "Turn a snapshot into the embedded etcd of a new data directory",
		Long: `Checks the snapshot's integrity hash and writes it as the embedded etcd of
DIR (DIR/etcd must not exist). Then 'coordinator serve --data-dir DIR'
serves the restored state: jobs that were running are adopted and go on
when their workers reconnect; the restored revisions are moved past the
old ones, so watchers of the old etcd resynchronise instead of missing
changes. Checkpoints live in their store, not in the snapshot.

For replicas that form an embedded etcd cluster, restore the same FILE
into each replica's data directory with its --name and the cluster's
--initial-cluster, then start the replicas with the flags they had (and the same --ca-dir: the
replicas' CA is not in the snapshot). The members' peer URLs are recorded
as https unless --insecure is given.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dataDir == "" {
				return errors.New("--data-dir is required: the coordinator data directory to restore into")
			}
			dir := filepath.Join(dataDir, "etcd")
			if _, err := os.Stat(dir); err == nil {
				return fmt.Errorf("%s exists: restore into a new --data-dir, or move it away first", dir)
			}
			if err := os.MkdirAll(dataDir, 0o755); err != nil {
				return err
			}
			peer, cluster := "http://127.0.0.1:2380", name+"=http://127.0.0.1:2380"
			if initialCluster != "" {
				own, err := embedded.OwnPeerURL(initialCluster, name)
				if err != nil {
					return err
				}
				peer, cluster = own.String(), initialCluster
			}
			// Members talk TLS unless the replicas will run --insecure;
			// the recorded peer URLs must say so (as serve rewrites them
			// for a new cluster).
			if insecure, _ := cmd.Flags().GetBool("insecure"); !insecure {
				peer = strings.Replace(peer, "http://", "https://", 1)
				cluster = strings.ReplaceAll(cluster, "http://", "https://")
			}
			err := snapshot.NewV3(zap.NewNop()).Restore(snapshot.RestoreConfig{
				SnapshotPath:        args[0],
				Name:                name,
				OutputDataDir:       dir,
				PeerURLs:            []string{peer},
				InitialCluster:      cluster,
				InitialClusterToken: "ringmaster",
				RevisionBump:        1_000_000,
				MarkCompacted:       true,
			})
			if err != nil {
				return fmt.Errorf("restoring %s: %w", args[0], err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "restored %s into %s; start it with: coordinator serve --data-dir %s\n", args[0], dir, dataDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&dataDir, "data-dir", "", "coordinator data directory to restore into")
	cmd.Flags().StringVar(&name, "name", embedded.EtcdMemberName, "the replica's name (as its serve --name)")
	cmd.Flags().StringVar(&initialCluster, "initial-cluster", "", "for replicas: the cluster's serve --initial-cluster")
	return cmd
}
