package helmtest

import (
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ringmaster/ringmaster/internal/cli"
	"github.com/ringmaster/ringmaster/internal/pki"
	"github.com/ringmaster/ringmaster/internal/worker"
	"github.com/ringmaster/ringmaster/pkg/checkpoint"
	"github.com/ringmaster/ringmaster/pkg/mnist"
)

// binaries are the image's executables (the Dockerfile's layout, checked
// by TestImageLayout) and the cobra commands their main functions run.
var binaries = map[string]func() *cobra.Command{
	"/usr/local/bin/coordinator": cli.NewCoordinatorCommand,
	"/usr/local/bin/worker":      cli.NewWorkerCommand,
}

// knownEnv is the environment the binaries read, besides variables the
// chart only uses in $(VAR) references of the arguments.
var knownEnv = map[string]bool{
	worker.JoinTokenEnv: true,
	cli.EnvAddr:         true,
	cli.EnvCredentials:  true,
	mnist.EnvDir:        true,
	// pkg/checkpoint's S3 client (ParseS3URL and its credential chain).
	"AWS_ENDPOINT_URL_S3":   true,
	"AWS_ENDPOINT_URL":      true,
	"AWS_REGION":            true,
	"AWS_DEFAULT_REGION":    true,
	"AWS_ACCESS_KEY_ID":     true,
	"AWS_SECRET_ACCESS_KEY": true,
	"AWS_SESSION_TOKEN":     true,
}

// podIP stands for status.podIP.
const podIP = "10.1.2.3"

// pod is one replica of a StatefulSet with its container's view of the
// world: its environment and its parsed command line.
type pod struct {
	sts     *appsv1.StatefulSet
	ordinal int
	name    string
	ctr     *corev1.Container
	env     map[string]string
	args    []string // command and arguments, $(VAR) expanded
	cmd     *cobra.Command
}

var varRef = regexp.MustCompile(`\$\(([A-Za-z_][A-Za-z0-9_]*)\)`)

// newPod resolves a container's environment as the kubelet does (field
// references, Secret keys of rendered Secrets) and expands $(VAR) in its
// command and arguments.
func newPod(m *manifests, s *appsv1.StatefulSet, ordinal int, ctr *corev1.Container, ip string) (*pod, error) {
	p := &pod{sts: s, ordinal: ordinal, name: fmt.Sprintf("%s-%d", s.Name, ordinal), ctr: ctr, env: map[string]string{}}
	for _, e := range ctr.Env {
		val := e.Value
		if f := e.ValueFrom; f != nil {
			switch {
			case f.FieldRef != nil && f.FieldRef.FieldPath == "metadata.name":
				val = p.name
			case f.FieldRef != nil && f.FieldRef.FieldPath == "status.podIP":
				val = ip
			case f.SecretKeyRef != nil:
				if sec := m.secret(f.SecretKeyRef.Name); sec != nil {
					val = string(sec.Data[f.SecretKeyRef.Key])
				} else {
					val = "" // an operator's Secret
				}
			default:
				return nil, fmt.Errorf("env %s: a source this test does not resolve", e.Name)
			}
		}
		p.env[e.Name] = val
	}
	for _, a := range slices.Concat(ctr.Command, ctr.Args) {
		a = varRef.ReplaceAllStringFunc(a, func(ref string) string {
			if v, ok := p.env[ref[2:len(ref)-1]]; ok {
				return v
			}
			return ref
		})
		if strings.Contains(a, "$(") {
			return nil, fmt.Errorf("argument %q refers to a variable the container does not define", a)
		}
		p.args = append(p.args, a)
	}
	return p, nil
}

