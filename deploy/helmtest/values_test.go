package helmtest

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/fake"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/lint"
	"helm.sh/helm/v3/pkg/lint/support"
)

// TestLint lints the chart as `helm lint --strict` does, for every case:
// a warning fails.
func TestLint(t *testing.T) {
	kube := &chartutil.KubeVersion{Version: "v1.33.0", Major: "1", Minor: "33"}
	for _, c := range valuesCases(t) {
		t.Run(c.name, func(t *testing.T) {
			l := lint.AllWithKubeVersion(chartDir, c.values, namespace, kube)
			for _, msg := range l.Messages {
				if msg.Severity >= support.WarningSev {
					t.Error(msg.Error())
				} else {
					t.Log(msg.Error())
				}
			}
		})
	}
}

// TestSchemaRejects: values.schema.json refuses a wrong type and an
// unknown key at every level, naming it.
func TestSchemaRejects(t *testing.T) {
	for _, tc := range []struct {
		values string
		want   []string // in the error
	}{
		{`coordinator: {replicas: three}`, []string{"/coordinator/replicas", "integer"}},
		{`worker: {replicas: -1}`, []string{"/worker/replicas"}},
		{`worker: {gpu: {enabled: "yes"}}`, []string{"/worker/gpu/enabled", "boolean"}},
		{`tls: {enabled: 1}`, []string{"/tls/enabled", "boolean"}},
		{`coordinator: {port: 70000}`, []string{"/coordinator/port"}},
		{`coordinator: {etcdElectionTimeout: 5}`, []string{"/coordinator/etcdElectionTimeout"}},
		{`worker: {leaseTTL: five seconds}`, []string{"/worker/leaseTTL"}},
		{`worker: {resources: {limits: {cpu: lots}}}`, []string{"/worker/resources/limits/cpu"}},
		{`checkpoints: {persistence: {accessMode: ReadWriteOncePod}}`, []string{"/checkpoints/persistence/accessMode"}},
		{`worker: {device: cuda}`, []string{"/worker/device"}},
		{`replicaCount: 3`, []string{"replicaCount"}},
		{`worker: {gpuCount: 2}`, []string{"gpuCount"}},
		{`coordinator: {service: {port: 80}}`, []string{"/coordinator/service", "port"}},
		{`objectStore: {bucket: b, pathstyle: true}`, []string{"pathstyle"}},
		{`podSecurityContext: {runAsUSer: 0}`, []string{"runAsUSer"}},
		{`worker: {tolerations: [{key: a, efect: NoSchedule}]}`, []string{"efect"}},
		{`networkPolicy: {apiFrom: [{podselector: {}}]}`, []string{"podselector"}},
	} {
		_, err := render("rm", v(tc.values), nil)
		if err == nil {
			t.Errorf("%s: accepted", tc.values)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: the error does not name %q:\n%v", tc.values, w, err)
			}
		}
	}
}

// TestTemplateRefusals: combinations the schema cannot express fail the
// install with a reason.
func TestTemplateRefusals(t *testing.T) {
	for _, tc := range []struct{ values, want string }{
		{`coordinator: {replicas: 2}`, "odd number"},
		{`coordinator: {replicas: 3, etcdEndpoints: [http://etcd:2379]}`, "natsURL"},
		{`objectStore: {accessKeyID: k}`, "secretAccessKey"},
		{`coordinator: {etcdTLS: {secret: etcd-ca}}`, "etcdEndpoints"},
		{`checkpoints: {persistence: {enabled: false}}`, "is on no volume"},
		{`coordinator: {natsTLS: {secret: nats-ca}}`, "natsURL"},
	} {
		_, err := render("rm", v(tc.values), nil)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err %v, want one saying %q", tc.values, err, tc.want)
		}
	}
}

// cluster answers the chart's lookups from a fake API server.
type cluster struct{ dynamic.Interface }

func (c cluster) GetClientFor(apiVersion, kind string) (dynamic.NamespaceableResourceInterface, bool, error) {
	gv, err := schema.ParseGroupVersion(apiVersion)
	if err != nil || kind != "Secret" {
		return nil, false, fmt.Errorf("lookup of %s %s: the chart looks up Secrets only", apiVersion, kind)
	}
	return c.Resource(gv.WithResource("secrets")), true, nil
}

