package helmtest

import (
	"fmt"
	"maps"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kjson "sigs.k8s.io/json"
	"sigs.k8s.io/yaml"
)

const (
	chartDir  = "../helm/ringmaster"
	namespace = "ml"
)

// releases are the release names every case renders with: a short one,
// and two of 53 characters (Helm's limit), one containing the chart's
// name (the full name is then the release name) and one not (the chart's
// name is appended, then cut at 63).
var releases = []string{
	"rm",
	"a-release-name-of-fifty-three-characters-for-testings",
	"ringmaster-release-name-with-fifty-three-characters-x",
}

// valuesCase is one set of values the chart is rendered with.
type valuesCase struct {
	name   string
	values map[string]any
}

// valuesCases are the default values, every values file in examples/,
// and variants that reach the templates' other branches.
func valuesCases(t testing.TB) []valuesCase {
	t.Helper()
	cases := []valuesCase{{name: "default", values: map[string]any{}}}
	files, err := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("examples/: %d values files, want at least 3 (external etcd and S3, 3 coordinators, GPU workers)", len(files))
	}
	for _, f := range files {
		v, err := chartutil.ReadValuesFile(f)
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		cases = append(cases, valuesCase{name: "examples/" + filepath.Base(f), values: v.AsMap()})
	}
	return append(cases,
		valuesCase{name: "tls disabled", values: v(`
tls: {enabled: false}
networkPolicy: {enabled: false}`)},
		valuesCase{name: "one coordinator", values: v(`
coordinator: {replicas: 1}
worker: {updateStrategy: OnDelete, podDisruptionBudget: {enabled: false}}
checkpoints: {store: "file:///shared/ckpt", persistence: {enabled: false}}
extraVolumes: [{name: shared, persistentVolumeClaim: {claimName: team-nfs}}]
extraVolumeMounts: [{name: shared, mountPath: /shared}]`)},
		valuesCase{name: "external etcd and NATS over TLS", values: v(`
coordinator:
  replicas: 2
  etcdEndpoints: [https://etcd-0.etcd.db.svc:2379, https://etcd-1.etcd.db.svc:2379]
  etcdTLS: {secret: etcd-client, clientCert: true}
  natsURL: tls://nats.db.svc:4222
  natsTLS: {secret: nats-ca}`)},
		valuesCase{name: "existing secrets", values: v(`
tls: {existingCASecret: my-ca, existingJoinTokenSecret: my-token, extraHosts: [ringmaster.example.com, 203.0.113.7]}
objectStore: {credentialsSecret: s3-keys, bucket: ckpt, region: eu-west-1}
serviceAccount: {create: false, name: ml-runner}`)},
		valuesCase{name: "keys, load balancer, restricted egress", values: v(`
fullnameOverride: rmx
coordinator:
  service: {type: LoadBalancer, annotations: {service.beta.kubernetes.io/aws-load-balancer-internal: "true"}, loadBalancerSourceRanges: [10.0.0.0/8]}
  podDisruptionBudget: {enabled: false}
  affinity: {podAntiAffinity: {preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, podAffinityTerm: {topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {app.kubernetes.io/component: coordinator}}}}]}}
serviceAccount: {annotations: {eks.amazonaws.com/role-arn: "arn:aws:iam::123456789012:role/ringmaster"}}
objectStore: {endpoint: "minio.storage:9000", tls: false, pathStyle: true, bucket: ckpt, prefix: /runs/a/, accessKeyID: minio, secretAccessKey: minio123}
policy: {s3Endpoints: ["minio.storage:9000"], datasetRoots: [/data/text]}
extraVolumes: [{name: datasets, persistentVolumeClaim: {claimName: datasets, readOnly: true}}]
extraVolumeMounts: [{name: datasets, mountPath: /data, readOnly: true}]
networkPolicy:
  apiFromNamespace: false
  apiFrom: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: ci}}}, {ipBlock: {cidr: 10.0.0.0/8}}]
  egress: {restrict: true, to: [{to: [{ipBlock: {cidr: 10.20.0.0/16}}], ports: [{protocol: TCP, port: 9000}]}]}`)},
	)
}

// v reads inline YAML values.
func v(s string) map[string]any {
	out, err := chartutil.ReadValues([]byte(s))
	if err != nil {
		panic(err)
	}
	return out.AsMap()
}

// render renders the chart as `helm install` would (values checked
// against the schema first), with lookups answered by clients when it is
// not nil.
func render(release string, values map[string]any, clients engine.ClientProvider) (map[string]string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return nil, err
	}
	caps := chartutil.DefaultCapabilities.Copy()
	rv, err := chartutil.ToRenderValuesWithSchemaValidation(ch, values,
		chartutil.ReleaseOptions{Name: release, Namespace: namespace, IsInstall: true}, caps, false)
	if err != nil {
		return nil, err
	}
	if clients != nil {
		return engine.RenderWithClientProvider(ch, rv, clients)
	}
	return engine.Render(ch, rv)
}

