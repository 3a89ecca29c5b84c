package coordinator

import (
	"context"

	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// memberProbeTimeout bounds each etcd member's status probe.
const memberProbeTimeout = time.Second

// clusterStatus probes the etcd members as this replica sees them. It
// answers without a quorum: the member list and the election are read
// from the local member (serializable reads), and each member is asked
// for its status directly.
func (c *Coordinator) clusterStatus(ctx context.Context) *pb.ClusterStatusResponse {
	out := &pb.ClusterStatusResponse{Replica: c.cfg.Name}
	// Whatever the caller asked of etcd (an API call requires a leader),
	// these reads are local.
	ctx = metadata.NewOutgoingContext(ctx, metadata.MD{})
	lctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	opts := append(clientv3.WithFirstCreate(), clientv3.WithSerializable())
	if resp, err := c.etcd.Get(lctx, c.keys.Election(), opts...); err == nil && len(resp.Kvs) > 0 {
		out.Scheduler = string(resp.Kvs[0].Value)
	}
	ms, err := c.etcd.MemberList(lctx, clientv3.WithSerializable())
	if err != nil {
		out.Members = append(out.Members, &pb.EtcdMember{Name: c.cfg.Name, ClientUrls: c.etcdURLs, Error: err.Error()})
		return out
	}
	var mu sync.Mutex
	var wg sync.WaitGroup
	reachable, leaders := 0, map[uint64]int{}
	for _, m := range ms.Members {
		pm := &pb.EtcdMember{Name: m.Name, ClientUrls: m.ClientURLs, PeerUrls: m.PeerURLs}
		out.Members = append(out.Members, pm)
		if len(m.ClientURLs) == 0 {
			pm.Error = "has not joined yet (no client URL published)"
			continue
		}
		wg.Add(1)
		go func(id uint64, u string) {
			defer wg.Done()
			sctx, cancel := context.WithTimeout(ctx, memberProbeTimeout)
			st, err := c.etcd.Status(sctx, u)
			cancel()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				pm.Error = err.Error()
				return
			}
			pm.Reachable = true
			reachable++
			if st.Leader != 0 {
				leaders[st.Leader]++
				pm.Leader = st.Leader == id
			}
		}(m.ID, m.ClientURLs[0])
	}
	wg.Wait()
	sort.Slice(out.Members, func(i, j int) bool { return out.Members[i].Name < out.Members[j].Name })
	for _, n := range leaders {
		if 2*n > len(ms.Members) {
			out.Quorum = true
		}
	}
	return out
}

// noQuorum explains why this replica cannot write, or returns "" when a
// majority of the etcd members is reachable.
func (c *Coordinator) noQuorum(ctx context.Context) string {
	st := c.clusterStatus(ctx)
	if st.Quorum {
		return ""
	}
	var up []string
	for _, m := range st.Members {
		if m.Reachable {
			up = append(up, m.Name)
		}
	}
	n := len(st.Members)
	return fmt.Sprintf("the control plane has no quorum: replica %s reaches %d of %d etcd members (%s), and %d are needed to record anything; "+
		"writes are refused until a majority is back (running jobs keep training; see docs/operations.md)",
		c.cfg.Name, len(up), n, strings.Join(up, ", "), n/2+1)
}

// unaryInterceptor makes every API call fail fast while the local etcd
// member has no leader (instead of waiting out the request timeout), and
// says so plainly when that is why a call failed.
func (c *Coordinator) unaryInterceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if err := c.authorize(ctx, info.FullMethod); err != nil {
		return nil, err
	}
	if info.FullMethod == pb.Coordinator_ClusterStatus_FullMethodName || info.FullMethod == pb.Coordinator_Info_FullMethodName {
		// These answer from the local member, quorum or not.
		return handler(ctx, req)
	}
	resp, err := handler(clientv3.WithRequireLeader(ctx), req)
	if err != nil && status.Code(err) == codes.Unavailable && ctx.Err() == nil && !strings.Contains(err.Error(), "no quorum") {
		if msg := c.noQuorum(ctx); msg != "" {
			return nil, status.Error(codes.Unavailable, msg)
		}
	}
	return resp, err
}

// ClusterStatus implements the API call.
func (a *api) ClusterStatus(ctx context.Context, _ *pb.ClusterStatusRequest) (*pb.ClusterStatusResponse, error) {
	if err := ctx.Err(); err != nil {
		return nil, status.FromContextError(err).Err()
	}
	return a.c.clusterStatus(ctx), nil
}
