package deploytest

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// promtoolVersion is the version the Makefile installs (docs/building.md).
const promtoolVersion = "v0.316.0"

// rulesFile is the name the rule unit tests load (their rule_files).
const rulesFile = "mayfly.rules.yaml"

// promtoolBinary returns $MAYFLY_PROMTOOL. Without it the test is skipped
// with the way to get it, except in CI (CI=true), where that is a failure.
func promtoolBinary(t testing.TB) string {
	t.Helper()
	return pinnedTool(t, "MAYFLY_PROMTOOL", "`make test-rules` (or `make test`)",
		"github.com/prometheus/prometheus/cmd/promtool@"+promtoolVersion, "promtool")
}

// ruleGroups extracts spec.groups of a PrometheusRule manifest as a
// Prometheus rule file ({groups: [...]}).
func ruleGroups(manifest []byte) ([]byte, error) {
	var obj struct {
		Kind string `json:"kind"`
		Spec struct {
			Groups []any `json:"groups"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(manifest, &obj); err != nil {
		return nil, err
	}
	if obj.Kind != "PrometheusRule" || len(obj.Spec.Groups) == 0 {
		return nil, errNoGroups
	}
	return yaml.Marshal(map[string]any{"groups": obj.Spec.Groups})
}

var errNoGroups = errors.New("not a PrometheusRule with spec.groups")

func TestRuleGroups(t *testing.T) {
	out, err := ruleGroups([]byte("kind: PrometheusRule\nspec:\n  groups:\n    - name: g\n      rules:\n        - record: a:b\n          expr: up\n"))
	if err != nil {
		t.Fatal(err)
	}
	if want := "groups:\n- name: g\n  rules:\n  - expr: up\n    record: a:b\n"; string(out) != want {
		t.Errorf("got %q, want %q", out, want)
	}
	for name, in := range map[string]string{
		"other kind": "kind: ConfigMap\nspec:\n  groups: [{name: g}]\n",
		"no groups":  "kind: PrometheusRule\nspec: {}\n",
		"not yaml":   "kind: [\n",
	} {
		if _, err := ruleGroups([]byte(in)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

// TestPromtoolRules runs `promtool check rules` over the rules of
// deploy/k8s/monitoring/prometheusrule.yaml and `promtool test rules` over
// the unit tests in deploy/k8s/monitoring/tests.
func TestPromtoolRules(t *testing.T) {
	bin := promtoolBinary(t)
	mon := deployDir(t, "monitoring")
	manifest, err := os.ReadFile(filepath.Join(mon, "prometheusrule.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ruleGroups(manifest)
	if err != nil {
		t.Fatalf("prometheusrule.yaml: %v", err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, rulesFile), rules, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(t *testing.T, args ...string) {
		t.Helper()
		var out bytes.Buffer
		cmd := exec.Command(bin, args...)
		cmd.Dir = dir
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			t.Fatalf("promtool %s: %v\n%s", strings.Join(args, " "), err, out.String())
		}
		t.Logf("promtool %s:\n%s", strings.Join(args, " "), out.String())
	}
	t.Run("check", func(t *testing.T) { run(t, "check", "rules", "--lint=all", "--lint-fatal", rulesFile) })

	tests, err := filepath.Glob(filepath.Join(mon, "tests", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(tests) == 0 {
		t.Fatal("no rule unit tests in deploy/k8s/monitoring/tests")
	}
	for _, src := range tests {
		name := filepath.Base(src)
		raw, err := os.ReadFile(src)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
		t.Run(strings.TrimSuffix(name, ".yaml"), func(t *testing.T) { run(t, "test", "rules", name) })
	}
}
