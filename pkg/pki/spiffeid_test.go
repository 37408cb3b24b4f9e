package pki_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestParseID(t *testing.T) {
	longTD := strings.Repeat("a", 255)
	tests := []struct {
		name    string
		in      string
		wantErr string // substring of the error; "" means valid
	}{
		{"accepts_workload_id", "spiffe://example.org/ns/default/sa/web", ""},
		{"accepts_trust_domain_id", "spiffe://example.org", ""},
		{"accepts_all_allowed_characters", "spiffe://a-b_c.0/A-Z.a_z-09", ""},
		{"accepts_trust_domain_of_255_bytes", "spiffe://" + longTD + "/x", ""},
		{"accepts_id_of_2048_bytes", "spiffe://example.org/" + strings.Repeat("a", 2048-len("spiffe://example.org/")), ""},
		{"rejects_empty", "", "empty"},
		{"rejects_other_scheme", "https://example.org/x", "must start with"},
		{"rejects_uppercase_scheme", "SPIFFE://example.org/x", "lowercase"},
		{"rejects_missing_slashes", "spiffe:example.org/x", "must start with"},
		{"rejects_missing_trust_domain", "spiffe:///x", "missing trust domain"},
		{"rejects_scheme_only", "spiffe://", "missing trust domain"},
		{"rejects_uppercase_trust_domain", "spiffe://Example.org/x", "lowercase"},
		{"rejects_port", "spiffe://example.org:443/x", "port"},
		{"rejects_userinfo", "spiffe://user@example.org/x", "userinfo"},
		{"rejects_percent_in_trust_domain", "spiffe://ex%41mple.org/x", "percent"},
		{"rejects_percent_in_path", "spiffe://example.org/a%2Fb", "percent"},
		{"rejects_query", "spiffe://example.org/x?y=1", "query"},
		{"rejects_query_without_path", "spiffe://example.org?y", "query"},
		{"rejects_fragment", "spiffe://example.org/x#frag", "fragment"},
		{"rejects_empty_segment", "spiffe://example.org/a//b", "empty path segment"},
		{"rejects_trailing_slash", "spiffe://example.org/a/", "trailing slash"},
		{"rejects_root_path", "spiffe://example.org/", "trailing slash"},
		{"rejects_dot_segment", "spiffe://example.org/a/./b", `"."`},
		{"rejects_dotdot_segment", "spiffe://example.org/a/..", `".."`},
		{"rejects_invalid_path_character", "spiffe://example.org/a b", "invalid character"},
		{"rejects_unicode_path", "spiffe://example.org/caf\u00e9", "invalid character"},
		{"rejects_trust_domain_of_256_bytes", "spiffe://" + longTD + "a/x", "exceeds 255"},
		{"rejects_id_over_2048_bytes", "spiffe://example.org/" + strings.Repeat("a", 2049-len("spiffe://example.org/")), "exceeds 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := pki.ParseID(tt.in)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("ParseID(%q) = %v, want success", tt.in, err)
				}
				if id.String() != tt.in {
					t.Fatalf("ParseID(%q).String() = %q", tt.in, id.String())
				}
				return
			}
			if err == nil {
				t.Fatalf("ParseID(%q) succeeded, want error containing %q", tt.in, tt.wantErr)
			}
			if !errors.Is(err, pki.ErrInvalidID) || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("ParseID(%q) = %v, want ErrInvalidID containing %q", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestParseTrustDomain(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{{"example.org", true}, {"cluster-1.local", true}, {"", false}, {"Example.org", false}, {"example.org/x", false}, {"spiffe://example.org", false}} {
		_, err := pki.ParseTrustDomain(tc.in)
		if (err == nil) != tc.ok {
			t.Errorf("ParseTrustDomain(%q) err = %v, want ok=%v", tc.in, err, tc.ok)
		}
	}
}

func TestWorkloadID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	tests := []struct {
		name, ns, sa, want, wantErr string
		td                          spiffeid.TrustDomain
	}{
		{name: "builds_ns_sa_path", td: td, ns: "default", sa: "web", want: "spiffe://example.org/ns/default/sa/web"},
		{name: "rejects_empty_namespace", td: td, ns: "", sa: "web", wantErr: "namespace"},
		{name: "rejects_empty_service_account", td: td, ns: "default", sa: "", wantErr: "serviceAccount"},
		{name: "rejects_slash_in_namespace", td: td, ns: "a/b", sa: "web", wantErr: "namespace"},
		{name: "rejects_dotdot_service_account", td: td, ns: "default", sa: "..", wantErr: "serviceAccount"},
		{name: "rejects_zero_trust_domain", ns: "default", sa: "web", wantErr: "trust domain"},
		{name: "rejects_id_over_2048_bytes", td: td, ns: "default", sa: strings.Repeat("s", 2040), wantErr: "exceeds 2048"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := pki.WorkloadID(tt.td, tt.ns, tt.sa)
			if tt.wantErr != "" {
				if err == nil || !errors.Is(err, pki.ErrInvalidID) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WorkloadID = %v, %v; want ErrInvalidID containing %q", id, err, tt.wantErr)
				}
				return
			}
			if err != nil || id.String() != tt.want {
				t.Fatalf("WorkloadID = %v, %v; want %s", id, err, tt.want)
			}
			ns, sa, ok := pki.Workload(id)
			if !ok || ns != tt.ns || sa != tt.sa {
				t.Fatalf("Workload(%s) = %q, %q, %v", id, ns, sa, ok)
			}
		})
	}
}

func TestAgentID(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("example.org")
	id, err := pki.AgentID(td, "node-1.zone-a")
	if err != nil || id.String() != "spiffe://example.org/mayfly/agent/node-1.zone-a" {
		t.Fatalf("AgentID = %v, %v", id, err)
	}
	if node, ok := pki.Agent(id); !ok || node != "node-1.zone-a" {
		t.Fatalf("Agent(%s) = %q, %v", id, node, ok)
	}
	if _, _, ok := pki.Workload(id); ok {
		t.Fatalf("Workload(%s) accepted an agent ID", id)
	}
	for _, bad := range []string{"", ".", "a/b", "n%41"} {
		if _, err := pki.AgentID(td, bad); !errors.Is(err, pki.ErrInvalidID) || !strings.Contains(err.Error(), "nodeName") {
			t.Errorf("AgentID(%q) err = %v, want ErrInvalidID naming nodeName", bad, err)
		}
	}
	wl := spiffeid.RequireFromString("spiffe://example.org/ns/a/sa/b")
	if _, ok := pki.Agent(wl); ok {
		t.Errorf("Agent(%s) accepted a workload ID", wl)
	}
}
