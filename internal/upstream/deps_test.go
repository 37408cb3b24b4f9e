package upstream_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestOnlyTheCABinaryCarriesTheUpstreamClients: step-ca's client brings its
// whole server (~30 MB); the agent runs on every node and must not carry
// it, nor cfssl. The CA binary does carry both.
func TestOnlyTheCABinaryCarriesTheUpstreamClients(t *testing.T) {
	deps := func(pkg string) string {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		return string(out)
	}
	heavy := []string{"github.com/smallstep/certificates", "github.com/cloudflare/cfssl", "go.step.sm/crypto"}
	agent := deps("github.com/mayfly-pki/mayfly/cmd/agent")
	for _, h := range heavy {
		if strings.Contains(agent, h) {
			t.Errorf("the agent binary imports %s", h)
		}
	}
	ca := deps("github.com/mayfly-pki/mayfly/cmd/ca")
	for _, want := range []string{"github.com/smallstep/certificates/ca", "github.com/cloudflare/cfssl/api/client", "go.step.sm/crypto/jose"} {
		if !strings.Contains(ca, want+"\n") {
			t.Errorf("the CA binary does not import %s", want)
		}
	}
}
