package caapp_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/app/caapp"
)

// TestTaintAndRevokeCommands: ca taint and ca revoke refuse bad input
// naming what is wrong, revoke refuses an untainted authority, and taint
// of the current intermediate is recorded in the state.
func TestTaintAndRevokeCommands(t *testing.T) {
	ca := startCA(t)
	cfgPath := filepath.Join(t.TempDir(), "ca.yaml")
	text := strings.Replace(standaloneConfig, "directory: DIR", "directory: "+ca.dir, 1)
	if err := os.WriteFile(cfgPath, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string) {
		var out, errOut bytes.Buffer
		code := caapp.Main(args, &out, &errOut)
		return code, out.String() + errOut.String()
	}
	for _, tc := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"taint_without_authority", []string{"taint", "--config", cfgPath}, "--authority is required"},
		{"taint_without_config", []string{"taint", "--authority", "root"}, "--config is required"},
		{"taint_bad_role", []string{"taint", "--config", cfgPath, "--authority", "leaf"}, `--authority: must be root or intermediate, got "leaf"`},
		{"taint_unknown_serial", []string{"taint", "--config", cfgPath, "--authority", "intermediate", "--serial", "dead"}, `no intermediate with serial "dead"`},
		{"revoke_bad_role", []string{"revoke", "--config", cfgPath, "--authority", "leaf"}, `--authority: must be root or intermediate`},
		{"revoke_untainted_root", []string{"revoke", "--config", cfgPath, "--authority", "root"}, "not tainted"},
		{"revoke_untainted_intermediate", []string{"revoke", "--config", cfgPath, "--authority", "intermediate"}, "not tainted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, out := run(tc.args...)
			if code == 0 || !strings.Contains(out, tc.wantErr) {
				t.Fatalf("exit %d, output %q; want failure containing %q", code, out, tc.wantErr)
			}
		})
	}
	code, out := run("taint", "--config", cfgPath, "--authority", "intermediate")
	if code != 0 || !strings.Contains(out, "intermediate") || !strings.Contains(out, "tainted") {
		t.Fatalf("taint: exit %d, output %q", code, out)
	}
	// The intermediate still signs until the CA replaced it, so it cannot
	// be revoked yet.
	if code, out := run("revoke", "--config", cfgPath, "--authority", "intermediate", "--socket", "/nonexistent/status.sock"); code == 0 {
		t.Fatalf("revoke before the CA moved off the intermediate or without a live-leaf count succeeded: %q", out)
	}
}
