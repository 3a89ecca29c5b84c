package helmtest

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/ringmaster/ringmaster/internal/pki"
)

// TestRender renders every case for every release name and checks the
// objects, their references to each other, and the containers' command
// lines.
func TestRender(t *testing.T) {
	for _, rel := range releases[1:] {
		if len(rel) != 53 {
			t.Fatalf("release name %q has %d characters; the long ones must have 53, Helm's limit", rel, len(rel))
		}
	}
	for _, c := range valuesCases(t) {
		for _, rel := range releases {
			t.Run(c.name+"/"+rel, func(t *testing.T) {
				m := renderCase(t, rel, c)
				checkNames(t, m)
				checkLabels(t, m)
				checkWorkloads(t, c, m)
				checkNetworkPolicies(t, c, m)
				checkDisruptionBudgets(t, c, m)
				checkKept(t, m)
				checkSecrets(t, m)
				checkCommandLines(t, c, m)
				checkNotes(t, m)
			})
		}
	}
}

// checkNotes: NOTES.txt says how to reach the coordinator, and the CLI
// accepts the commands it shows.
func checkNotes(t *testing.T, m *manifests) {
	t.Helper()
	for _, svc := range m.services {
		if svc.Spec.ClusterIP != corev1.ClusterIPNone && svc.Spec.Selector["app.kubernetes.io/component"] == "coordinator" &&
			!strings.Contains(m.notes, "port-forward svc/"+svc.Name) {
			t.Errorf("NOTES.txt does not say how to reach the coordinator through %s:\n%s", svc.Name, m.notes)
		}
	}
	n := 0
	for _, line := range strings.Split(m.notes, "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "coordinator" {
			continue
		}
		n++
		for i := range f {
			f[i] = strings.NewReplacer("<job-id>", "some-job").Replace(f[i])
		}
		if _, err := parse(append([]string{"/usr/local/bin/coordinator"}, f[1:]...)); err != nil {
			t.Errorf("NOTES.txt: %q: %v", line, err)
		}
	}
	if n == 0 {
		t.Errorf("NOTES.txt shows no CLI command:\n%s", m.notes)
	}
}

// checkNames checks names against Kubernetes' limits: DNS subdomains for
// objects, DNS labels for Services, pods, containers, volumes and port
// names, and 52 characters for a StatefulSet (its pods'
// controller-revision-hash label is the name and an 11-character suffix,
// at most 63).
func checkNames(t *testing.T, m *manifests) {
	t.Helper()
	seen := map[string]bool{}
	for _, o := range m.objects {
		if errs := validation.IsDNS1123Subdomain(o.meta.Name); len(errs) > 0 {
			t.Errorf("%s %q: %v", o.kind, o.meta.Name, errs)
		}
		if k := o.kind + "/" + o.meta.Name; seen[k] {
			t.Errorf("%s %q is rendered twice", o.kind, o.meta.Name)
		} else {
			seen[k] = true
		}
	}
	for _, s := range m.services {
		if errs := validation.IsDNS1035Label(s.Name); len(errs) > 0 {
			t.Errorf("Service %q: %v", s.Name, errs)
		}
	}
	for _, s := range m.statefulSets {
		if len(s.Name) > 52 {
			t.Errorf("StatefulSet %q has %d characters; at most 52 (its pods' controller-revision-hash label adds 11)", s.Name, len(s.Name))
		}
		for i := range replicas(s) {
			pod := fmt.Sprintf("%s-%d", s.Name, i)
			if errs := validation.IsDNS1123Label(pod); len(errs) > 0 {
				t.Errorf("pod %q: %v", pod, errs)
			}
			for _, ct := range s.Spec.VolumeClaimTemplates {
				claim := fmt.Sprintf("%s-%s", ct.Name, pod)
				if errs := validation.IsDNS1123Subdomain(claim); len(errs) > 0 {
					t.Errorf("claim %q: %v", claim, errs)
				}
			}
		}
		spec := s.Spec.Template.Spec
		for _, c := range spec.Containers {
			if errs := validation.IsDNS1123Label(c.Name); len(errs) > 0 {
				t.Errorf("%s: container %q: %v", s.Name, c.Name, errs)
			}
			for _, p := range c.Ports {
				if errs := validation.IsValidPortName(p.Name); len(errs) > 0 {
					t.Errorf("%s/%s: port name %q: %v", s.Name, c.Name, p.Name, errs)
				}
			}
		}
		for _, vol := range spec.Volumes {
			if errs := validation.IsDNS1123Label(vol.Name); len(errs) > 0 {
				t.Errorf("%s: volume %q: %v", s.Name, vol.Name, errs)
			}
		}
	}
	for _, s := range m.secrets {
		for k := range s.Data {
			if errs := validation.IsConfigMapKey(k); len(errs) > 0 {
				t.Errorf("Secret %s: key %q: %v", s.Name, k, errs)
			}
		}
	}
}