// parse parses a command line with the binary's own cobra command tree,
// without running it: the subcommand must exist, every flag must be one
// it has with a value it accepts, required flags given, positional
// arguments accepted.
func parse(args []string) (*cobra.Command, error) {
	if len(args) == 0 {
		return nil, fmt.Errorf("no command")
	}
	mk, ok := binaries[args[0]]
	if !ok {
		return nil, fmt.Errorf("%s is not a binary of the image", args[0])
	}
	root := mk()
	cmd, rest, err := root.Find(args[1:])
	if err != nil {
		return nil, err
	}
	if !cmd.Runnable() {
		return nil, fmt.Errorf("%q is not a runnable command", cmd.CommandPath())
	}
	if err := cmd.ParseFlags(rest); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	if err := cmd.ValidateArgs(cmd.Flags().Args()); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	if err := cmd.ValidateRequiredFlags(); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	if err := cmd.ValidateFlagGroups(); err != nil {
		return nil, fmt.Errorf("%s: %w", cmd.CommandPath(), err)
	}
	return cmd, nil
}

// flag returns a flag's values as given (one per element for a slice
// flag), nil when it was not given.
func (p *pod) flag(name string) []string {
	f := p.cmd.Flags().Lookup(name)
	if f == nil || !f.Changed {
		return nil
	}
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return sv.GetSlice()
	}
	return []string{f.Value.String()}
}

func (p *pod) flag1(name string) string {
	if v := p.flag(name); len(v) > 0 {
		return v[0]
	}
	return ""
}

// mountOf finds the volume mount a path lies in (the deepest).
func (p *pod) mountOf(file string) *corev1.VolumeMount {
	var best *corev1.VolumeMount
	for i, vm := range p.ctr.VolumeMounts {
		if file == vm.MountPath || strings.HasPrefix(file, strings.TrimSuffix(vm.MountPath, "/")+"/") {
			if best == nil || len(vm.MountPath) > len(best.MountPath) {
				best = &p.ctr.VolumeMounts[i]
			}
		}
	}
	return best
}

func (p *pod) volume(name string) *corev1.Volume {
	for i, v := range p.sts.Spec.Template.Spec.Volumes {
		if v.Name == name {
			return &p.sts.Spec.Template.Spec.Volumes[i]
		}
	}
	return nil
}

// secretFile finds the Secret and key that a path in the container shows.
func (p *pod) secretFile(file string) (secret, key string, err error) {
	vm := p.mountOf(file)
	if vm == nil {
		return "", "", fmt.Errorf("%s is on no volume", file)
	}
	vol := p.volume(vm.Name)
	if vol == nil || vol.Secret == nil {
		return "", "", fmt.Errorf("%s is not on a Secret volume", file)
	}
	rel := strings.TrimPrefix(strings.TrimPrefix(file, vm.MountPath), "/")
	if len(vol.Secret.Items) == 0 {
		return vol.Secret.SecretName, rel, nil
	}
	for _, it := range vol.Secret.Items {
		if it.Path == rel {
			return vol.Secret.SecretName, it.Key, nil
		}
	}
	return "", "", fmt.Errorf("%s: Secret volume %s has no item at %s", file, vol.Name, rel)
}

// secretData reads what secretFile finds; ok is false for an operator's
// Secret, whose content the test cannot know.
func (p *pod) secretData(m *manifests, file string) (data []byte, ok bool, err error) {
	name, key, err := p.secretFile(file)
	if err != nil {
		return nil, false, err
	}
	sec := m.secret(name)
	if sec == nil {
		return nil, false, nil
	}
	d, found := sec.Data[key]
	if !found {
		return nil, false, fmt.Errorf("%s: Secret %s has no key %s", file, name, key)
	}
	return d, true, nil
}

// podByHost finds the StatefulSet pod that a cluster DNS name
// <pod>.<service>.<namespace>.svc[.cluster.local] names.
func podByHost(m *manifests, host string) (*appsv1.StatefulSet, string, error) {
	host = strings.TrimSuffix(host, ".cluster.local")
	parts := strings.Split(host, ".")
	if len(parts) != 4 || parts[2] != namespace || parts[3] != "svc" {
		return nil, "", fmt.Errorf("%q is not <pod>.<service>.%s.svc", host, namespace)
	}
	for _, s := range m.statefulSets {
		if s.Spec.ServiceName != parts[1] {
			continue
		}
		for i := range replicas(s) {
			if parts[0] == fmt.Sprintf("%s-%d", s.Name, i) {
				return s, parts[0], nil
			}
		}
	}
	return nil, "", fmt.Errorf("%q names no pod of the release", host)
}

