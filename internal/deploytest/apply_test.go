package deploytest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/mayfly-pki/mayfly/internal/test/cluster"
)

// applier applies unstructured objects with server-side apply.
type applier struct {
	dyn      dynamic.Interface
	mapper   *restmapper.DeferredDiscoveryRESTMapper
	warnings *warnings
}

// warnings collects the API server's warnings (deprecated fields, unsafe
// settings): a manifest that draws one is a finding.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) HandleWarningHeader(_ int, _ string, text string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.msgs = append(w.msgs, text)
}

func (w *warnings) take() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	m := w.msgs
	w.msgs = nil
	return m
}

func newApplier(t *testing.T, c *cluster.Cluster) *applier {
	t.Helper()
	cfg := rest.CopyConfig(c.Config)
	w := &warnings{}
	cfg.WarningHandler = w
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return &applier{
		dyn:      dyn,
		mapper:   restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(c.Client.Discovery())),
		warnings: w,
	}
}

// apply server-side applies o and returns the API server's answer; dryRun
// asks the API server to run admission and validation without persisting
// anything.
func (a *applier) apply(ctx context.Context, o *unstructured.Unstructured, dryRun bool) (*unstructured.Unstructured, error) {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if meta.IsNoMatchError(err) {
		a.mapper.Reset() // a CRD installed since the last discovery
		m, err = a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	}
	if err != nil {
		return nil, fmt.Errorf("no API for %s: %w", gvk, err)
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	opts := metav1.ApplyOptions{FieldManager: "mayfly-deploytest", Force: true}
	if dryRun {
		opts.DryRun = []string{metav1.DryRunAll}
	}
	return ri.Apply(ctx, o.GetName(), o, opts)
}

// dropped lists the fields of want that are missing from, or differ in, got:
// fields the API server silently pruned (unknown to a CRD schema) or
// dropped (behind a disabled feature gate). Fields the server added
// (defaults) are fine.
func dropped(want, got any, path string) []string {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			return []string{path}
		}
		var out []string
		for k, v := range w {
			gv, ok := g[k]
			if !ok {
				out = append(out, path+"."+k)
				continue
			}
			out = append(out, dropped(v, gv, path+"."+k)...)
		}
		return out
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return []string{path}
		}
		var out []string
		for i := range w {
			out = append(out, dropped(w[i], g[i], fmt.Sprintf("%s[%d]", path, i))...)
		}
		return out
	default:
		if !reflect.DeepEqual(jsonValue(want), jsonValue(got)) {
			return []string{fmt.Sprintf("%s (%v became %v)", path, want, got)}
		}
		return nil
	}
}

// jsonValue normalizes numbers (int64 vs float64) through JSON.
func jsonValue(v any) any {
	raw, err := json.Marshal(v)
	if err != nil {
		return v
	}
	var out any
	if err := json.Unmarshal(raw, &out); err != nil {
		return v
	}
	return out
}

// installCRDs creates the CRDs among objs for real and waits until they are
// established, so that custom resources can be applied after them.
func (a *applier) installCRDs(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	var names []string
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		if _, err := a.apply(ctx, o, false); err != nil {
			t.Fatalf("installing CRD %s: %v", o.GetName(), err)
		}
		names = append(names, o.GetName())
	}
	gvr := apiextensionsv1.SchemeGroupVersion.WithResource("customresourcedefinitions")
	for _, name := range names {
		err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			u, err := a.dyn.Resource(gvr).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			var crd apiextensionsv1.CustomResourceDefinition
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &crd); err != nil {
				return false, err
			}
			return slices.ContainsFunc(crd.Status.Conditions, func(c apiextensionsv1.CustomResourceDefinitionCondition) bool {
				return c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue
			}), nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", name, err)
		}
	}
	a.mapper.Reset()
}

// createNamespaces creates every namespace the objects live in (and the
// Namespace objects among them) for real: a dry-run cannot create objects
// in a namespace that does not exist.
func (a *applier) createNamespaces(ctx context.Context, t *testing.T, objs []*unstructured.Unstructured) {
	t.Helper()
	seen := map[string]bool{}
	for _, o := range objs {
		if o.GetKind() == "Namespace" {
			if _, err := a.apply(ctx, o, false); err != nil {
				t.Fatalf("creating Namespace %s: %v", o.GetName(), err)
			}
			seen[o.GetName()] = true
		}
	}
	for _, o := range objs {
		ns := o.GetNamespace()
		if ns == "" || seen[ns] {
			continue
		}
		seen[ns] = true
		a.createNamespace(ctx, t, ns)
	}
}

// createNamespace creates (or keeps) the namespace name for real.
func (a *applier) createNamespace(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName(name)
	if _, err := a.apply(ctx, ns, false); err != nil {
		t.Fatalf("creating namespace %s: %v", name, err)
	}
}