// checkLabels checks every label and annotation key and label value.
func checkLabels(t *testing.T, m *manifests) {
	t.Helper()
	check := func(what string, meta *metav1.ObjectMeta) {
		for k, v := range meta.Labels {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				t.Errorf("%s: label %q: %v", what, k, errs)
			}
			if errs := validation.IsValidLabelValue(v); len(errs) > 0 {
				t.Errorf("%s: label %s=%q: %v", what, k, v, errs)
			}
		}
		for k := range meta.Annotations {
			if errs := validation.IsQualifiedName(k); len(errs) > 0 {
				t.Errorf("%s: annotation %q: %v", what, k, errs)
			}
		}
	}
	for _, o := range m.objects {
		check(o.kind+" "+o.meta.Name, o.meta)
	}
	for _, s := range m.statefulSets {
		check("pods of "+s.Name, &s.Spec.Template.ObjectMeta)
	}
}

// checkWorkloads checks that selectors select, that Services reach
// declared ports, and each pod spec.
func checkWorkloads(t *testing.T, c valuesCase, m *manifests) {
	t.Helper()
	for _, s := range m.statefulSets {
		sel, err := metav1.LabelSelectorAsSelector(s.Spec.Selector)
		if err != nil || sel.Empty() {
			t.Errorf("StatefulSet %s: selector %v: %v", s.Name, s.Spec.Selector, err)
			continue
		}
		if !sel.Matches(labels.Set(s.Spec.Template.Labels)) {
			t.Errorf("StatefulSet %s: selector %s does not match its pods' labels %v", s.Name, sel, s.Spec.Template.Labels)
		}
		for _, o := range m.statefulSets {
			if o != s && sel.Matches(labels.Set(o.Spec.Template.Labels)) {
				t.Errorf("StatefulSet %s: selector %s also matches the pods of %s", s.Name, sel, o.Name)
			}
		}
		gov := m.service(s.Spec.ServiceName)
		if gov == nil || gov.Spec.ClusterIP != corev1.ClusterIPNone {
			t.Errorf("StatefulSet %s: serviceName %q is not a headless Service of the release", s.Name, s.Spec.ServiceName)
		} else if !labels.SelectorFromSet(gov.Spec.Selector).Matches(labels.Set(s.Spec.Template.Labels)) {
			t.Errorf("StatefulSet %s: its Service %s does not select its pods", s.Name, gov.Name)
		}
		checkPod(t, c, m, s)
	}
	for _, svc := range m.services {
		if len(svc.Spec.Selector) == 0 {
			t.Errorf("Service %s selects no pods", svc.Name)
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		var targets []*appsv1.StatefulSet
		for _, s := range m.statefulSets {
			if sel.Matches(labels.Set(s.Spec.Template.Labels)) {
				targets = append(targets, s)
			}
		}
		if len(targets) == 0 {
			t.Errorf("Service %s: selector %s matches no pods", svc.Name, sel)
		}
		for _, p := range svc.Spec.Ports {
			target := p.TargetPort
			if target.Type == intstr.Int && target.IntVal == 0 {
				target = intstr.FromInt32(p.Port)
			}
			for _, s := range targets {
				if containerPort(&s.Spec.Template.Spec, target) == nil {
					t.Errorf("Service %s port %s: target %s is no container port of %s", svc.Name, p.Name, target.String(), s.Name)
				}
			}
		}
	}
}

// replicas is a StatefulSet's number of pods.
func replicas(s *appsv1.StatefulSet) int {
	if s.Spec.Replicas == nil {
		return 1
	}
	return int(*s.Spec.Replicas)
}

// containerPort finds a port of a pod by name or number.
func containerPort(pod *corev1.PodSpec, p intstr.IntOrString) *corev1.ContainerPort {
	for _, c := range pod.Containers {
		for i, cp := range c.Ports {
			if (p.Type == intstr.String && cp.Name == p.StrVal) || (p.Type == intstr.Int && cp.ContainerPort == p.IntVal) {
				return &c.Ports[i]
			}
		}
	}
	return nil
}

// externalSecrets are the Secrets the values name that the chart does not
// make: their keys are the operator's business.
func externalSecrets(c valuesCase) map[string]bool {
	out := map[string]bool{}
	for _, path := range [][]string{
		{"tls", "existingCASecret"}, {"tls", "existingJoinTokenSecret"}, {"objectStore", "credentialsSecret"},
		{"coordinator", "etcdTLS", "secret"}, {"coordinator", "natsTLS", "secret"},
	} {
		if s, ok := lookupValue(c.values, path...).(string); ok && s != "" {
			out[s] = true
		}
	}
	return out
}

// externalClaims are the claims of extraVolumes: the operator's.
func externalClaims(c valuesCase) map[string]bool {
	out := map[string]bool{}
	vols, _ := lookupValue(c.values, "extraVolumes").([]any)
	for _, vol := range vols {
		if name, ok := lookupValue(vol.(map[string]any), "persistentVolumeClaim", "claimName").(string); ok {
			out[name] = true
		}
	}
	return out
}

// lookupValue reads a nested value.
func lookupValue(values map[string]any, path ...string) any {
	var cur any = values
	for _, p := range path {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	return cur
}

// checkPod checks a pod template: non-root, locked down, probes on
// declared ports, and volumes, claims and Secrets that exist and are used.
func checkPod(t *testing.T, c valuesCase, m *manifests, s *appsv1.StatefulSet) {
	t.Helper()
	spec := &s.Spec.Template.Spec
	name := s.Name
	sc := spec.SecurityContext
	switch {
	case sc == nil:
		t.Errorf("%s: no pod securityContext", name)
	default:
		if sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
			t.Errorf("%s: pods do not set runAsNonRoot", name)
		}
		if sc.RunAsUser == nil || *sc.RunAsUser == 0 {
			t.Errorf("%s: pods run as root (runAsUser %v)", name, sc.RunAsUser)
		}
		if sc.FSGroup == nil || *sc.FSGroup == 0 {
			t.Errorf("%s: no fsGroup: the non-root user cannot write a fresh volume", name)
		}
		if sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Errorf("%s: seccomp profile %v, want RuntimeDefault", name, sc.SeccompProfile)
		}
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Errorf("%s: mounts a ServiceAccount token it does not use", name)
	}
	if len(m.serviceAccounts) > 0 && !slices.ContainsFunc(m.serviceAccounts, func(a *corev1.ServiceAccount) bool { return a.Name == spec.ServiceAccountName }) {
		t.Errorf("%s: serviceAccountName %q is not the release's ServiceAccount", name, spec.ServiceAccountName)
	}

	external := externalSecrets(c)
	secretKey := func(what, secret, key string) {
		if external[secret] {
			return
		}
		sec := m.secret(secret)
		if sec == nil {
			t.Errorf("%s: %s: Secret %q is neither rendered nor named in the values", name, what, secret)
		} else if _, ok := sec.Data[key]; !ok && key != "" {
			t.Errorf("%s: %s: Secret %q has no key %q", name, what, secret, key)
		}
	}
	volumes := map[string]*corev1.Volume{}
	for i, vol := range spec.Volumes {
		volumes[vol.Name] = &spec.Volumes[i]
		switch {
		case vol.PersistentVolumeClaim != nil:
			if m.pvc(vol.PersistentVolumeClaim.ClaimName) == nil && !externalClaims(c)[vol.PersistentVolumeClaim.ClaimName] {
				t.Errorf("%s: volume %s: claim %q is not rendered", name, vol.Name, vol.PersistentVolumeClaim.ClaimName)
			}
		case vol.Secret != nil:
			secretKey("volume "+vol.Name, vol.Secret.SecretName, "")
			for _, it := range vol.Secret.Items {
				secretKey("volume "+vol.Name, vol.Secret.SecretName, it.Key)
			}
		case vol.EmptyDir != nil:
		default:
			t.Errorf("%s: volume %s of a kind this test does not know", name, vol.Name)
		}
	}
	claims := map[string]bool{}
	for _, ct := range s.Spec.VolumeClaimTemplates {
		claims[ct.Name] = true
		if volumes[ct.Name] != nil {
			t.Errorf("%s: %s is both a volume and a claim template", name, ct.Name)
		}
	}
	used := map[string]bool{}
	for _, ct := range spec.Containers {
		cname := name + "/" + ct.Name
		csc := ct.SecurityContext
		if csc == nil {
			t.Errorf("%s: no container securityContext", cname)
		} else {
			if csc.AllowPrivilegeEscalation == nil || *csc.AllowPrivilegeEscalation {
				t.Errorf("%s: allows privilege escalation", cname)
			}
			if csc.ReadOnlyRootFilesystem == nil || !*csc.ReadOnlyRootFilesystem {
				t.Errorf("%s: root filesystem is writable", cname)
			}
			if csc.Capabilities == nil || !slices.Contains(csc.Capabilities.Drop, "ALL") || len(csc.Capabilities.Add) > 0 {
				t.Errorf("%s: capabilities %v, want drop ALL", cname, csc.Capabilities)
			}
			if csc.RunAsUser != nil && *csc.RunAsUser == 0 || csc.Privileged != nil && *csc.Privileged {
				t.Errorf("%s: runs as root or privileged", cname)
			}
		}
		if ct.Image == "" || !strings.Contains(ct.Image, ":") {
			t.Errorf("%s: image %q has no tag", cname, ct.Image)
		}
		for _, r := range []corev1.ResourceName{corev1.ResourceCPU, corev1.ResourceMemory} {
			if _, ok := ct.Resources.Limits[r]; !ok {
				t.Errorf("%s: no %s limit", cname, r)
			}
		}
		ports := map[string]bool{}
		for _, p := range ct.Ports {
			for _, k := range []string{p.Name, fmt.Sprint(p.ContainerPort)} {
				if ports[k] {
					t.Errorf("%s: port %s declared twice", cname, k)
				}
				ports[k] = true
			}
		}
		for kind, probe := range map[string]*corev1.Probe{"readiness": ct.ReadinessProbe, "liveness": ct.LivenessProbe} {
			want := map[string]string{"readiness": "/readyz", "liveness": "/healthz"}[kind]
			switch {
			case probe == nil || probe.HTTPGet == nil:
				t.Errorf("%s: no HTTP %s probe", cname, kind)
			case probe.HTTPGet.Path != want:
				t.Errorf("%s: %s probe on %s, want %s", cname, kind, probe.HTTPGet.Path, want)
			case containerPort(&corev1.PodSpec{Containers: []corev1.Container{ct}}, probe.HTTPGet.Port) == nil:
				t.Errorf("%s: %s probe on port %s, which the container does not declare", cname, kind, probe.HTTPGet.Port.String())
			}
		}
		paths := map[string]bool{}
		for _, vm := range ct.VolumeMounts {
			used[vm.Name] = true
			if volumes[vm.Name] == nil && !claims[vm.Name] {
				t.Errorf("%s: mounts %q, which is neither a volume nor a claim template", cname, vm.Name)
			}
			if paths[vm.MountPath] || !filepath.IsAbs(vm.MountPath) || vm.MountPath == "/" {
				t.Errorf("%s: mount path %q is taken, relative or the root", cname, vm.MountPath)
			}
			paths[vm.MountPath] = true
		}
		if !paths["/tmp"] {
			t.Errorf("%s: the root filesystem is read-only and nothing is mounted at /tmp", cname)
		}
		for _, e := range ct.Env {
			if e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil {
				secretKey("env "+e.Name, e.ValueFrom.SecretKeyRef.Name, e.ValueFrom.SecretKeyRef.Key)
			}
		}
		for _, ef := range ct.EnvFrom {
			if ef.SecretRef != nil {
				secretKey("envFrom", ef.SecretRef.Name, "")
			}
		}
	}
	for v := range volumes {
		if !used[v] {
			t.Errorf("%s: volume %s is mounted nowhere", name, v)
		}
	}
	for cl := range claims {
		if !used[cl] {
			t.Errorf("%s: claim template %s is mounted nowhere", name, cl)
		}
	}
	if s.Spec.Template.Labels["app.kubernetes.io/component"] == "worker" && lookupValue(c.values, "worker", "gpu", "enabled") == true {
		res := corev1.ResourceName(lookupValue(c.values, "worker", "gpu", "resourceName").(string))
		for _, ct := range spec.Containers {
			if q, ok := ct.Resources.Limits[res]; !ok || q.IsZero() {
				t.Errorf("%s: GPU workers without a %s limit", name, res)
			}
		}
	}
}

