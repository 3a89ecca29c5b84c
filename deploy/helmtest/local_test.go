package helmtest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"

	pb "github.com/ringmaster/ringmaster/api/ringmaster/v1"
	"github.com/ringmaster/ringmaster/pkg/mnist"
)

// envBinary makes the test binary run one of the image's binaries (its
// path in the image) with the arguments it is given, as a container would.
const envBinary = "HELMTEST_BINARY"

func TestMain(m *testing.M) {
	if bin := os.Getenv(envBinary); bin != "" {
		os.Exit(runBinary(bin, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// runBinary is what the binary's main does.
func runBinary(bin string, args []string) int {
	mk, ok := binaries[bin]
	if !ok {
		fmt.Fprintf(os.Stderr, "error: %s is not a binary of the image\n", bin)
		return 127
	}
	cmd := mk()
	cmd.SetArgs(args)
	if err := cmd.Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		return 1
	}
	return 0
}

// localJob is a short MNIST job that checkpoints along the way.
const localJob = `
name: helm-local
model: cnn
workers: 2
batch_size: 8
optimizer: {lr: 0.05, momentum: 0.9}
steps: 120
seed: 3
checkpoint: {every_steps: 5, keep: 3}
log_every: 1000
`

// TestRenderedPodsRunLocally runs the default rendering (one coordinator,
// two workers) as local processes: the rendered commands, arguments and
// environment, with each pod's IP and DNS names mapped to a loopback
// address of its own and its volumes to directories (Secrets written as
// their items). Run as root, the volumes are root-owned directories given
// the pod's fsGroup as the kubelet does, and the processes run as the
// pods' non-root user. A short MNIST job trains to a checkpoint, the
// coordinator restarts, and the job finishes.
func TestRenderedPodsRunLocally(t *testing.T) {
	if testing.Short() {
		t.Skip("trains a job; -short skips it")
	}
	if runtime.GOOS != "linux" {
		t.Skip("maps pods to loopback addresses of 127.0.0.0/8, which only Linux routes without setup")
	}
	ports := freePorts(t, 6)
	values := v(fmt.Sprintf(`
coordinator: {replicas: 1, port: %d, healthPort: %d, embeddedEtcdPort: %d, embeddedNatsPort: %d}
worker: {replicas: 2, ringPort: %d, healthPort: %d, leaseTTL: 3s, drainTimeoutSeconds: 10}`,
		ports[0], ports[1], ports[2], ports[3], ports[4], ports[5]))
	m := renderCase(t, "rm", valuesCase{name: "local", values: values})
	l := newLocalCluster(t, m)

	coord := l.start(m.component(t, "coordinator"), 0)
	l.waitReady(coord, 2*time.Minute)
	work := m.component(t, "worker")
	workers := []*localPod{l.start(work, 0), l.start(work, 1)}
	for _, w := range workers {
		l.waitReady(w, time.Minute)
	}

	spec := filepath.Join(l.base, "job.yaml")
	if err := os.WriteFile(spec, []byte(localJob), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := l.cli(coord, "submit", spec)
	if err != nil {
		t.Fatalf("submit: %v\n%s", err, out)
	}
	id := strings.TrimSpace(out)
	before := l.waitJob(coord, id, 3*time.Minute, "a checkpoint", func(j *pb.Job) bool { return len(j.Checkpoints) > 0 })
	if before.Status.State != pb.JobState_JOB_STATE_RUNNING {
		t.Fatalf("job %s is %v at its first checkpoint; the coordinator should restart while it runs", id, before.Status.State)
	}
	t.Logf("restarting the coordinator at step %d of %s", before.Progress.GetStep(), id)
	if l.user != nil {
		// The files the pods wrote belong to their non-root user.
		fi, err := os.Stat(filepath.Join(l.claims, "data-"+coord.name, "admin.credentials"))
		if err != nil || fi.Sys().(*syscall.Stat_t).Uid != l.user.Uid {
			t.Errorf("the admin credential is not the pods' user's: %v %v", err, fi)
		}
	}

	coord.stop(t)
	coord = l.start(coord.sts, 0)
	l.waitReady(coord, 2*time.Minute)
	j := l.waitJob(coord, id, 5*time.Minute, "the job to succeed", func(j *pb.Job) bool {
		return j.Status.State == pb.JobState_JOB_STATE_SUCCEEDED
	})
	if r := j.Status.Result; r == nil || r.Steps != 120 || r.LastCheckpoint == "" {
		t.Errorf("result %v, want 120 steps and a last checkpoint", r)
	}
	if ck, err := filepath.Glob(filepath.Join(l.claims, "*checkpoints", id, "*")); err != nil || len(ck) == 0 {
		t.Errorf("no checkpoint of %s on the checkpoint volume (%v)", id, err)
	}
}

// localCluster maps pods to loopback addresses and directories.
type localCluster struct {
	t      *testing.T
	m      *manifests
	base   string // everything lives here
	claims string // persistent volumes, by claim name
	bin    string // a copy of this test binary, which runs the image's binaries
	mnist  string // the image's MNIST directory
	ips    map[string]string
	user   *syscall.Credential // the pods' user, when this test runs as root
	pods   []*localPod
}

type localPod struct {
	*pod
	ip     string
	health string
	log    string
	cmd    *exec.Cmd
	exited chan struct{} // closed when the process has exited, with err set
	err    error
}

func newLocalCluster(t *testing.T, m *manifests) *localCluster {
	t.Helper()
	// Under /tmp rather than t.TempDir(), whose parents only root may
	// enter, so that the pods' non-root user can.
	base, err := os.MkdirTemp("", "helmtest-pods-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	l := &localCluster{t: t, m: m, base: base, claims: filepath.Join(base, "claims"), ips: map[string]string{}}
	t.Cleanup(func() {
		for _, p := range l.pods {
			p.stop(t)
		}
		if t.Failed() {
			t.Logf("pods' files kept in %s", base)
		} else {
			os.RemoveAll(base)
		}
	})
	// Each pod its own loopback address, so that the rendered ports stay.
	n := 0
	for _, s := range m.statefulSets {
		for i := range replicas(s) {
			n++
			l.ips[fmt.Sprintf("%s-%d", s.Name, i)] = fmt.Sprintf("127.77.0.%d", n)
		}
	}
	if ln, err := net.Listen("tcp", "127.77.0.1:0"); err != nil {
		t.Skipf("cannot listen on a loopback address of its own: %v", err)
	} else {
		ln.Close()
	}
	sc := m.component(t, "coordinator").Spec.Template.Spec.SecurityContext
	if os.Geteuid() == 0 && sc != nil && sc.RunAsUser != nil {
		l.user = &syscall.Credential{Uid: uint32(*sc.RunAsUser), Gid: uint32(*sc.RunAsUser)}
		if sc.RunAsGroup != nil {
			l.user.Gid = uint32(*sc.RunAsGroup)
		}
		if sc.FSGroup != nil {
			l.user.Groups = []uint32{uint32(*sc.FSGroup)}
		}
	} else {
		t.Log("not root: the pods run as this user")
	}
	// The binary, readable by the pods' user.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	l.bin = filepath.Join(base, "bin", "helmtest")
	copyFile(t, self, l.bin, 0o755)
	// The image's MNIST files (its RINGMASTER_MNIST_DIR).
	src, err := mnist.DefaultDir()
	if err != nil {
		t.Skipf("MNIST files: %v", err)
	}
	l.mnist = filepath.Join(base, "image", "usr", "share", "ringmaster", "mnist")
	files, _ := filepath.Glob(filepath.Join(src, "*.gz"))
	for _, f := range files {
		copyFile(t, f, filepath.Join(l.mnist, filepath.Base(f)), 0o644)
	}
	return l
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// volumeDir makes a volume's directory as the kubelet does: root-owned,
// then given the pod's fsGroup (group-owned, group-writable, setgid).
func (l *localCluster) volumeDir(dir string, spec *corev1.PodSpec) string {
	l.t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		l.t.Fatal(err)
	}
	if l.user != nil && spec.SecurityContext != nil && spec.SecurityContext.FSGroup != nil {
		if err := os.Chown(dir, 0, int(*spec.SecurityContext.FSGroup)); err != nil {
			l.t.Fatal(err)
		}
		if err := os.Chmod(dir, 0o2775); err != nil {
			l.t.Fatal(err)
		}
	}
	return dir
}

// start starts a pod's container as a process.
func (l *localCluster) start(s *appsv1.StatefulSet, ordinal int) *localPod {
	t := l.t
	t.Helper()
	name := fmt.Sprintf("%s-%d", s.Name, ordinal)
	ip := l.ips[name]
	spec := &s.Spec.Template.Spec
	ctr := &spec.Containers[0]
	p, err := newPod(l.m, s, ordinal, ctr, ip)
	if err != nil {
		t.Fatal(err)
	}
	if p.cmd, err = parse(p.args); err != nil {
		t.Fatal(err)
	}
	podDir := filepath.Join(l.base, "pods", name)

	// Volumes, by mount path.
	mounts := map[string]string{}
	for _, vm := range ctr.VolumeMounts {
		var dir string
		if slices.ContainsFunc(s.Spec.VolumeClaimTemplates, func(c corev1.PersistentVolumeClaim) bool { return c.Name == vm.Name }) {
			dir = l.volumeDir(filepath.Join(l.claims, vm.Name+"-"+name), spec)
		} else {
			vol := p.volume(vm.Name)
			switch {
			case vol.PersistentVolumeClaim != nil:
				dir = l.volumeDir(filepath.Join(l.claims, vol.PersistentVolumeClaim.ClaimName), spec)
			case vol.EmptyDir != nil:
				dir = l.volumeDir(filepath.Join(podDir, "volumes", vm.Name), spec)
			case vol.Secret != nil:
				dir = l.volumeDir(filepath.Join(podDir, "volumes", vm.Name), spec)
				l.writeSecret(dir, vol.Secret, spec)
			default:
				t.Fatalf("%s: volume %s of an unknown kind", name, vm.Name)
			}
		}
		mounts[vm.MountPath] = dir
	}
	mapPath := func(file string) string {
		best := ""
		for mp := range mounts {
			if (file == mp || strings.HasPrefix(file, mp+"/")) && len(mp) > len(best) {
				best = mp
			}
		}
		if best == "" {
			t.Fatalf("%s: %s is on no volume", name, file)
		}
		return mounts[best] + strings.TrimPrefix(file, best)
	}
	// Pods' DNS names to their addresses, longest first.
	type rename struct{ from, to string }
	var renames []rename
	for _, o := range l.m.statefulSets {
		for i := range replicas(o) {
			pn := fmt.Sprintf("%s-%d", o.Name, i)
			host := fmt.Sprintf("%s.%s.%s.svc", pn, o.Spec.ServiceName, namespace)
			renames = append(renames, rename{host + ".cluster.local", l.ips[pn]}, rename{host, l.ips[pn]})
		}
	}
	renames = append(renames, rename{"0.0.0.0", ip})
	var args []string
	for _, a := range p.args[1:] {
		for _, r := range renames {
			a = strings.ReplaceAll(a, r.from, r.to)
		}
		if flag, val, ok := strings.Cut(a, "="); ok && strings.HasPrefix(flag, "--") {
			switch {
			case strings.HasPrefix(val, "file:///"):
				a = flag + "=file://" + mapPath(strings.TrimPrefix(val, "file://"))
			case strings.HasPrefix(val, "/"):
				a = flag + "=" + mapPath(val)
			}
		}
		args = append(args, a)
	}

	home := l.volumeDir(filepath.Join(podDir, "home"), spec)
	env := []string{
		envBinary + "=" + p.args[0],
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"TMPDIR=" + mapPath("/tmp"),
		mnist.EnvDir + "=" + l.mnist, // the image's environment
	}
	for _, e := range ctr.Env {
		env = append(env, e.Name+"="+p.env[e.Name])
	}
	lp := &localPod{pod: p, ip: ip, log: filepath.Join(l.base, "logs", name+".log"), exited: make(chan struct{})}
	lp.health = net.JoinHostPort(ip, fmt.Sprint(portNamed(s, "health")))
	if err := os.MkdirAll(filepath.Dir(lp.log), 0o755); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(lp.log, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	lp.cmd = exec.Command(l.bin, args...)
	lp.cmd.Env, lp.cmd.Dir, lp.cmd.Stdout, lp.cmd.Stderr = env, home, logf, logf
	lp.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: l.user}
	if err := lp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logf.Close()
	t.Logf("%s at %s: %s %s", name, ip, p.args[0], strings.Join(args, " "))
	go func() { lp.err = lp.cmd.Wait(); close(lp.exited) }()
	l.pods = append(l.pods, lp)
	return lp
}

// writeSecret writes a Secret volume's items as the kubelet does, with
// the fsGroup able to read them.
func (l *localCluster) writeSecret(dir string, src *corev1.SecretVolumeSource, spec *corev1.PodSpec) {
	l.t.Helper()
	sec := l.m.secret(src.SecretName)
	if sec == nil {
		l.t.Fatalf("Secret %s is not rendered", src.SecretName)
	}
	items := src.Items
	if len(items) == 0 {
		for k := range sec.Data {
			items = append(items, corev1.KeyToPath{Key: k, Path: k})
		}
	}
	for _, it := range items {
		f := filepath.Join(dir, it.Path)
		if err := os.WriteFile(f, sec.Data[it.Key], 0o440); err != nil {
			l.t.Fatal(err)
		}
		if l.user != nil && spec.SecurityContext != nil && spec.SecurityContext.FSGroup != nil {
			if err := os.Chown(f, 0, int(*spec.SecurityContext.FSGroup)); err != nil {
				l.t.Fatal(err)
			}
		}
	}
}

// stop sends SIGTERM, as the kubelet does, and waits up to the grace
// period before killing.
func (p *localPod) stop(t *testing.T) {
	select {
	case <-p.exited:
		return
	default:
	}
	grace := 30 * time.Second
	if g := p.sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(grace):
		t.Errorf("%s did not stop within its grace period %v", p.name, grace)
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

// waitReady polls the pod's readiness probe, as the kubelet does.
func (l *localCluster) waitReady(p *localPod, timeout time.Duration) {
	l.t.Helper()
	url := "http://" + p.health + p.ctr.ReadinessProbe.HTTPGet.Path
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		select {
		case <-p.exited:
			l.fail(p, fmt.Errorf("exited before it was ready: %v", p.err))
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				cancel()
				return
			}
			err = fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
		}
		cancel()
		last = err
		time.Sleep(300 * time.Millisecond)
	}
	l.fail(p, fmt.Errorf("not ready within %v: %v", timeout, last))
}

// cli runs the CLI (the coordinator binary, as root: the user's laptop)
// against a coordinator pod with the admin credential it wrote.
func (l *localCluster) cli(coord *localPod, args ...string) (string, error) {
	data := ""
	for _, a := range coord.cmd.Args {
		if v, ok := strings.CutPrefix(a, "--data-dir="); ok {
			data = v
		}
	}
	args = append(args, "--addr", net.JoinHostPort(coord.ip, fmt.Sprint(portNamed(coord.sts, "api"))),
		"--credentials", filepath.Join(data, "admin.credentials"))
	cmd := exec.Command(l.bin, args...)
	cmd.Env = []string{envBinary + "=/usr/local/bin/coordinator", "PATH=" + os.Getenv("PATH"), "HOME=" + l.base}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out) + stderr.String(), err
	}
	return string(out), nil
}

// waitJob polls the job's status until ok.
func (l *localCluster) waitJob(coord *localPod, id string, timeout time.Duration, what string, ok func(*pb.Job) bool) *pb.Job {
	l.t.Helper()
	deadline := time.Now().Add(timeout)
	var last string
	for time.Now().Before(deadline) {
		out, err := l.cli(coord, "status", id, "--json")
		if err == nil {
			j := &pb.Job{}
			if err = protojson.Unmarshal([]byte(out), j); err == nil {
				if ok(j) {
					return j
				}
				if j.Status.GetState() == pb.JobState_JOB_STATE_FAILED {
					l.fail(coord, fmt.Errorf("job %s failed: %s", id, j.Status.Message))
				}
			}
		}
		last = fmt.Sprintf("%v %s", err, out)
		time.Sleep(time.Second)
	}
	l.fail(coord, fmt.Errorf("waiting for %s of job %s: %v: %s", what, id, errors.New("timed out"), last))
	return nil
}

// fail stops the test with the end of every pod's log.
func (l *localCluster) fail(p *localPod, err error) {
	l.t.Helper()
	for _, o := range l.pods {
		b, _ := os.ReadFile(o.log)
		if len(b) > 4000 {
			b = b[len(b)-4000:]
		}
		l.t.Logf("--- %s (%s):\n%s", o.name, o.log, b)
	}
	l.t.Fatalf("%s: %v", p.name, err)
}

// freePorts finds n ports free on the loopback interface.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var out []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		out = append(out, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}
