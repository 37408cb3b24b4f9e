package caapp_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
)

func TestAgentMaxAgeConfig(t *testing.T) {
	t.Setenv("POD_NAMESPACE", "")
	for _, tc := range []struct {
		name string
		in   string
		want time.Duration
	}{
		{"standalone_default", minimalStandalone, caapp.DefaultAgentMaxAgeStandalone},
		{"kubernetes_default", "trustDomain: example.org\nkubernetes: {}\n", caapp.DefaultAgentMaxAgeKubernetes},
		{"set", minimalStandalone + "agents:\n  maxAge: 72h\n", 72 * time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := caapp.Parse([]byte(tc.in))
			if err != nil {
				t.Fatal(err)
			}
			if c.AgentMaxAge != tc.want {
				t.Fatalf("AgentMaxAge = %s, want %s", c.AgentMaxAge, tc.want)
			}
		})
	}
	for _, tc := range []struct{ name, in, want string }{
		{"below_twice_agent_ttl", minimalStandalone + "agents:\n  maxAge: 90m\n", "agents.maxAge: must be at least twice agentTTL"},
		{"negative", minimalStandalone + "agents:\n  maxAge: -1h\n", "agents.maxAge"},
		{"not_a_duration", minimalStandalone + "agents:\n  maxAge: forever\n", "parsing CA config"},
		{"unknown_field", minimalStandalone + "agents:\n  maxAgeDays: 3\n", `unknown field "maxAgeDays"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := caapp.Parse([]byte(tc.in)); err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse = %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// ca runs the ca command and returns its exit code, stdout and stderr.
func ca(args ...string) (int, string, string) {
	var out, errOut bytes.Buffer
	code := caapp.Main(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestAgentEvictCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	tok, err := hostnodes.NewJoinTokens(dir, nil).Create("host-a", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	store := eviction.FileStore{Dir: dir}

	code, out, errOut := ca("agent", "evict", "host-a", "--dir", dir)
	if code != 0 {
		t.Fatalf("evict exited %d: %s", code, errOut)
	}
	for _, want := range []string{"node host-a evicted", "until `ca agent unevict host-a`", "dropped 1 unused join token"} {
		if !strings.Contains(out, want) {
			t.Errorf("evict output %q lacks %q", out, want)
		}
	}
	if _, err := hostnodes.NewJoinTokens(dir, nil).Consume(tok); err == nil {
		t.Error("a join token of the evicted node is still usable")
	}
	st, err := os.Stat(filepath.Join(dir, eviction.File))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("eviction file mode %v (%v), want 0600", st.Mode().Perm(), err)
	}
	l, err := store.Load(context.Background())
	if err != nil || l.CheckAttest("host-a", time.Now()) == nil {
		t.Fatalf("host-a is not evicted in the store: %v %v", l, err)
	}

	// Flags before the node work too, and --until takes a duration.
	if code, _, errOut := ca("agent", "evict", "--dir", dir, "host-b", "--until", "1h"); code != 0 {
		t.Fatalf("evict --until exited %d: %s", code, errOut)
	}
	l, _ = store.Load(context.Background())
	if l.CheckAttest("host-b", time.Now()) == nil || l.CheckAttest("host-b", time.Now().Add(61*time.Minute)) != nil {
		t.Fatalf("host-b eviction %+v does not end after an hour", l["host-b"])
	}

	code, out, _ = ca("agent", "list", "--dir", dir)
	if code != 0 || !strings.Contains(out, "host-a") || !strings.Contains(out, "host-b") || !strings.Contains(out, "unevict") {
		t.Fatalf("list exited %d with %q", code, out)
	}

	if code, _, errOut := ca("agent", "unevict", "host-a", "--dir", dir); code != 0 {
		t.Fatalf("unevict exited %d: %s", code, errOut)
	}
	l, _ = store.Load(context.Background())
	if l.CheckAttest("host-a", time.Now().Add(time.Second)) != nil {
		t.Fatal("host-a may still not attest after unevict")
	}
	if l.CheckAgent("host-a", time.Now().Add(-time.Hour)) == nil {
		t.Fatal("unevict made host-a's old agent SVIDs valid again")
	}
}

func TestAgentCommandRejectsBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no_subcommand", []string{"agent"}, "usage"},
		{"unknown_subcommand", []string{"agent", "remove", "x", "--dir", dir}, `unknown subcommand "remove"`},
		{"no_node", []string{"agent", "evict", "--dir", dir}, "NODE is required"},
		{"two_nodes", []string{"agent", "evict", "a", "b", "--dir", dir}, "one NODE only"},
		{"bad_node", []string{"agent", "evict", "a/b", "--dir", dir}, `"a/b"`},
		{"no_store", []string{"agent", "evict", "a"}, "--config or --dir is required"},
		{"both_stores", []string{"agent", "evict", "a", "--dir", dir, "--config", "x.yaml"}, "set only one"},
		{"bad_until", []string{"agent", "evict", "a", "--dir", dir, "--until", "tomorrow"}, "--until"},
		{"past_until", []string{"agent", "evict", "a", "--dir", dir, "--until", "2001-01-01T00:00:00Z"}, "not in the future"},
		{"negative_until", []string{"agent", "evict", "a", "--dir", dir, "--until", "-1h"}, "not a positive duration"},
		{"unevict_unknown", []string{"agent", "unevict", "never-evicted", "--dir", dir}, "not evicted"},
		{"list_with_args", []string{"agent", "list", "x", "--dir", dir}, "no arguments"},
		{"missing_config", []string{"agent", "list", "--config", filepath.Join(dir, "missing.yaml")}, "missing.yaml"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := ca(tc.args...)
			if code == 0 || !strings.Contains(errOut, tc.want) {
				t.Fatalf("exit %d, stderr %q; want a failure containing %q", code, errOut, tc.want)
			}
		})
	}
}
