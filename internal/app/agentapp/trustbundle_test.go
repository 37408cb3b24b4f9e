package agentapp_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/app/agentapp"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// TestRunRefusesBadTrustBundleFiles: the agent stops at start, naming
// server.trustBundleFile, when the file is missing, not a regular file,
// larger than a PEM bundle may be, or holds no certificate.
func TestRunRefusesBadTrustBundleFiles(t *testing.T) {
	dir := t.TempDir()
	huge := upstreamtest.WriteFile(t, dir, "huge.pem", bytes.Repeat([]byte("A"), pki.DefaultPEMMaxBytes+1))
	garbage := upstreamtest.WriteFile(t, dir, "garbage.pem", []byte("not PEM\n"))
	for _, tc := range []struct {
		name, path, want string
	}{
		{"missing", filepath.Join(dir, "absent.pem"), "server.trustBundleFile: "},
		{"directory", dir, "server.trustBundleFile: " + dir + ": a directory"},
		{"larger_than_a_bundle", huge, "server.trustBundleFile: " + huge + ": longer than "},
		{"no_certificate", garbage, "server.trustBundleFile " + garbage + ": "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := agentapp.Parse([]byte(strings.Replace(minimalStandalone, "/etc/mayfly/bundle.pem", tc.path, 1)))
			if err != nil {
				t.Fatal(err)
			}
			err = agentapp.Run(context.Background(), cfg, agentapp.Options{})
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("Run: error = %v, want it to start with %q", err, tc.want)
			}
			if tc.path == huge && !errors.Is(err, readlimit.ErrTooLarge) {
				t.Errorf("error %v does not wrap readlimit.ErrTooLarge", err)
			}
		})
	}
}