// portNamed is a named container port's number.
func portNamed(s *appsv1.StatefulSet, name string) int32 {
	if p := containerPort(&s.Spec.Template.Spec, intstr.FromString(name)); p != nil {
		return p.ContainerPort
	}
	return 0
}

// checkCommandLines parses every container's command line with the real
// binary and checks what its flags point at.
func checkCommandLines(t *testing.T, c valuesCase, m *manifests) {
	t.Helper()
	insecure := map[string]bool{}
	tokens := map[string]string{} // component: the token file or env it is given
	for _, s := range m.statefulSets {
		for ordinal := range replicas(s) {
			for i := range s.Spec.Template.Spec.Containers {
				ctr := &s.Spec.Template.Spec.Containers[i]
				p, err := newPod(m, s, ordinal, ctr, podIP)
				if err != nil {
					t.Errorf("%s-%d/%s: %v", s.Name, ordinal, ctr.Name, err)
					continue
				}
				if p.cmd, err = parse(p.args); err != nil {
					t.Errorf("%s/%s: the binary refuses its command line %q: %v", p.name, ctr.Name, p.args, err)
					continue
				}
				checkPaths(t, m, p)
				checkListeners(t, p)
				checkEnv(t, m, p)
				switch p.cmd.Name() {
				case "serve":
					checkCoordinator(t, m, p)
				case "worker":
					checkWorker(t, m, p)
				default:
					t.Errorf("%s: runs %q, neither serve nor worker", p.name, p.cmd.CommandPath())
				}
				comp := s.Spec.Template.Labels["app.kubernetes.io/component"]
				insecure[comp] = p.flag1("insecure") == "true"
				if f := p.flag1("bootstrap-token-file"); f != "" {
					if d, ok, _ := p.secretData(m, f); ok {
						tokens[comp] = strings.TrimSpace(string(d))
					}
				}
				if tok := p.env[worker.JoinTokenEnv]; tok != "" {
					tokens[comp] = tok
				}
			}
		}
	}
	if insecure["coordinator"] != insecure["worker"] {
		t.Errorf("the coordinator's --insecure is %v but the workers' is %v", insecure["coordinator"], insecure["worker"])
	}
	wantTLS := lookupValue(c.values, "tls", "enabled") != false
	if insecure["coordinator"] == wantTLS {
		t.Errorf("tls.enabled is %v but the coordinator's --insecure is %v", wantTLS, insecure["coordinator"])
	}
	if tokens["coordinator"] != tokens["worker"] {
		t.Errorf("the coordinators accept join token %q but the workers present %q", tokens["coordinator"], tokens["worker"])
	}
}

