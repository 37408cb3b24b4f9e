package issuer_test

import (
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// TestAttestAgentVersionSkew: over real gRPC, a CA of v0.3.0 attests
// agents of its own minor and one behind, and refuses the others with
// FailedPrecondition and a message that says which side to upgrade, before
// the credential is looked at.
func TestAttestAgentVersionSkew(t *testing.T) {
	h := newHarness(t, func(c *issuer.Config) { c.Version = "v0.3.0" })
	client := h.dial(nil)
	for _, tc := range []struct {
		agent   string
		code    codes.Code
		wantMsg string
	}{
		{"v0.3.2", codes.OK, ""},
		{"v0.2.0", codes.OK, ""},
		{"", codes.OK, ""}, // agents from before the report
		{"v0.1.9", codes.FailedPrecondition, "upgrade the agents"},
		{"v0.4.0", codes.FailedPrecondition, "upgrade the CA first"},
		{"v1.3.0", codes.FailedPrecondition, "major versions differ"},
		{"nightly", codes.FailedPrecondition, "not a release version"},
	} {
		t.Run(tc.agent, func(t *testing.T) {
			_, err := client.AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
				Csr: testca.CSR(t, testca.Key(t)), AgentVersion: tc.agent,
				Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "good-node-" + strings.ReplaceAll(tc.agent, ".", "-")},
			})
			if got := status.Code(err); got != tc.code {
				t.Fatalf("AttestAgent from %q: %v, want %s", tc.agent, err, tc.code)
			}
			if msg := status.Convert(err).Message(); tc.wantMsg != "" && (!strings.Contains(msg, tc.wantMsg) || !strings.Contains(msg, "v0.3.0")) {
				t.Errorf("message %q does not name the CA's version and %q", msg, tc.wantMsg)
			}
		})
	}
}
