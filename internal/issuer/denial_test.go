package issuer

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// TestStatusFor is the mapping of error classes to the codes a client sees.
func TestStatusFor(t *testing.T) {
	const secret = "dial tcp 10.0.0.7:443"
	tests := []struct {
		name        string
		err         error
		want        codes.Code
		wantDetail  bool // the message carries the error's text
		wantMessage string
	}{
		{"forbidden is permission denied", fmt.Errorf("sign: %w", policy.Deny(policy.RuleReservedID, policy.ClassForbidden, "reserved")), codes.PermissionDenied, true, "policy: rule reserved-id: reserved"},
		{"bad request is invalid argument", policy.Deny(policy.RuleTTLBounds, policy.ClassBadRequest, "ttl 48h0m0s is above the maximum 24h0m0s"), codes.InvalidArgument, true, "policy: rule ttl-bounds: ttl 48h0m0s is above the maximum 24h0m0s"},
		{"malformed CSR is invalid argument", fmt.Errorf("csr: %w", pki.ErrCSRMalformed), codes.InvalidArgument, true, "malformed CSR"},
		{"weak key is invalid argument", fmt.Errorf("sign: %w", pki.ErrWeakKey), codes.InvalidArgument, true, "weak key"},
		{"signing authority unusable now is unavailable", fmt.Errorf("sign: %w: issuer is valid from", pki.ErrAuthority), codes.Unavailable, true, "retry with backoff"},
		{"internal class is internal without detail", policy.Deny(policy.RuleKind, policy.ClassInternal, secret), codes.Internal, false, "internal error; see the CA's log"},
		{"unclassed error is internal without detail", errors.New(secret), codes.Internal, false, "internal error; see the CA's log"},
		{"a Denial keeps its code", Deny(issuerv1.Denial_NOT_FOUND, "pod gone"), codes.NotFound, true, "pod gone"},
		{"a Denial of resource exhaustion keeps its code", Deny(issuerv1.Denial_RESOURCE_EXHAUSTED, "slow down"), codes.ResourceExhausted, true, "slow down"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st := status.Convert(statusFor(tc.err))
			if st.Code() != tc.want {
				t.Fatalf("code %s, want %s", st.Code(), tc.want)
			}
			if !strings.Contains(st.Message(), tc.wantMessage) {
				t.Fatalf("message %q, want %q", st.Message(), tc.wantMessage)
			}
			if !tc.wantDetail && strings.Contains(st.Message(), secret) {
				t.Fatalf("message %q leaks the internal detail", st.Message())
			}
			// The per-item denial of SignWorkloads carries the same code.
			if got := grpcCode(DenialOf(tc.err).GetCode()); got != tc.want {
				t.Fatalf("denial code maps to %s, want %s", got, tc.want)
			}
		})
	}
}
