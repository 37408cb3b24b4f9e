package policy_test

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/policy"
)

func TestJWTRules(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	web := spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	ok := func() policy.JWTRequest {
		return policy.JWTRequest{ID: web, Audience: []string{"api"}, TTL: policy.DefaultJWTTTL}
	}
	for _, tc := range []struct {
		name     string
		mod      func(*policy.JWTRequest)
		wantRule string
		wantText string
	}{
		{name: "allows a 5m token for one audience", mod: func(*policy.JWTRequest) {}},
		{name: "allows an hour", mod: func(r *policy.JWTRequest) { r.TTL = time.Hour }},
		{name: "refuses more than an hour", mod: func(r *policy.JWTRequest) { r.TTL = time.Hour + time.Second }, wantRule: policy.RuleJWTTTL, wantText: "above the maximum 1h0m0s"},
		{name: "refuses below a minute", mod: func(r *policy.JWTRequest) { r.TTL = time.Second }, wantRule: policy.RuleJWTTTL, wantText: "below the minimum"},
		{name: "refuses no audience", mod: func(r *policy.JWTRequest) { r.Audience = nil }, wantRule: policy.RuleJWTAudience, wantText: "audience is required"},
		{name: "refuses 17 audiences", mod: func(r *policy.JWTRequest) { r.Audience = strings.Split(strings.Repeat("a,", 16)+"a", ",") }, wantRule: policy.RuleJWTAudience, wantText: "17 audiences"},
		{name: "refuses an empty audience", mod: func(r *policy.JWTRequest) { r.Audience = []string{"api", ""} }, wantRule: policy.RuleJWTAudience, wantText: "audience[1]"},
		{name: "refuses a 257-byte audience", mod: func(r *policy.JWTRequest) { r.Audience = []string{strings.Repeat("a", 257)} }, wantRule: policy.RuleJWTAudience, wantText: "got 257"},
		{name: "refuses a reserved ID", mod: func(r *policy.JWTRequest) { r.ID = spiffeid.RequireFromPath(td, "/mayfly/ca") }, wantRule: policy.RuleReservedID},
		{name: "refuses a non-Kubernetes ID shape", mod: func(r *policy.JWTRequest) { r.ID = spiffeid.RequireFromPath(td, "/web") }, wantRule: policy.RuleIDShape},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := ok()
			tc.mod(&r)
			err := policy.CheckJWT(policy.JWTRules(policy.JWTLimits{KubernetesIDs: true}), &r)
			if tc.wantRule == "" {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if policy.RuleOf(err) != tc.wantRule || !strings.Contains(err.Error(), tc.wantText) || policy.ClassOf(err) == policy.ClassInternal {
				t.Fatalf("err %v (rule %q), want rule %q containing %q", err, policy.RuleOf(err), tc.wantRule, tc.wantText)
			}
		})
	}
}
