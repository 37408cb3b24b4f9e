package caapp_test

import (
	"fmt"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
)

// TestStandaloneWithRemoteUpstream runs the CA with a step-ca and a cfssl
// upstream, each served in-process over TLS: the trust bundle is the
// upstream's root, and an agent SVID from the CA verifies against it.
func TestStandaloneWithRemoteUpstream(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		run  func(t *testing.T) (yaml string, root *upstreamtest.CA)
	}{
		{"step-ca JWK", func(t *testing.T) (string, *upstreamtest.CA) {
			s := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{})
			return fmt.Sprintf("  stepCA:\n    url: %s\n    rootFile: %s\n    provisioner: %s\n    jwk:\n      keyFile: %s\n",
				s.Config.URL, s.Config.RootFile, s.Config.Provisioner, s.Config.JWK.KeyFile), s.Root
		}},
		{"cfssl", func(t *testing.T) (string, *upstreamtest.CA) {
			c := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{})
			return fmt.Sprintf("  cfssl:\n    url: %s\n    caFile: %s\n    authKeyFile: %s\n    bundleFile: %s\n",
				c.Config.URL, c.Config.CAFile, c.Config.AuthKeyFile, c.Config.BundleFile), c.Root
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			yaml, root := tc.run(t)
			r := serveCA(t, caConfigHead+"nodes:\n  - name: host-a\n    allowedIDs: [\"spiffe://example.org/demo/*\"]\nupstream:\n"+yaml)
			if len(r.bundle) != 1 || !r.bundle[0].Equal(root.Cert) {
				t.Fatalf("trust bundle has %d certificates, want only the upstream root", len(r.bundle))
			}
			r.attest(t, "host-a")
		})
	}
}
