package deploytest

import (
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
)

// These checks catch what breaks silently between the code, the rules and
// the docs: unknown metric names, recording rules used but not recorded,
// unbalanced expressions, missing runbooks, a job label the PodMonitors do
// not produce. promtool checks and unit-tests the rules themselves
// (TestPromtoolRules); the API server checks the objects' shape
// (TestServerSideDryRun).

type prometheusRule struct {
	Spec struct {
		Groups []struct {
			Name  string `json:"name"`
			Rules []struct {
				Record      string            `json:"record"`
				Alert       string            `json:"alert"`
				Expr        string            `json:"expr"`
				For         string            `json:"for"`
				Labels      map[string]string `json:"labels"`
				Annotations map[string]string `json:"annotations"`
			} `json:"rules"`
		} `json:"groups"`
	} `json:"spec"`
}

type podMonitor struct {
	Spec struct {
		JobLabel          string `json:"jobLabel"`
		NamespaceSelector struct {
			MatchNames []string `json:"matchNames"`
		} `json:"namespaceSelector"`
		Selector struct {
			MatchLabels map[string]string `json:"matchLabels"`
		} `json:"selector"`
		PodMetricsEndpoints []struct {
			Port string `json:"port"`
			Path string `json:"path"`
		} `json:"podMetricsEndpoints"`
	} `json:"spec"`
}

var (
	metricRE   = regexp.MustCompile(`\bmayfly_[a-z0-9_]+`)
	recordedRE = regexp.MustCompile(`\bmayfly:[a-z0-9_:]+`)
	// jobRE finds the job a rule selects: job="mayfly-agent".
	jobRE = regexp.MustCompile(`\bjob="([^"]+)"`)
)

