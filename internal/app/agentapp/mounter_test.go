package agentapp_test

import (
	"bytes"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
)

// TestMounterFlags: agent mounter refuses to start without the paths that
// bound what it may mount, naming the flag.
func TestMounterFlags(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no_socket", []string{"mounter", "--source", "/run/mayfly"}, "--socket"},
		{"relative_socket", []string{"mounter", "--socket", "m.sock", "--source", "/run/mayfly"}, "--socket"},
		{"no_source", []string{"mounter", "--socket", "/run/m/m.sock"}, "--source"},
		{"root_kubelet_dir", []string{"mounter", "--socket", "/run/m/m.sock", "--source", "/run/mayfly", "--kubelet-dir", "/"}, "--kubelet-dir"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out bytes.Buffer
			if code := agentapp.Main(tc.args, &out, &out); code == 0 || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("exit %d, want a refusal naming %s:\n%s", code, tc.want, out.String())
			}
		})
	}
}