// Pods of a rendering, as a NetworkPolicy sees them.
var otherPod = labels.Set{"app": "something-else"}

// allowed says whether a pod with these labels in the release's namespace
// may open a connection to port of the pods that policies select
// (isolated: some policy selects them; allowed: some rule lets it in).
func allowed(m *manifests, target *appsv1.StatefulSet, port int32, from labels.Set) bool {
	isolated := false
	for _, np := range m.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || !sel.Matches(labels.Set(target.Spec.Template.Labels)) || !slices.Contains(np.Spec.PolicyTypes, networkingv1.PolicyTypeIngress) {
			continue
		}
		isolated = true
		for _, rule := range np.Spec.Ingress {
			if portAllowed(&target.Spec.Template.Spec, rule.Ports, port) && peerAllowed(rule.From, from) {
				return true
			}
		}
	}
	return !isolated
}

func portAllowed(pod *corev1.PodSpec, ports []networkingv1.NetworkPolicyPort, port int32) bool {
	if len(ports) == 0 {
		return true
	}
	for _, p := range ports {
		if p.Protocol != nil && *p.Protocol != corev1.ProtocolTCP {
			continue
		}
		if p.Port == nil {
			return true
		}
		if cp := containerPort(pod, *p.Port); cp != nil && cp.ContainerPort == port {
			return true
		}
		if p.Port.Type == intstr.Int && p.Port.IntVal == port {
			return true
		}
	}
	return false
}