// TestUpgradeKeepsSecrets: an upgrade (lookup finds the Secrets) keeps
// the CA and the join token and restarts no pod; a fresh install makes new
// ones; deleting the token Secret and upgrading makes a new token and
// restarts the pods (their checksum annotation changes).
func TestUpgradeKeepsSecrets(t *testing.T) {
	first := renderCase(t, "rm", valuesCase{values: map[string]any{}})
	if len(first.secrets) != 2 {
		t.Fatalf("a default install makes %d Secrets, want 2 (the CA and the join token)", len(first.secrets))
	}
	upgrade := func(keep func(*corev1.Secret) bool) *manifests {
		t.Helper()
		var objs []runtime.Object
		for _, s := range first.secrets {
			if keep(s) {
				c := s.DeepCopy()
				c.Namespace = namespace
				objs = append(objs, c)
			}
		}
		scheme := runtime.NewScheme()
		if err := corev1.AddToScheme(scheme); err != nil {
			t.Fatal(err)
		}
		files, err := render("rm", map[string]any{}, cluster{fake.NewSimpleDynamicClient(scheme, objs...)})
		if err != nil {
			t.Fatal(err)
		}
		m, err := decode(files)
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	checksums := func(m *manifests) []string {
		var out []string
		for _, s := range m.statefulSets {
			sum := s.Spec.Template.Annotations["checksum/ringmaster-secrets"]
			if sum == "" {
				t.Errorf("%s: no checksum annotation of the Secrets it reads", s.Name)
			}
			out = append(out, sum)
		}
		return out
	}
	same := upgrade(func(*corev1.Secret) bool { return true })
	fresh := renderCase(t, "rm", valuesCase{values: map[string]any{}})
	for _, s := range first.secrets {
		u, f := same.secret(s.Name), fresh.secret(s.Name)
		if u == nil || f == nil {
			t.Fatalf("Secret %s is not rendered again", s.Name)
		}
		if !reflect.DeepEqual(u.Data, s.Data) {
			t.Errorf("Secret %s: the upgrade changed it", s.Name)
		}
		if reflect.DeepEqual(f.Data, s.Data) {
			t.Errorf("Secret %s: two installs made the same one", s.Name)
		}
	}
	if got, want := checksums(same), checksums(first); !reflect.DeepEqual(got, want) {
		t.Errorf("an upgrade that changes nothing restarts pods: checksums %v, were %v", got, want)
	}
	if c := checksums(first); len(c) != 2 || c[0] != c[1] {
		t.Errorf("the coordinators and workers see different Secrets: %v", c)
	}
	rotated := upgrade(func(s *corev1.Secret) bool { return s.Data["token"] == nil })
	for _, s := range first.secrets {
		r := rotated.secret(s.Name)
		if changed := !reflect.DeepEqual(r.Data, s.Data); changed != (s.Data["token"] != nil) {
			t.Errorf("after deleting the token Secret and upgrading, Secret %s changed: %v", s.Name, changed)
		}
	}
	if got, was := checksums(rotated), checksums(first); got[0] == was[0] || got[1] == was[1] {
		t.Errorf("a new join token restarts no pods: checksums %v, were %v", got, was)
	}
}

// TestSchemaIsClosed: every object in values.schema.json says which keys
// it takes (additionalProperties false, or a schema for its values), so
// that a misspelt key fails, except the Kubernetes objects passed through
// whole, which the API server checks.
func TestSchemaIsClosed(t *testing.T) {
	b, err := os.ReadFile(filepath.Join(chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	passedThrough := map[string]bool{
		"/definitions/affinity/properties/nodeAffinity":    true,
		"/definitions/affinity/properties/podAffinity":     true,
		"/definitions/affinity/properties/podAntiAffinity": true,
		"/properties/extraVolumes/items":                   true,
	}
	var walk func(path string, s map[string]any)
	walk = func(path string, s map[string]any) {
		if s["type"] == "object" {
			if _, ok := s["additionalProperties"]; !ok && !passedThrough[path] {
				t.Errorf("%s: an object without additionalProperties takes any key", path)
			}
		}
		for _, k := range []string{"properties", "definitions"} {
			if props, ok := s[k].(map[string]any); ok {
				for name, sub := range props {
					if m, ok := sub.(map[string]any); ok {
						walk(path+"/"+k+"/"+name, m)
					}
				}
			}
		}
		for _, k := range []string{"items", "additionalProperties"} {
			if m, ok := s[k].(map[string]any); ok {
				walk(path+"/"+k, m)
			}
		}
	}
	walk("", schema)
}
