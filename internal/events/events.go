// Package events publishes and receives job events on NATS: per-step
// metrics from rank 0 and state changes from the coordinator and workers.
// Events are for watching, not for decisions: core NATS delivers at most
// once, so anything that must not be lost is recorded in etcd as well.
package events

import (
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
)

// Subject is the NATS subject a publisher sends a job's events on: the
// job's, then the publisher's token (PublisherToken), so that NATS can
// hold each worker to its own subjects and a subscriber knows who sent an
// event. Job ids hold only letters, digits, '-' and '_', so they are
// single subject tokens.
func Subject(jobID, publisher string) string {
	return "ringmaster.jobs." + jobID + ".events." + publisher
}

// JobSubjects matches every publisher's events of a job ("*": of all jobs).
func JobSubjects(jobID string) string { return "ringmaster.jobs." + jobID + ".events.>" }

// CoordinatorToken is the coordinators' publisher token.
const CoordinatorToken = "c"

// PublisherToken is worker id's publisher token: "w" and the id in hex
// (worker ids may hold dots, which separate subject tokens).
func PublisherToken(workerID string) string { return "w" + hex.EncodeToString([]byte(workerID)) }

// WorkerOf reads a worker id back from an event's subject ("" and false
// for the coordinators' events or a malformed subject).
func WorkerOf(subject string) (string, bool) {
	i := strings.LastIndexByte(subject, '.')
	tok := subject[i+1:]
	if !strings.HasPrefix(tok, "w") {
		return "", false
	}
	b, err := hex.DecodeString(tok[1:])
	if err != nil || len(b) == 0 {
		return "", false
	}
	return string(b), true
}

// Publisher sends events on a NATS connection.
type Publisher struct {
	nc    *nats.Conn
	token string
}

// NewPublisher returns a publisher on nc that sends as token (see
// PublisherToken, CoordinatorToken).
func NewPublisher(nc *nats.Conn, token string) *Publisher { return &Publisher{nc: nc, token: token} }

// Publish sends ev, stamping its time if unset.
func (p *Publisher) Publish(ev *pb.JobEvent) error {
	if ev.TimeMs == 0 {
		ev.TimeMs = time.Now().UnixMilli()
	}
	b, err := proto.Marshal(ev)
	if err != nil {
		return err
	}
	subj := Subject(ev.JobId, p.token)
	if err := p.nc.Publish(subj, b); err != nil {
		return fmt.Errorf("events: publishing to %s: %w", subj, err)
	}
	return nil
}

// MaxEventBytes bounds an event a subscriber decodes (the embedded server
// refuses larger messages too).
const MaxEventBytes = 64 << 10

// Subscribe calls fn for each event of the job ("*": of every job) with
// the worker that published it ("" for a coordinator) until the
// subscription is unsubscribed. Oversized, undecodable and misaddressed
// messages are skipped.
func Subscribe(nc *nats.Conn, jobID string, fn func(ev *pb.JobEvent, worker string)) (*nats.Subscription, error) {
	return nc.Subscribe(JobSubjects(jobID), func(m *nats.Msg) {
		if len(m.Data) > MaxEventBytes {
			return
		}
		ev := &pb.JobEvent{}
		if proto.Unmarshal(m.Data, ev) != nil {
			return
		}
		// The subject's job is what NATS checked; the payload's must agree.
		if parts := strings.Split(m.Subject, "."); len(parts) < 5 || parts[2] != ev.JobId {
			return
		}
		w, _ := WorkerOf(m.Subject)
		fn(ev, w)
	})
}

// Connect dials NATS with the options every Ringmaster component uses:
// a name, a connect deadline and reconnection without limit; tlsConfig,
// if set, is the client's TLS (with its certificate).
func Connect(url, name string, tlsConfig *tls.Config) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.Timeout(10 * time.Second),
		nats.MaxReconnects(-1), nats.ReconnectWait(500 * time.Millisecond)}
	if tlsConfig != nil {
		opts = append(opts, nats.Secure(tlsConfig))
	}
	nc, err := nats.Connect(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to NATS at %s: %w", url, err)
	}
	return nc, nil
}