func peerAllowed(peers []networkingv1.NetworkPolicyPeer, from labels.Set) bool {
	if len(peers) == 0 {
		return true
	}
	ns := labels.Set{"kubernetes.io/metadata.name": namespace}
	for _, p := range peers {
		if p.IPBlock != nil {
			continue
		}
		if p.NamespaceSelector != nil {
			sel, err := metav1.LabelSelectorAsSelector(p.NamespaceSelector)
			if err != nil || !sel.Matches(ns) {
				continue
			}
		}
		if p.PodSelector == nil {
			return true
		}
		if sel, err := metav1.LabelSelectorAsSelector(p.PodSelector); err == nil && sel.Matches(from) {
			return true
		}
	}
	return false
}

// checkNetworkPolicies checks who may reach which port, port by port.
func checkNetworkPolicies(t *testing.T, c valuesCase, m *manifests) {
	t.Helper()
	if lookupValue(c.values, "networkPolicy", "enabled") == false {
		if len(m.netpols) > 0 {
			t.Errorf("networkPolicy.enabled is false but %d NetworkPolicies are rendered", len(m.netpols))
		}
		return
	}
	if len(m.netpols) == 0 {
		t.Fatal("no NetworkPolicy")
	}
	for _, np := range m.netpols {
		sel, err := metav1.LabelSelectorAsSelector(&np.Spec.PodSelector)
		if err != nil || sel.Empty() || !slices.ContainsFunc(m.statefulSets, func(s *appsv1.StatefulSet) bool { return sel.Matches(labels.Set(s.Spec.Template.Labels)) }) {
			t.Errorf("NetworkPolicy %s: podSelector %v selects none of the release's pods", np.Name, np.Spec.PodSelector)
		}
	}
	coord, work := m.component(t, "coordinator"), m.component(t, "worker")
	cl, wl := labels.Set(coord.Spec.Template.Labels), labels.Set(work.Spec.Template.Labels)
	port := func(s *appsv1.StatefulSet, name string) int32 {
		if p := containerPort(&s.Spec.Template.Spec, intstr.FromString(name)); p != nil {
			return p.ContainerPort
		}
		return 0
	}
	apiFromNamespace := lookupValue(c.values, "networkPolicy", "apiFromNamespace") != false
	type want struct {
		to   *appsv1.StatefulSet
		port string
		from labels.Set
		who  string
		ok   bool
	}
	wants := []want{
		{coord, "api", wl, "a worker", true},
		{coord, "api", cl, "a coordinator", true},
		{coord, "api", otherPod, "another pod of the namespace", apiFromNamespace},
		{coord, "health", otherPod, "anyone (the kubelet)", true},
		{coord, "etcd", wl, "a worker", true},
		{coord, "etcd", otherPod, "another pod", false},
		{coord, "nats", wl, "a worker", true},
		{coord, "nats", otherPod, "another pod", false},
		{coord, "etcd-peer", cl, "a coordinator", true},
		{coord, "etcd-peer", wl, "a worker", false},
		{coord, "nats-cluster", cl, "a coordinator", true},
		{coord, "nats-cluster", wl, "a worker", false},
		{work, "ring", wl, "a worker", true},
		{work, "ring", cl, "a coordinator", false},
		{work, "ring", otherPod, "another pod", false},
		{work, "health", otherPod, "anyone (the kubelet)", true},
	}
	for _, w := range wants {
		p := port(w.to, w.port)
		if p == 0 {
			continue // not served in this configuration (external etcd or NATS, one replica)
		}
		if got := allowed(m, w.to, p, w.from); got != w.ok {
			t.Errorf("%s may reach %s port %s (%d): %v, want %v", w.who, w.to.Name, w.port, p, got, w.ok)
		}
	}
}