// checkPaths: every absolute path a flag names lies on a volume (the root
// filesystem is read-only and holds only the image), and the directories
// a process writes are on writable volumes.
func checkPaths(t *testing.T, m *manifests, p *pod) {
	t.Helper()
	writes := map[string]bool{"data-dir": true, "state-dir": true, "cache-dir": true, "default-store": true}
	p.cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Changed {
			return
		}
		for _, val := range p.flag(f.Name) {
			file := strings.TrimPrefix(val, "file://")
			if !strings.HasPrefix(file, "/") {
				continue
			}
			vm := p.mountOf(file)
			if vm == nil {
				t.Errorf("%s: --%s=%s is on the read-only root filesystem", p.name, f.Name, val)
				continue
			}
			if strings.HasSuffix(f.Name, "-file") {
				if _, _, err := p.secretFile(file); err != nil {
					t.Errorf("%s: --%s: %v", p.name, f.Name, err)
				}
			}
			if writes[f.Name] {
				if vol := p.volume(vm.Name); vm.ReadOnly || vol != nil && vol.Secret != nil {
					t.Errorf("%s: --%s=%s is on the read-only volume %s", p.name, f.Name, val, vm.Name)
				}
			}
		}
	})
	if f := p.flag1("default-store"); strings.HasPrefix(f, "file://") {
		// Rank 0 writes, every rank reads: the same claim at the same
		// path in every pod of the release.
		vm := p.mountOf(strings.TrimPrefix(f, "file://"))
		vol := p.volume(vm.Name)
		if vol == nil || vol.PersistentVolumeClaim == nil {
			t.Errorf("%s: --default-store=%s is not on a shared claim", p.name, f)
			return
		}
		for _, s := range m.statefulSets {
			if !slices.ContainsFunc(s.Spec.Template.Spec.Containers[0].VolumeMounts, func(o corev1.VolumeMount) bool { return o.MountPath == vm.MountPath }) ||
				!slices.ContainsFunc(s.Spec.Template.Spec.Volumes, func(o corev1.Volume) bool {
					return o.PersistentVolumeClaim != nil && o.PersistentVolumeClaim.ClaimName == vol.PersistentVolumeClaim.ClaimName
				}) {
				t.Errorf("%s: the checkpoint claim %s is not mounted at %s in %s", p.name, vol.PersistentVolumeClaim.ClaimName, vm.MountPath, s.Name)
			}
		}
	}
}

// checkListeners: each address a flag listens on is a declared container
// port, each declared port is listened on, and the probes ask the health
// listener.
func checkListeners(t *testing.T, p *pod) {
	t.Helper()
	declared := map[int32]string{}
	for _, cp := range p.ctr.Ports {
		declared[cp.ContainerPort] = cp.Name
	}
	listened := map[int32]bool{}
	p.cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if !f.Changed || !strings.HasSuffix(f.Name, "listen") {
			return
		}
		_, port, err := net.SplitHostPort(f.Value.String())
		n, _ := strconv.Atoi(port)
		if err != nil || declared[int32(n)] == "" {
			t.Errorf("%s: --%s=%s is not a declared container port (%v)", p.name, f.Name, f.Value, err)
		}
		listened[int32(n)] = true
	})
	// The replicas' peer ports: this replica's own entries of
	// --initial-cluster and --nats-routes.
	for _, fl := range []string{"initial-cluster", "nats-routes"} {
		for _, e := range strings.Split(p.flag1(fl), ",") {
			if name, u, ok := strings.Cut(e, "="); ok && name == p.name {
				if _, port, err := net.SplitHostPort(strings.SplitN(u, "://", 2)[1]); err == nil {
					n, _ := strconv.Atoi(port)
					listened[int32(n)] = true
				}
			}
		}
	}
	for port, name := range declared {
		if !listened[port] {
			t.Errorf("%s: declares port %s (%d), which nothing listens on", p.name, name, port)
		}
	}
	health := p.flag1("health-listen")
	for _, probe := range []*corev1.Probe{p.ctr.ReadinessProbe, p.ctr.LivenessProbe} {
		if probe == nil || probe.HTTPGet == nil {
			continue
		}
		cp := containerPort(&corev1.PodSpec{Containers: []corev1.Container{*p.ctr}}, probe.HTTPGet.Port)
		if cp == nil || !strings.HasSuffix(health, fmt.Sprintf(":%d", cp.ContainerPort)) {
			t.Errorf("%s: a probe asks port %s but --health-listen is %q", p.name, probe.HTTPGet.Port.String(), health)
		}
	}
}

