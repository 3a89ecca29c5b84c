package cli

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// newMembersCommand shows the control plane's replicas: each etcd member,
// whether the answering replica reaches it, which leads etcd, and which
// replica schedules.
func newMembersCommand(client clientFunc) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "members",
		Short: "Show the control plane's replicas: etcd members, quorum, and which replica schedules",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(cmd.Context(), client, rpcTimeout, func(ctx context.Context, c pb.CoordinatorClient) (*pb.ClusterStatusResponse, error) {
				return c.ClusterStatus(ctx, &pb.ClusterStatusRequest{})
			})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if asJSON {
				b, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(resp)
				if err != nil {
					return err
				}
				_, err = fmt.Fprintln(out, string(b))
				return err
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "MEMBER\tCLIENT URLS\tPEER URLS\tREACHABLE\tETCD LEADER\tERROR")
			for _, m := range resp.Members {
				lead := ""
				if m.Leader {
					lead = "yes"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%v\t%s\t%s\n", m.Name, strings.Join(m.ClientUrls, ","), strings.Join(m.PeerUrls, ","), m.Reachable, lead, oneLine(m.Error, 60))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			sched := resp.Scheduler
			if sched == "" {
				sched = "none elected"
			}
			quorum := "yes"
			if !resp.Quorum {
				quorum = "NO: nothing can be recorded until a majority of members is back; running jobs keep training"
			}
			fmt.Fprintf(out, "answered by: %s\nscheduler:   %s\nquorum:      %s\n", resp.Replica, sched, quorum)
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print as JSON")
	return cmd
}
