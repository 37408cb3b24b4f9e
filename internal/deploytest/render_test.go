package deploytest

import (
	"bytes"
	"errors"
	"io"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/mayfly-pki/mayfly/internal/test/prereq"
)

// kustomizeVersion is the version the Makefile installs (docs/building.md).
const kustomizeVersion = "v5.8.2"

// repoRoot is the module root, found from this file's location.
func repoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the test source file")
	}
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// deployDir is deploy/k8s/<sub>.
func deployDir(t testing.TB, sub string) string {
	t.Helper()
	return filepath.Join(repoRoot(t), "deploy", "k8s", sub)
}

// kustomizeBinary returns $MAYFLY_KUSTOMIZE. Without it the test is skipped
// with the way to get it, except in CI (CI=true), where that is a failure.
func kustomizeBinary(t testing.TB) string {
	t.Helper()
	return pinnedTool(t, "MAYFLY_KUSTOMIZE", "`make test`",
		"sigs.k8s.io/kustomize/kustomize/v5@"+kustomizeVersion, "kustomize")
}

// pinnedTool returns the path in $env. Without it the test is skipped with
// the way to get the tool (run, or go install of pkg into ~/.cache/mayfly/bin
// as bin), except in CI (CI=true), where that is a failure.
func pinnedTool(t testing.TB, env, run, pkg, bin string) string {
	t.Helper()
	return prereq.Env(t, env, "run "+run+", or "+
		"`GOBIN=$HOME/.cache/mayfly/bin go install "+pkg+
		"` and export "+env+"=$HOME/.cache/mayfly/bin/"+bin)
}

// render runs `kustomize build` on deploy/k8s/<sub> and decodes the objects.
func render(t testing.TB, sub string) []*unstructured.Unstructured {
	t.Helper()
	bin := kustomizeBinary(t)
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, "build", deployDir(t, sub))
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("kustomize build deploy/k8s/%s: %v\n%s", sub, err, stderr.String())
	}
	objs, err := decodeObjects(stdout.Bytes())
	if err != nil {
		t.Fatalf("decoding the output of kustomize build deploy/k8s/%s: %v", sub, err)
	}
	if len(objs) == 0 {
		t.Fatalf("kustomize build deploy/k8s/%s rendered no objects", sub)
	}
	return objs
}

// decodeObjects splits a multi-document YAML stream into objects.
func decodeObjects(raw []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var out []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		out = append(out, &unstructured.Unstructured{Object: m})
	}
}

// find returns the object of that kind and name, failing the test if it is
// missing.
func find(t testing.TB, objs []*unstructured.Unstructured, kind, name string) *unstructured.Unstructured {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == kind && o.GetName() == name {
			return o
		}
	}
	t.Fatalf("no %s %q in the rendered manifests", kind, name)
	return nil
}

// convert turns an unstructured object into a typed one, rejecting fields
// the type does not have.
func convert(t testing.TB, o *unstructured.Unstructured, into any) {
	t.Helper()
	decode(t, o, into, yaml.UnmarshalStrict)
}

// convertLoose is convert for kinds this test models partially (the
// Prometheus Operator's): unknown fields are ignored.
func convertLoose(t testing.TB, o *unstructured.Unstructured, into any) {
	t.Helper()
	decode(t, o, into, yaml.Unmarshal)
}

func decode(t testing.TB, o *unstructured.Unstructured, into any, unmarshal func([]byte, any, ...yaml.JSONOpt) error) {
	t.Helper()
	raw, err := yaml.Marshal(o.Object)
	if err != nil {
		t.Fatalf("%s %s: %v", o.GetKind(), o.GetName(), err)
	}
	if err := unmarshal(raw, into); err != nil {
		t.Fatalf("%s %s does not decode: %v", o.GetKind(), o.GetName(), err)
	}
}
