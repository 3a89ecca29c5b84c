package coordinator

import (
	"testing"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/internal/state"
)

func TestNeedsPlan(t *testing.T) {
	k := state.Keys{Prefix: state.DefaultPrefix}
	put := func(key string, v []byte) *clientv3.Event {
		return &clientv3.Event{Type: clientv3.EventTypePut, Kv: &mvccpb.KeyValue{Key: []byte(key), Value: v}}
	}
	del := func(key string) *clientv3.Event {
		return &clientv3.Event{Type: clientv3.EventTypeDelete, Kv: &mvccpb.KeyValue{Key: []byte(key)}}
	}
	progress := []byte(state.Marshal(&pb.Progress{Generation: 1, Step: 10}))
	done := []byte(state.Marshal(&pb.Progress{Generation: 1, Step: 20, Done: true}))
	cases := []struct {
		name string
		evs  []*clientv3.Event
		want bool
	}{
		{"progress", []*clientv3.Event{put(k.Progress("j"), progress)}, false},
		{"checkpoint record", []*clientv3.Event{put(k.Checkpoint("j", 8), []byte("{}"))}, false},
		{"progress that says done", []*clientv3.Event{put(k.Progress("j"), done)}, true},
		{"unreadable progress", []*clientv3.Event{put(k.Progress("j"), []byte("{"))}, true},
		{"a finished job's keys expire", []*clientv3.Event{del(k.Progress("j")), del(k.Status("j")), del(k.Spec("j"))}, false},
		{"a report among progress", []*clientv3.Event{put(k.Progress("j"), progress), put(k.Report("j", 1), []byte("{}"))}, true},
		{"a status", []*clientv3.Event{put(k.Status("j"), []byte("{}"))}, true},
		{"a worker lease expired", []*clientv3.Event{del(k.Worker("w1"))}, true},
		{"a claim", []*clientv3.Event{put(k.Claim("w1"), []byte("{}"))}, true},
	}
	for _, c := range cases {
		if got := needsPlan(k, c.evs); got != c.want {
			t.Errorf("%s: needsPlan %v, want %v", c.name, got, c.want)
		}
	}
}