// registeredMetrics are the mayfly_* metric names in the non-test Go sources
// (Opts.Name and prometheus.NewDesc).
func registeredMetrics(t *testing.T) map[string]bool {
	t.Helper()
	root := repoRoot(t)
	names := map[string]bool{}
	re := regexp.MustCompile(`(?:Name:|NewDesc\()\s*"(mayfly_[a-z0-9_]+)"`)
	for _, dir := range []string{"internal", "pkg", "cmd"} {
		err := filepath.WalkDir(filepath.Join(root, dir), func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			raw, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, m := range re.FindAllStringSubmatch(string(raw), -1) {
				names[m[1]] = true
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if len(names) < 8 {
		t.Fatalf("found only %d metrics in the sources: %v", len(names), names)
	}
	return names
}

// checkMetricNames reports mayfly_* series in expr that no code exports.
func checkMetricNames(t *testing.T, where, expr string, known map[string]bool) {
	t.Helper()
	for _, m := range metricRE.FindAllString(expr, -1) {
		base := m
		for _, suffix := range []string{"_bucket", "_count", "_sum"} {
			if b, ok := strings.CutSuffix(m, suffix); ok && known[b] {
				base = b
			}
		}
		if !known[base] {
			t.Errorf("%s: %s is not a metric mayfly exports", where, m)
		}
	}
}

// checkRecorded reports mayfly:* series in expr that no rule records.
func checkRecorded(t *testing.T, where, expr string, recorded map[string]bool) {
	t.Helper()
	for _, m := range recordedRE.FindAllString(expr, -1) {
		if !recorded[m] {
			t.Errorf("%s: %s is not recorded by a rule in prometheusrule.yaml", where, m)
		}
	}
}

// balanced reports whether (), {}, [] and double quotes pair up.
func balanced(expr string) bool {
	var stack []rune
	inQuote := false
	pairs := map[rune]rune{')': '(', '}': '{', ']': '['}
	for _, r := range expr {
		switch {
		case r == '"':
			inQuote = !inQuote
		case inQuote:
		case r == '(' || r == '{' || r == '[':
			stack = append(stack, r)
		case pairs[r] != 0:
			if len(stack) == 0 || stack[len(stack)-1] != pairs[r] {
				return false
			}
			stack = stack[:len(stack)-1]
		}
	}
	return len(stack) == 0 && !inQuote
}

func TestBalanced(t *testing.T) {
	for expr, want := range map[string]bool{
		`increase(a{result="failure"}[15m]) > 3`: true,
		`min by (role) (a{x="("}) - time()`:      true,
		`increase(a{result="failure"}[15m) > 3`:  false,
		`a{x="y}`:                                false,
		`(a))`:                                   false,
	} {
		if got := balanced(expr); got != want {
			t.Errorf("balanced(%q) = %v, want %v", expr, got, want)
		}
	}
}

// TestMonitoringRules checks deploy/k8s/monitoring: the alerts the runbook
// (docs/metrics.md) documents, over metrics the code exports, and scrape
// configs that match the pods they scrape.
func TestMonitoringRules(t *testing.T) {
	objs := render(t, "monitoring")
	known := registeredMetrics(t)
	doc, err := os.ReadFile(filepath.Join(repoRoot(t), "docs", "metrics.md"))
	if err != nil {
		t.Fatal(err)
	}
	docs := string(doc)
	for m := range known {
		if !strings.Contains(docs, "`"+m) {
			t.Errorf("docs/metrics.md does not document %s", m)
		}
	}

	var pr prometheusRule
	convertLoose(t, find(t, objs, "PrometheusRule", "mayfly"), &pr)
	type alertWant struct {
		expr   string // substring of the expression
		for_   string // minimum "for", "" for none
		maxFor string // maximum "for", "" for any
	}
	want := map[string]alertWant{
		"MayflyCertificateRenewalOverdue": {"mayfly:certificate_renewal_overdue == 1", "5m", ""},
		// A third of a 30 min certificate is 10 min: "for" must not eat it.
		"MayflyCertificateExpiringSoon": {"mayfly:certificate_remaining_ratio < 1/3", "", "1m"},
		"MayflyCADown":                  {`absent(up{job="mayfly-ca"} == 1)`, "5m", ""},
		"MayflyAgentDown":               {`up{job="mayfly-agent"} == 0`, "5m", ""},
		"MayflyAgentMissing":            {`kube_daemonset_status_desired_number_scheduled{daemonset="mayfly-agent"}`, "10m", ""},
		"MayflyCANotReady":              {"mayfly_ca_ready == 0", "5m", ""},
		"MayflyIntermediateExpiring":    {`mayfly_ca_authority_expiry_timestamp_seconds{role="intermediate"`, "", ""},
		"MayflyRootExpiring":            {`mayfly_ca_authority_expiry_timestamp_seconds{role="root"`, "", ""},
		"MayflyAgentsOnOldBundle":       {"mayfly_ca_agents_with_current_bundle < mayfly_ca_agents_connected", "30m", ""},
		"MayflyRotationFailures":        {`increase(mayfly_agent_rotations_total{result="failure"}[15m]) > 3`, "", ""},
		"MayflyCAUnreachable":           {"mayfly_agent_ca_reachable == 0", "10m", ""},
		"MayflyRootAdoptionPending":     {"mayfly_ca_root_adoption_pending_nodes) > 0", "30m", ""},
		"MayflyCARotationFailing":       {"mayfly_ca_rotation_consecutive_failures) > 0", "15m", ""},
	}
	// Recording rules first: alerts and panels may use what they record.
	recorded := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Record == "" {
				continue
			}
			where := g.Name + "/" + r.Record
			recorded[r.Record] = true
			if !strings.HasPrefix(r.Record, "mayfly:") || r.Alert != "" {
				t.Errorf("%s: a recording rule's name starts with mayfly: and it has no alert", where)
			}
			if !balanced(r.Expr) {
				t.Errorf("%s: unbalanced expression %q", where, r.Expr)
			}
			checkMetricNames(t, where, r.Expr, known)
			if !strings.Contains(docs, "`"+r.Record+"`") {
				t.Errorf("docs/metrics.md does not document %s", r.Record)
			}
		}
	}
	jobs := map[string]bool{}
	seen := map[string]bool{}
	for _, g := range pr.Spec.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				for _, m := range jobRE.FindAllStringSubmatch(r.Expr, -1) {
					jobs[m[1]] = true
				}
				continue
			}
			where := g.Name + "/" + r.Alert
			seen[r.Alert] = true
			for _, m := range jobRE.FindAllStringSubmatch(r.Expr, -1) {
				jobs[m[1]] = true
			}
			checkRecorded(t, where, r.Expr, recorded)
			w, ok := want[r.Alert]
			if !ok {
				t.Errorf("%s: alert not in this test's list; add it here and to docs/metrics.md", where)
			}
			if !strings.Contains(r.Expr, w.expr) {
				t.Errorf("%s: expr %q does not contain %q", where, r.Expr, w.expr)
			}
			if !balanced(r.Expr) {
				t.Errorf("%s: unbalanced expression %q", where, r.Expr)
			}
			checkMetricNames(t, where, r.Expr, known)
			if r.For != "" {
				d, err := time.ParseDuration(r.For)
				if err != nil {
					t.Errorf("%s: for %q: %v", where, r.For, err)
				}
				if w.for_ != "" {
					if min, _ := time.ParseDuration(w.for_); d < min {
						t.Errorf("%s: for %s, want at least %s", where, r.For, w.for_)
					}
				}
				if w.maxFor != "" {
					if max, _ := time.ParseDuration(w.maxFor); d > max {
						t.Errorf("%s: for %s, want at most %s", where, r.For, w.maxFor)
					}
				}
			} else if w.for_ != "" {
				t.Errorf("%s: no for, want %s", where, w.for_)
			}
			if s := r.Labels["severity"]; s != "warning" && s != "critical" {
				t.Errorf("%s: severity %q, want warning or critical", where, s)
			}
			for _, k := range []string{"summary", "description", "runbook_url"} {
				if r.Annotations[k] == "" {
					t.Errorf("%s: no %s annotation", where, k)
				}
			}
			anchor := strings.ToLower(r.Alert)
			if !strings.HasSuffix(r.Annotations["runbook_url"], "docs/metrics.md#"+anchor) {
				t.Errorf("%s: runbook_url %q does not point to docs/metrics.md#%s", where, r.Annotations["runbook_url"], anchor)
			}
			if !strings.Contains(docs, "### "+r.Alert+"\n") {
				t.Errorf("%s: docs/metrics.md has no section ### %s", where, r.Alert)
			}
		}
	}
	for name := range want {
		if !seen[name] {
			t.Errorf("alert %s is missing", name)
		}
	}

	t.Run("dashboard", func(t *testing.T) {
		var cm corev1.ConfigMap
		convert(t, find(t, objs, "ConfigMap", "mayfly-grafana-dashboard"), &cm)
		if cm.Labels["grafana_dashboard"] != "1" {
			t.Error("the dashboard ConfigMap lacks the label grafana_dashboard=1")
		}
		var dash struct {
			UID    string `json:"uid"`
			Panels []struct {
				ID      int    `json:"id"`
				Title   string `json:"title"`
				Targets []struct {
					Expr string `json:"expr"`
				} `json:"targets"`
			} `json:"panels"`
		}
		if err := json.Unmarshal([]byte(cm.Data["mayfly.json"]), &dash); err != nil {
			t.Fatalf("dashboard JSON: %v", err)
		}
		ids := map[int]bool{}
		var titles []string
		for _, p := range dash.Panels {
			if ids[p.ID] {
				t.Errorf("panel id %d used twice", p.ID)
			}
			ids[p.ID] = true
			titles = append(titles, p.Title)
			if len(p.Targets) == 0 {
				t.Errorf("panel %q has no query", p.Title)
			}
			for _, q := range p.Targets {
				if !balanced(q.Expr) || q.Expr == "" {
					t.Errorf("panel %q: bad expression %q", p.Title, q.Expr)
				}
				checkMetricNames(t, "panel "+p.Title, q.Expr, known)
				checkRecorded(t, "panel "+p.Title, q.Expr, recorded)
			}
		}
		for _, w := range []string{"min remaining", "SVID expiry", "Issuance rate by result", "Sign latency p99", "Authority expiry", "current trust bundle", "lifetime left", "overdue"} {
			if !slices.ContainsFunc(titles, func(s string) bool { return strings.Contains(s, w) }) {
				t.Errorf("no panel about %q in %q", w, titles)
			}
		}
	})

	t.Run("podmonitors", func(t *testing.T) {
		install := render(t, ".")
		var caDeploy appsv1.Deployment
		convert(t, find(t, install, "Deployment", "mayfly-ca"), &caDeploy)
		var ds appsv1.DaemonSet
		convert(t, find(t, install, "DaemonSet", "mayfly-agent"), &ds)
		for name, tmpl := range map[string]corev1.PodTemplateSpec{"mayfly-ca": caDeploy.Spec.Template, "mayfly-agent": ds.Spec.Template} {
			var pm podMonitor
			convertLoose(t, find(t, objs, "PodMonitor", name), &pm)
			if !selects(pm.Spec.Selector.MatchLabels, tmpl.Labels) || !slices.Equal(pm.Spec.NamespaceSelector.MatchNames, []string{namespace}) {
				t.Errorf("PodMonitor %s does not select the %s pods in %s", name, name, namespace)
			}
			if len(pm.Spec.PodMetricsEndpoints) != 1 {
				t.Fatalf("PodMonitor %s: want one endpoint", name)
			}
			ep := pm.Spec.PodMetricsEndpoints[0]
			found := false
			for _, c := range tmpl.Spec.Containers {
				found = found || containerPort(c, ep.Port) != 0
			}
			if !found || ep.Path != "/metrics" {
				t.Errorf("PodMonitor %s scrapes port %q path %s; the pods have no such port or serve /metrics", name, ep.Port, ep.Path)
			}
			// The down/absent alerts select job="<pods' jobLabel value>".
			job := tmpl.Labels[pm.Spec.JobLabel]
			if pm.Spec.JobLabel == "" || job != name {
				t.Errorf("PodMonitor %s: jobLabel %q gives job %q, want %q (the alerts select on it)", name, pm.Spec.JobLabel, job, name)
			}
			delete(jobs, job)
		}
		for job := range jobs {
			t.Errorf("a rule selects job=%q, which no PodMonitor produces", job)
		}
	})
}