// checkEnv: every variable is read by the binary or used in the
// arguments, and the values the binary will parse parse.
func checkEnv(t *testing.T, m *manifests, p *pod) {
	t.Helper()
	joined := strings.Join(slices.Concat(p.ctr.Command, p.ctr.Args), " ")
	for _, e := range p.ctr.Env {
		if !knownEnv[e.Name] && !strings.Contains(joined, "$("+e.Name+")") {
			t.Errorf("%s: environment variable %s is neither read by the binary nor used in its arguments", p.name, e.Name)
		}
	}
	for _, ef := range p.ctr.EnvFrom {
		if ef.SecretRef == nil {
			continue
		}
		if sec := m.secret(ef.SecretRef.Name); sec != nil {
			for k := range sec.Data {
				if !knownEnv[k] {
					t.Errorf("%s: Secret %s gives it %s, which the binary does not read", p.name, sec.Name, k)
				}
			}
		}
	}
	if tok := p.env[worker.JoinTokenEnv]; tok != "" {
		parsed, err := pki.ParseToken(tok)
		if err != nil {
			t.Errorf("%s: %s: %v", p.name, worker.JoinTokenEnv, err)
		} else if parsed.CAHash == "" && p.flag1("ca-file") == "" {
			t.Errorf("%s: a join token without a CA hash needs --ca-file", p.name)
		}
	}
	// The S3 settings the binary reads from its environment.
	for _, k := range []string{"AWS_ENDPOINT_URL_S3", "AWS_REGION"} {
		t.Setenv(k, p.env[k])
	}
	if store := p.flag1("default-store"); strings.HasPrefix(store, "s3://") {
		if _, err := checkpoint.ParseS3URL(store); err != nil {
			t.Errorf("%s: --default-store: %v", p.name, err)
		}
	}
	if ep := p.env["AWS_ENDPOINT_URL_S3"]; ep != "" {
		if _, err := checkpoint.ParseS3URL("s3://bucket/prefix"); err != nil {
			t.Errorf("%s: AWS_ENDPOINT_URL_S3=%s: %v", p.name, ep, err)
		}
	}
}

