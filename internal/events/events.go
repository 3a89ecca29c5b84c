// Package events publishes and receives job events on NATS: per-step
// metrics from rank 0 and state changes from the coordinator and workers.
// Events are for watching, not for decisions: core NATS delivers at most
// once, so anything that must not be lost is recorded in etcd as well.
package events

import (
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// Subject is the NATS subject of a job's events. Job ids hold only
// letters, digits, '-' and '_', so they are single subject tokens.
func Subject(jobID string) string { return "ringmaster.jobs." + jobID + ".events" }

// Publisher sends events on a NATS connection.
type Publisher struct{ nc *nats.Conn }

// NewPublisher returns a publisher on nc.
func NewPublisher(nc *nats.Conn) *Publisher { return &Publisher{nc: nc} }

// Publish sends ev, stamping its time if unset.
func (p *Publisher) Publish(ev *pb.JobEvent) error {
	if ev.TimeMs == 0 {
		ev.TimeMs = time.Now().UnixMilli()
	}
	b, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	if err := p.nc.Publish(Subject(ev.JobId), b); err != nil {
		return fmt.Errorf("events: publishing to %s: %w", Subject(ev.JobId), err)
	}
	return nil
}

// Subscribe calls fn for each event of the job until the subscription is
// unsubscribed. Undecodable messages are skipped.
func Subscribe(nc *nats.Conn, jobID string, fn func(*pb.JobEvent)) (*nats.Subscription, error) {
	return nc.Subscribe(Subject(jobID), func(m *nats.Msg) {
		ev := &pb.JobEvent{}
		if proto.Unmarshal(m.Data, ev) == nil {
			fn(ev)
		}
	})
}

// Connect dials NATS with the options every Ringmaster component uses:
// a name, a connect deadline and reconnection without limit.
func Connect(url, name string) (*nats.Conn, error) {
	nc, err := nats.Connect(url, nats.Name(name), nats.Timeout(10*time.Second),
		nats.MaxReconnects(-1), nats.ReconnectWait(500*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	return nc, nil
}