// object is any decoded manifest, for the checks that apply to all.
type object struct {
	kind   string
	source string
	meta   *metav1.ObjectMeta
}

// manifests are a rendering's objects, decoded into the Kubernetes types.
type manifests struct {
	objects         []object
	services        []*corev1.Service
	statefulSets    []*appsv1.StatefulSet
	secrets         []*corev1.Secret
	pvcs            []*corev1.PersistentVolumeClaim
	serviceAccounts []*corev1.ServiceAccount
	netpols         []*networkingv1.NetworkPolicy
	pdbs            []*policyv1.PodDisruptionBudget
	notes           string
}

// decode decodes every manifest strictly: an unknown or misspelt field, a
// field in the wrong case, or one given twice is an error, as it is to
// the API server's strict field validation.
func decode(files map[string]string) (*manifests, error) {
	m := &manifests{}
	for _, name := range slices.Sorted(maps.Keys(files)) {
		if strings.HasSuffix(name, "NOTES.txt") {
			m.notes = files[name]
			continue
		}
		docs := releaseutil.SplitManifests(files[name])
		keys := slices.Collect(maps.Keys(docs))
		sort.Sort(releaseutil.BySplitManifestsOrder(keys))
		for _, key := range keys {
			if err := m.add(name, docs[key]); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}

func (m *manifests) add(source, doc string) error {
	js, err := yaml.YAMLToJSONStrict([]byte(doc))
	if err != nil {
		return fmt.Errorf("%s: %w\n%s", source, err, doc)
	}
	if string(js) == "null" { // only comments
		return nil
	}
	var tm metav1.TypeMeta
	if err := kjson.UnmarshalCaseSensitivePreserveInts(js, &tm); err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	strict := func(into any) error {
		strictErrs, err := kjson.UnmarshalStrict(js, into)
		if err == nil && len(strictErrs) > 0 {
			err = fmt.Errorf("%v", strictErrs)
		}
		if err != nil {
			return fmt.Errorf("%s: %s %w", source, tm.Kind, err)
		}
		return nil
	}
	var meta *metav1.ObjectMeta
	switch tm.APIVersion + " " + tm.Kind {
	case "v1 Service":
		o := &corev1.Service{}
		meta, m.services = &o.ObjectMeta, append(m.services, o)
		err = strict(o)
	case "apps/v1 StatefulSet":
		o := &appsv1.StatefulSet{}
		meta, m.statefulSets = &o.ObjectMeta, append(m.statefulSets, o)
		err = strict(o)
	case "v1 Secret":
		o := &corev1.Secret{}
		meta, m.secrets = &o.ObjectMeta, append(m.secrets, o)
		err = strict(o)
	case "v1 PersistentVolumeClaim":
		o := &corev1.PersistentVolumeClaim{}
		meta, m.pvcs = &o.ObjectMeta, append(m.pvcs, o)
		err = strict(o)
	case "v1 ServiceAccount":
		o := &corev1.ServiceAccount{}
		meta, m.serviceAccounts = &o.ObjectMeta, append(m.serviceAccounts, o)
		err = strict(o)
	case "networking.k8s.io/v1 NetworkPolicy":
		o := &networkingv1.NetworkPolicy{}
		meta, m.netpols = &o.ObjectMeta, append(m.netpols, o)
		err = strict(o)
	case "policy/v1 PodDisruptionBudget":
		o := &policyv1.PodDisruptionBudget{}
		meta, m.pdbs = &o.ObjectMeta, append(m.pdbs, o)
		err = strict(o)
	default:
		return fmt.Errorf("%s: %q %q is not a kind this test decodes; add it to manifests.add", source, tm.APIVersion, tm.Kind)
	}
	if err != nil {
		return err
	}
	m.objects = append(m.objects, object{kind: tm.Kind, source: source, meta: meta})
	return nil
}

// renderCase renders and decodes one case for one release name.
func renderCase(t *testing.T, release string, c valuesCase) *manifests {
	t.Helper()
	files, err := render(release, c.values, nil)
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	m, err := decode(files)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	return m
}

// Lookups of a rendering.

func (m *manifests) secret(name string) *corev1.Secret {
	for _, s := range m.secrets {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) service(name string) *corev1.Service {
	for _, s := range m.services {
		if s.Name == name {
			return s
		}
	}
	return nil
}

func (m *manifests) pvc(name string) *corev1.PersistentVolumeClaim {
	for _, p := range m.pvcs {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// component finds the StatefulSet of a component (coordinator, worker).
func (m *manifests) component(t *testing.T, name string) *appsv1.StatefulSet {
	t.Helper()
	for _, s := range m.statefulSets {
		if s.Spec.Template.Labels["app.kubernetes.io/component"] == name {
			return s
		}
	}
	t.Fatalf("no StatefulSet of component %s", name)
	return nil
}