// checkCoordinator: the names a replica advertises and is reached by are
// its own, its peers' entries name the replicas and their ports, and the
// CA and token files are the chart's Secrets.
func checkCoordinator(t *testing.T, m *manifests, p *pod) {
	t.Helper()
	if h := p.flag1("advertise-host"); h != "" {
		if _, name, err := podByHost(m, h); err != nil || name != p.name {
			t.Errorf("%s: --advertise-host=%s: names %q, not this pod (%v)", p.name, h, name, err)
		}
	}
	members := map[string]map[string]string{}
	for fl, portName := range map[string]string{"initial-cluster": "etcd-peer", "nats-routes": "nats-cluster"} {
		v := p.flag1(fl)
		if v == "" {
			continue
		}
		members[fl] = map[string]string{}
		for _, e := range strings.Split(v, ",") {
			name, u, _ := strings.Cut(e, "=")
			_, hostport, _ := strings.Cut(u, "://")
			host, port, err := net.SplitHostPort(hostport)
			if err != nil {
				t.Errorf("%s: --%s entry %q: %v", p.name, fl, e, err)
				continue
			}
			s, pname, err := podByHost(m, host)
			if err != nil || pname != name || s != p.sts {
				t.Errorf("%s: --%s entry %q does not name replica %s's own host (%v)", p.name, fl, e, name, err)
			} else if want := portNamed(s, portName); port != fmt.Sprint(want) {
				t.Errorf("%s: --%s entry %q: port %s, but the replicas' %s port is %d", p.name, fl, e, port, portName, want)
			}
			members[fl][name] = host
		}
		if len(members[fl]) != replicas(p.sts) {
			t.Errorf("%s: --%s has %d members for %d replicas", p.name, fl, len(members[fl]), replicas(p.sts))
		}
		if _, ok := members[fl][p.flag1("name")]; !ok {
			t.Errorf("%s: --name=%s is not an entry of --%s", p.name, p.flag1("name"), fl)
		}
	}
	if p.flag1("insecure") == "true" {
		return
	}
	hosts := p.flag("tls-host")
	for _, h := range hosts {
		if net.ParseIP(h) == nil && len(validation.IsDNS1123Subdomain(h)) > 0 {
			t.Errorf("%s: --tls-host=%s is neither a DNS name nor an address: %v", p.name, h, validation.IsDNS1123Subdomain(h))
		}
	}
	for _, svc := range m.services {
		if svc.Spec.ClusterIP == corev1.ClusterIPNone || svc.Spec.Selector["app.kubernetes.io/component"] != "coordinator" {
			continue
		}
		for _, want := range []string{svc.Name, svc.Name + "." + namespace + ".svc", svc.Name + "." + namespace + ".svc.cluster.local"} {
			if !slices.Contains(hosts, want) {
				t.Errorf("%s: its certificate is not valid for its Service's name %s (--tls-host %v)", p.name, want, hosts)
			}
		}
	}
	if dir := p.flag1("ca-dir"); dir == "" {
		t.Errorf("%s: no --ca-dir: each replica would make its own CA", p.name)
	} else {
		crt, okc, errc := p.secretData(m, path.Join(dir, "tls.crt"))
		key, okk, errk := p.secretData(m, path.Join(dir, "tls.key"))
		if errc != nil || errk != nil {
			t.Errorf("%s: --ca-dir=%s: %v %v", p.name, dir, errc, errk)
		} else if okc && okk {
			certBlock, _ := pem.Decode(crt)
			keyBlock, _ := pem.Decode(key)
			if certBlock == nil || keyBlock == nil {
				t.Errorf("%s: --ca-dir=%s holds no PEM certificate and key", p.name, dir)
			}
		}
	}
	if f := p.flag1("bootstrap-token-file"); f == "" {
		t.Errorf("%s: no --bootstrap-token-file: the workers cannot join", p.name)
	} else if d, ok, err := p.secretData(m, f); err != nil {
		t.Errorf("%s: --bootstrap-token-file: %v", p.name, err)
	} else if ok {
		if _, err := pki.ParseToken(string(d)); err != nil {
			t.Errorf("%s: --bootstrap-token-file: %v", p.name, err)
		}
	}
}