// checkDisruptionBudgets: each StatefulSet has one budget (unless the
// values turn it off) that selects exactly its pods.
func checkDisruptionBudgets(t *testing.T, c valuesCase, m *manifests) {
	t.Helper()
	for _, s := range m.statefulSets {
		comp := s.Spec.Template.Labels["app.kubernetes.io/component"]
		var found int
		for _, b := range m.pdbs {
			sel, err := metav1.LabelSelectorAsSelector(b.Spec.Selector)
			if err != nil {
				t.Errorf("PodDisruptionBudget %s: %v", b.Name, err)
				continue
			}
			if sel.Matches(labels.Set(s.Spec.Template.Labels)) {
				found++
				if b.Spec.MaxUnavailable == nil || b.Spec.MinAvailable != nil {
					t.Errorf("PodDisruptionBudget %s: want maxUnavailable only", b.Name)
				}
			}
		}
		want := 1
		if lookupValue(c.values, comp, "podDisruptionBudget", "enabled") == false {
			want = 0
		}
		if found != want {
			t.Errorf("%s: %d PodDisruptionBudgets select its pods, want %d", s.Name, found, want)
		}
	}
}

// checkKept: what holds state outlives `helm uninstall`.
func checkKept(t *testing.T, m *manifests) {
	t.Helper()
	keep := func(meta *metav1.ObjectMeta) bool { return meta.Annotations["helm.sh/resource-policy"] == "keep" }
	for _, p := range m.pvcs {
		if !keep(&p.ObjectMeta) {
			t.Errorf("PersistentVolumeClaim %s holds checkpoints and is not kept at uninstall", p.Name)
		}
	}
	for _, s := range m.secrets {
		if (s.Type == corev1.SecretTypeTLS || s.Data["token"] != nil) && !keep(&s.ObjectMeta) {
			t.Errorf("Secret %s (the CA or the join token) is not kept at uninstall", s.Name)
		}
	}
	for _, s := range m.statefulSets {
		if len(s.Spec.VolumeClaimTemplates) == 0 {
			continue
		}
		p := s.Spec.PersistentVolumeClaimRetentionPolicy
		if p == nil || p.WhenDeleted != appsv1.RetainPersistentVolumeClaimRetentionPolicyType || p.WhenScaled != appsv1.RetainPersistentVolumeClaimRetentionPolicyType {
			t.Errorf("StatefulSet %s: its claims are not retained: %v", s.Name, p)
		}
	}
}

// checkSecrets: the CA the chart makes is one the coordinator loads, and
// the join token one it parses.
func checkSecrets(t *testing.T, m *manifests) {
	t.Helper()
	for _, s := range m.secrets {
		if s.Type == corev1.SecretTypeTLS {
			dir := t.TempDir()
			for _, k := range []string{"tls.crt", "tls.key"} {
				if err := os.WriteFile(filepath.Join(dir, k), s.Data[k], 0o600); err != nil {
					t.Fatal(err)
				}
			}
			ca, err := pki.LoadCADir(dir)
			if err != nil {
				t.Errorf("Secret %s: the coordinator cannot load it as its CA: %v", s.Name, err)
			} else if _, err := ca.Issue(pki.Identity{Role: pki.RoleWorker, Name: "w-0"}, nil, 0); err != nil {
				t.Errorf("Secret %s: the CA cannot issue: %v", s.Name, err)
			}
		}
		if tok, ok := s.Data["token"]; ok {
			if _, err := pki.ParseToken(string(tok)); err != nil {
				t.Errorf("Secret %s: token %q: %v", s.Name, tok, err)
			}
		}
	}
}
