package agent_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
)

func TestWriteDir(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	root := "/var/lib/mayfly/certs"
	seen := map[string]string{}
	for _, p := range []string{"/demo/a-b", "/demo/a/b", "/demo/a_b", "/demo-a/b", "/demo/a.b", "/demo/..data", "/demo/a/b/c"} {
		id, err := spiffeid.FromPath(td, p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		dir := agent.WriteDir(root, id)
		if want := root + p; dir != want {
			t.Errorf("WriteDir(%s) = %s, want %s", id, dir, want)
		}
		if !strings.HasPrefix(dir, root+string(filepath.Separator)) || filepath.Clean(dir) != dir {
			t.Errorf("WriteDir(%s) = %s: not a clean path under %s", id, dir, root)
		}
		if prev, ok := seen[dir]; ok {
			t.Errorf("%s and %s both write to %s", prev, id, dir)
		}
		seen[dir] = id.String()
	}
}

func TestCheckWriteDirs(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	regs := func(paths ...string) []workloadattest.Registration {
		out := make([]workloadattest.Registration, len(paths))
		for i, p := range paths {
			out[i].SPIFFEID = spiffeid.RequireFromPath(td, p)
			out[i].ID = out[i].SPIFFEID.String()
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		regs  []workloadattest.Registration
		wants []string // substrings of the error; none: no error
	}{
		{"dash and slash get different directories", regs("/demo/a-b", "/demo/a/b"), nil},
		{"one ID in two registrations shares its directory", regs("/demo/web", "/demo/db", "/demo/web"), nil},
		{"siblings with a common prefix string", regs("/demo/a", "/demo/ab", "/demo/a-b/c"), nil},
		{"no registrations", nil, nil},
		{"a directory inside another", regs("/demo/x", "/demo/a", "/demo/a/b"),
			[]string{"registrations[1] (spiffe://example.org/demo/a)", "registrations[2] (spiffe://example.org/demo/a/b)", "demo/a/b", "inside"}},
		{"an ancestor listed after its descendant", regs("/demo/a/b/c", "/demo/a"),
			[]string{"registrations[1] (spiffe://example.org/demo/a)", "registrations[0] (spiffe://example.org/demo/a/b/c)"}},
		{"a segment longer than a file name", regs("/demo/" + strings.Repeat("x", 256)),
			[]string{"registrations[0]", "256 bytes exceeds the 255"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			err := agent.CheckWriteDirs("/var/lib/mayfly/certs", tc.regs)
			if len(tc.wants) == 0 {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
		})
	}
}

func TestCheckWriteDirsWithoutWriteDir(t *testing.T) {
	t.Parallel()
	td := spiffeid.RequireTrustDomainFromString("example.org")
	regs := []workloadattest.Registration{{SPIFFEID: spiffeid.RequireFromPath(td, "/a")}, {SPIFFEID: spiffeid.RequireFromPath(td, "/a/b")}}
	if err := agent.CheckWriteDirs("", regs); err != nil {
		t.Fatalf("no writeDir, nothing can overlap: %v", err)
	}
	if err := agent.CheckWriteDirs("/certs", regs); err == nil {
		t.Fatal("with a writeDir, /a and /a/b overlap")
	}
}