// checkWorker: the coordinator addresses are the replicas' API ports, the
// ring is advertised on the pod's IP and ring port, the CA file is the
// CA's certificate and nothing of its key is mounted, and the grace
// period covers the drain.
func checkWorker(t *testing.T, m *manifests, p *pod) {
	t.Helper()
	addrs := strings.Split(p.flag1("coordinator"), ",")
	coord := m.component(t, "coordinator")
	if len(addrs) != replicas(coord) {
		t.Errorf("%s: --coordinator lists %d replicas of %d", p.name, len(addrs), replicas(coord))
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil {
			t.Errorf("%s: --coordinator %q: %v", p.name, a, err)
			continue
		}
		if s, _, err := podByHost(m, host); err != nil || s != coord {
			t.Errorf("%s: --coordinator %q does not name a coordinator replica (%v)", p.name, a, err)
		} else if want := portNamed(coord, "api"); port != fmt.Sprint(want) {
			t.Errorf("%s: --coordinator %q: the API port is %d", p.name, a, want)
		}
	}
	if want := fmt.Sprintf("%s:%d", podIP, portNamed(p.sts, "ring")); p.flag1("advertise") != want {
		t.Errorf("%s: --advertise=%s, want %s (the pod's IP and ring port)", p.name, p.flag1("advertise"), want)
	}
	drain, err := time.ParseDuration(p.flag1("drain-timeout"))
	if p.flag1("drain-timeout") == "" {
		drain, err = time.Minute, nil // the worker's default
	}
	grace := int64(30) // Kubernetes' default
	if g := p.sts.Spec.Template.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = *g
	}
	if err != nil || time.Duration(grace)*time.Second <= drain {
		t.Errorf("%s: terminationGracePeriodSeconds %d does not exceed --drain-timeout %v: the kubelet kills a draining worker (%v)", p.name, grace, drain, err)
	}
	// The cluster CA's Secret: the one --ca-file shows, or the chart's.
	caSecret := ""
	if f := p.flag1("ca-file"); f != "" {
		caSecret, _, _ = p.secretFile(f)
	}
	for _, vol := range p.sts.Spec.Template.Spec.Volumes {
		if vol.Secret == nil {
			continue
		}
		sec := m.secret(vol.Secret.SecretName)
		if vol.Secret.SecretName != caSecret && (sec == nil || sec.Type != corev1.SecretTypeTLS) {
			continue
		}
		if len(vol.Secret.Items) == 0 || slices.ContainsFunc(vol.Secret.Items, func(it corev1.KeyToPath) bool { return it.Key != "tls.crt" }) {
			t.Errorf("%s: mounts more of the CA Secret %s than its certificate: %v", p.name, vol.Secret.SecretName, vol.Secret.Items)
		}
	}
	if p.flag1("insecure") == "true" {
		return
	}
	f := p.flag1("ca-file")
	if f == "" {
		t.Errorf("%s: no --ca-file", p.name)
		return
	}
	name, key, err := p.secretFile(f)
	if err != nil || key != "tls.crt" {
		t.Errorf("%s: --ca-file=%s is not the tls.crt of a Secret (%s %s %v)", p.name, f, name, key, err)
	} else if d, ok, _ := p.secretData(m, f); ok {
		if _, err := pki.ParseCertPEM(d); err != nil {
			t.Errorf("%s: --ca-file: %v", p.name, err)
		}
	}
	if p.flag1("state-dir") == "" {
		t.Errorf("%s: no --state-dir: the worker would write its credential into the working directory", p.name)
	}
}

// TestImageLayout: the commands the chart runs are where the image puts
// them (the Dockerfile's entrypoint, and the directory deploy/image writes
// the binaries to), and each binary's main runs the cobra command this
// test parses with.
func TestImageLayout(t *testing.T) {
	dockerfile, err := os.ReadFile("../../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var entrypoint string
	for _, line := range strings.Split(string(dockerfile), "\n") {
		if rest, ok := strings.CutPrefix(line, "ENTRYPOINT "); ok {
			var args []string
			if err := json.Unmarshal([]byte(rest), &args); err != nil || len(args) == 0 {
				t.Fatalf("Dockerfile: %s: %v", line, err)
			}
			entrypoint = args[0]
		}
	}
	if _, ok := binaries[entrypoint]; !ok {
		t.Errorf("the Dockerfile's entrypoint %q is not a binary the chart runs", entrypoint)
	}
	binDir := regexp.MustCompile(`binDir\s*=\s*"([^"]+)"`)
	sources, _ := filepath.Glob("../image/*.go")
	for _, f := range sources {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if sm := binDir.FindSubmatch(b); sm != nil && string(sm[1]) != path.Dir(entrypoint) {
			t.Errorf("%s puts the binaries in %s, but the chart runs them from %s", f, sm[1], path.Dir(entrypoint))
		}
	}
	for bin, mk := range binaries {
		if path.Dir(bin) != path.Dir(entrypoint) {
			t.Errorf("%s is not beside the image's entrypoint %s", bin, entrypoint)
		}
		base := path.Base(bin)
		main, err := os.ReadFile("../../cmd/" + base + "/main.go")
		if err != nil {
			t.Fatal(err)
		}
		fn := map[string]string{"coordinator": "cli.NewCoordinatorCommand()", "worker": "cli.NewWorkerCommand()"}[base]
		if !strings.Contains(string(main), fn) {
			t.Errorf("cmd/%s/main.go does not run %s", base, fn)
		}
		if mk() == nil {
			t.Errorf("%s: no command", bin)
		}
	}
}
