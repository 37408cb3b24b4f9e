package skew_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/skew"
	"github.com/mayfly-pki/mayfly/internal/version"
)

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		name, ca, agent string
		wantErr         string // "" accepts
	}{
		{"same_version", "v0.2.0", "v0.2.0", ""},
		{"same_unreleased_name", "e2e-node", "e2e-node", ""},
		{"agent_older_patch", "v0.2.3", "v0.2.0", ""},
		{"agent_newer_patch", "v0.2.0", "v0.2.5", ""},
		{"agent_one_minor_behind", "v0.3.0", "v0.2.9", ""},
		{"prerelease_and_build", "v1.4.0-rc.1+abc", "v1.3.2", ""},
		{"agent_without_report", "v0.3.0", "", ""},
		{"development_ca", "", "v0.9.0", ""},
		{"untagged_ca", "v0.0.0-20261206153000-abcdef123456", "v0.2.0", ""},
		{"untagged_agent_after_a_tag", "v0.2.0", "v0.2.1-0.20261206153000-abcdef123456", ""},
		{"dirty_ca", "v0.3.0+dirty", "v0.1.0", "upgrade the agents"},
		{"agent_two_minors_behind", "v0.4.0", "v0.2.0", "upgrade the agents"},
		{"agent_newer_minor", "v0.2.0", "v0.3.0", "upgrade the CA first"},
		{"major_differs", "v2.0.0", "v1.9.0", "major versions differ"},
		{"agent_not_semver", "v0.2.0", "latest", "not a release version"},
		{"agent_leading_zero", "v0.2.0", "v0.02.0", "not a release version"},
		{"agent_huge_report", "v0.2.0", strings.Repeat("x", 10000), "..."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := skew.Check(tc.ca, tc.agent)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Check(%q, %q) = %v, want accepted", tc.ca, tc.agent, err)
				}
				return
			}
			if !errors.Is(err, skew.ErrSkew) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Check(%q, %.20q) = %v, want ErrSkew saying %q", tc.ca, tc.agent, err, tc.wantErr)
			}
			if len(err.Error()) > 400 {
				t.Errorf("error of %d bytes: the agent's report is not bounded", len(err.Error()))
			}
		})
	}
}

func FuzzCheck(f *testing.F) {
	for _, s := range []string{"v0.1.0", "", "v1.2.3-rc.1+x", "v01.2.3", "v1..2"} {
		f.Add("v0.2.0", s)
	}
	f.Fuzz(func(t *testing.T, ca, agent string) {
		err := skew.Check(ca, agent)
		if err != nil && !errors.Is(err, skew.ErrSkew) {
			t.Fatalf("Check = %v, not ErrSkew", err)
		}
	})
}

// TestVersionIsTheLinkedVersion: the version an agent reports and a CA
// compares is the one the release build links into internal/version
// (the images' -X flag), not a second variable.
func TestVersionIsTheLinkedVersion(t *testing.T) {
	saved := version.Version
	t.Cleanup(func() { version.Version = saved })
	version.Version = "v9.8.7"
	if got := skew.Version(); got != "v9.8.7" {
		t.Fatalf("Version() = %q, want the linked v9.8.7", got)
	}
}