// dryRunApply applies o in dry-run mode and reports, naming o, an error,
// an API server warning, or a field the API server did not keep. It
// returns whether the apply itself succeeded.
func (a *applier) dryRunApply(ctx context.Context, t *testing.T, o *unstructured.Unstructured) bool {
	t.Helper()
	id := fmt.Sprintf("%s %s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
	got, err := a.apply(ctx, o, true)
	if err != nil {
		t.Errorf("dry-run apply %s: %v", id, err)
		return false
	}
	for _, w := range a.warnings.take() {
		t.Errorf("dry-run apply %s: API server warning: %s", id, w)
	}
	if d := dropped(o.Object, got.Object, ""); len(d) > 0 {
		t.Errorf("dry-run apply %s: the API server did not keep %q", id, d)
	}
	return true
}

// monitoringCRDStubs stand in for the Prometheus Operator CRDs: they accept
// any spec (x-kubernetes-preserve-unknown-fields), so the dry-run proves the
// objects are well-formed Kubernetes objects of the right kinds; their
// content is checked by TestMonitoringRules.
func monitoringCRDStubs() []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for _, k := range []struct{ kind, plural string }{{"PodMonitor", "podmonitors"}, {"PrometheusRule", "prometheusrules"}} {
		out = append(out, &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "apiextensions.k8s.io/v1",
			"kind":       "CustomResourceDefinition",
			"metadata":   map[string]any{"name": k.plural + ".monitoring.coreos.com"},
			"spec": map[string]any{
				"group": "monitoring.coreos.com",
				"scope": "Namespaced",
				"names": map[string]any{"kind": k.kind, "listKind": k.kind + "List", "plural": k.plural, "singular": toLower(k.kind)},
				"versions": []any{map[string]any{
					"name": "v1", "served": true, "storage": true,
					"schema": map[string]any{"openAPIV3Schema": map[string]any{
						"type": "object",
						"properties": map[string]any{
							"spec": map[string]any{"type": "object", "x-kubernetes-preserve-unknown-fields": true},
						},
					}},
				}},
			},
		}})
	}
	return out
}

func toLower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// TestServerSideDryRun applies every rendered object of deploy/k8s (the
// install), deploy/k8s/monitoring and deploy/k8s/examples to a real
// kube-apiserver with server-side apply in dry-run mode: schemas, defaulting,
// validation and admission run, nothing is persisted. Namespaces and CRDs
// are created for real first. The monitoring kinds get stub CRDs (see
// monitoringCRDStubs).
func TestServerSideDryRun(t *testing.T) {
	install, monitoring, examples := render(t, "."), render(t, "monitoring"), render(t, "examples")
	c := cluster.Start(t)
	ctx := context.Background()
	a := newApplier(t, c)

	all := slices.Concat(install, monitoring, examples)
	a.installCRDs(ctx, t, slices.Concat(install, monitoringCRDStubs()))
	a.createNamespaces(ctx, t, all)

	a.warnings.take() // CRD and namespace set-up
	applied := map[string]int{}
	for _, o := range all {
		if o.GetKind() == "CustomResourceDefinition" || o.GetKind() == "Namespace" {
			continue
		}
		if a.dryRunApply(ctx, t, o) {
			applied[o.GetKind()]++
		}
	}
	for _, kind := range []string{
		"Deployment", "DaemonSet", "CSIDriver", "Service", "PodDisruptionBudget", "NetworkPolicy",
		"Role", "ClusterRole", "ServiceAccount", "ConfigMap",
		"PodMonitor", "PrometheusRule", "Pod", "WorkloadCertificate", "Ingress",
	} {
		if applied[kind] == 0 {
			t.Errorf("no %s was applied", kind)
		}
	}
	t.Logf("dry-run applied: %v", applied)

	// Dry-run means nothing was stored.
	_, err := c.Client.AppsV1().Deployments(namespace).Get(ctx, "mayfly-ca", metav1.GetOptions{})
	if !apierrors.IsNotFound(err) {
		t.Errorf("the dry-run persisted Deployment mayfly-ca (err=%v)", err)
	}
}

func TestDropped(t *testing.T) {
	want := map[string]any{"spec": map[string]any{"a": int64(1), "l": []any{map[string]any{"x": "y"}}, "gone": true}}
	got := map[string]any{"spec": map[string]any{"a": float64(1), "l": []any{map[string]any{"x": "y", "default": 1}}, "added": 2}}
	if d := dropped(want, got, ""); !slices.Equal(d, []string{".spec.gone"}) {
		t.Errorf("dropped = %q, want [.spec.gone]", d)
	}
	got["spec"].(map[string]any)["l"] = []any{map[string]any{"x": "z"}}
	got["spec"].(map[string]any)["gone"] = true
	if d := dropped(want, got, ""); len(d) != 1 {
		t.Errorf("dropped = %q, want the changed list item", d)
	}
}

// delete deletes o (for real); a missing object is fine.
func (a *applier) delete(ctx context.Context, o *unstructured.Unstructured) error {
	gvk := o.GroupVersionKind()
	m, err := a.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return err
	}
	var ri dynamic.ResourceInterface = a.dyn.Resource(m.Resource)
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		ri = a.dyn.Resource(m.Resource).Namespace(o.GetNamespace())
	}
	if err := ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		return err
	}
	return nil
}
