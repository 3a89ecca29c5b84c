package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// netns is a network namespace joined to this one by a veth pair: a host
// of its own on a /30, whose link can be cut without a TCP reset.
type netns struct {
	name, hostIP, nsIP, nsLink string
}

// newNetns makes the namespace, or skips the test where namespaces are
// not available (not root, no `ip`, a sandbox without CAP_NET_ADMIN).
func newNetns(t *testing.T) *netns {
	t.Helper()
	id := os.Getpid() % 100000
	n := &netns{
		name:   fmt.Sprintf("rm%05d", id),
		hostIP: fmt.Sprintf("10.213.%d.1", id%250),
		nsIP:   fmt.Sprintf("10.213.%d.2", id%250),
		nsLink: fmt.Sprintf("rmn%05d", id),
	}
	hostLink := fmt.Sprintf("rmh%05d", id)
	run := func(args ...string) error {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	_ = run("netns", "del", n.name) // left over from a killed run
	_ = run("link", "del", hostLink)
	steps := [][]string{
		{"netns", "add", n.name},
		{"link", "add", hostLink, "type", "veth", "peer", "name", n.nsLink},
		{"link", "set", n.nsLink, "netns", n.name},
		{"addr", "add", n.hostIP + "/30", "dev", hostLink},
		{"link", "set", hostLink, "up"},
		{"netns", "exec", n.name, "ip", "addr", "add", n.nsIP + "/30", "dev", n.nsLink},
		{"netns", "exec", n.name, "ip", "link", "set", n.nsLink, "up"},
		{"netns", "exec", n.name, "ip", "link", "set", "lo", "up"},
	}
	t.Cleanup(func() {
		_ = run("netns", "del", n.name)
		_ = run("link", "del", hostLink)
	})
	for _, s := range steps {
		if err := run(s...); err != nil {
			t.Skipf("network namespaces are not available here, so a host that vanishes cannot be simulated (needs root and `ip netns`): %v", err)
		}
	}
	return n
}

// cut sets the namespace's end of the link down: its packets, and those
// sent to it, are dropped; no connection is reset or closed.
func (n *netns) cut(t *testing.T) {
	t.Helper()
	if out, err := exec.Command("ip", "netns", "exec", n.name, "ip", "link", "set", n.nsLink, "down").CombinedOutput(); err != nil {
		t.Fatalf("cutting the link: %v: %s", err, out)
	}
}

// A worker's host vanishes without a TCP reset (its network link goes
// down): the lease or the ring's keepalives notice it, and the survivors
// rebuild the ring in place and finish the job.
func TestChaosHostVanishes(t *testing.T) {
	ns := newNetns(t)
	seed := chaosSeed(t)
	c := chaosOn(t, startClusterOn(t, ns.hostIP), seed)
	ids := []string{"v0", "v1", "v2"}
	away := ids[c.rng.IntN(len(ids))]
	for _, id := range ids {
		if id == away {
			c.cluster.startWorkerVia([]string{"ip", "netns", "exec", ns.name}, id, chaosLease,
				"--sample-log", c.samples, "--listen", ns.nsIP+":0")
		} else {
			c.cluster.startWorker(id, chaosLease, "--sample-log", c.samples, "--listen", ns.hostIP+":0")
		}
	}
	c.waitWorkers(ids...)
	losses := c.recordLosses()
	id := c.submit(chaosSpec("3", 3))
	step := int64(5 + c.rng.IntN(60))
	c.waitStep(losses, id, step)
	var rank int
	for _, r := range c.job(id).Assignment.Ranks {
		if r.WorkerId == away {
			rank = int(r.Rank)
		}
	}
	t.Logf("the link of %s (rank %d, in namespace %s) goes down at step %d", away, rank, ns.name, step)
	start := time.Now()
	ns.cut(t)
	j := c.checkRecovered(id, 1)
	t.Logf("finished %v after the cut", time.Since(start).Round(time.Second))
	for _, r := range j.Assignment.Ranks {
		if r.WorkerId == away {
			t.Errorf("the vanished worker %s is in the final ring", away)
		}
	}
}
