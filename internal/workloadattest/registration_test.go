package workloadattest

import (
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

var testTD = spiffeid.RequireTrustDomainFromString("example.org")

func TestParseRegistrations(t *testing.T) {
	regs, err := ParseRegistrations([]byte(`
registrations:
  - spiffeID: spiffe://example.org/demo/server
    selectors: {uid: 1000, path: /usr/local/bin/server}
    dnsNames: [server.example.org]
    ttl: 1h
  - spiffeID: spiffe://example.org/demo/batch
    selectors: {gid: 0}
`), testTD)
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 2 {
		t.Fatalf("got %d registrations", len(regs))
	}
	r := regs[0]
	if r.SPIFFEID.String() != "spiffe://example.org/demo/server" || *r.Selectors.UID != 1000 ||
		r.Selectors.GID != nil || r.Selectors.Path != "/usr/local/bin/server" ||
		r.TTLDuration != time.Hour || len(r.DNSNames) != 1 {
		t.Errorf("registrations[0] = %+v", r)
	}
	if regs[1].Selectors.GID == nil || *regs[1].Selectors.GID != 0 || regs[1].Selectors.UID != nil {
		t.Errorf("registrations[1].selectors = %+v: gid 0 must be set, not absent", regs[1].Selectors)
	}
}

func TestParseRegistrationsErrorsNameTheField(t *testing.T) {
	const ok = "  - spiffeID: spiffe://example.org/ok\n    selectors: {uid: 1}\n"
	tests := []struct {
		name, file, want string
	}{
		{"empty file", "", "registrations: empty file"},
		{"no selectors", "registrations:\n" + ok + "  - spiffeID: spiffe://example.org/a\n    selectors: {}\n", "registrations[1].selectors: at least one of uid, gid, path"},
		{"selectors missing", "registrations:\n  - spiffeID: spiffe://example.org/a\n", "registrations[0].selectors: at least one of uid, gid, path"},
		{"invalid ID", "registrations:\n  - spiffeID: spiffe://example.org/a//b\n    selectors: {uid: 1}\n", "registrations[0].spiffeID: invalid SPIFFE ID"},
		{"ID not a URI", "registrations:\n  - spiffeID: demo\n    selectors: {uid: 1}\n", "registrations[0].spiffeID:"},
		{"other trust domain", "registrations:\n  - spiffeID: spiffe://other.org/a\n    selectors: {uid: 1}\n", "registrations[0].spiffeID: spiffe://other.org/a is not in trust domain example.org"},
		{"trust domain ID", "registrations:\n  - spiffeID: spiffe://example.org\n    selectors: {uid: 1}\n", "registrations[0].spiffeID: spiffe://example.org has no path"},
		{"negative uid", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: -1}\n", "registrations[0].selectors.uid: -1"},
		{"huge gid", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {gid: 4294967295}\n", "registrations[0].selectors.gid"},
		{"path without uid or gid", "registrations:\n" + ok + "  - spiffeID: spiffe://example.org/srv\n    selectors: {path: /usr/local/bin/server}\n", "registrations[1].selectors: spiffe://example.org/srv: a path selector needs a uid or gid selector too"},
		{"relative path", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1, path: bin/server}\n", "registrations[0].selectors.path: \"bin/server\" must be an absolute, clean path"},
		{"unclean path", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1, path: /usr/../bin/sh}\n", "registrations[0].selectors.path"},
		{"bad DNS name", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1}\n    dnsNames: [ok.example.org, \"bad name\"]\n", "registrations[0].dnsNames[1]:"},
		{"bad ttl", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1}\n    ttl: soon\n", "registrations[0].ttl:"},
		{"zero ttl", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1}\n    ttl: 0s\n", "registrations[0].ttl: 0s must be positive"},
		{"unknown field", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: 1, exe: /bin/sh}\n", "unknown field"},
		{"unknown top-level field", "registration: []\n", "unknown field"},
		{"wrong type", "registrations:\n  - spiffeID: spiffe://example.org/a\n    selectors: {uid: root}\n", "registrations:"},
		{"every bad entry reported", "registrations:\n  - spiffeID: x\n    selectors: {uid: 1}\n" + ok + "  - spiffeID: spiffe://example.org/c\n    selectors: {}\n", "registrations[2].selectors"},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			regs, err := ParseRegistrations([]byte(tt.file), testTD)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("ParseRegistrations = %v, %v; want error containing %q", regs, err, tt.want)
			}
		})
	}
}

func TestParseRegistrationsAcceptsAnExplicitEmptySet(t *testing.T) {
	regs, err := ParseRegistrations([]byte("registrations: []\n"), testTD)
	if err != nil || len(regs) != 0 {
		t.Fatalf("ParseRegistrations = %v, %v", regs, err)
	}
}

func TestParseRegistrationsRejectsOversizedFiles(t *testing.T) {
	data := []byte("registrations: []\n" + strings.Repeat("#", MaxRegistrationsFileSize))
	if _, err := ParseRegistrations(data, testTD); err == nil || !strings.Contains(err.Error(), "larger than") {
		t.Fatalf("ParseRegistrations(oversized) = %v", err)
	}
}

func TestParseRegistrationsNeedsATrustDomain(t *testing.T) {
	if _, err := ParseRegistrations([]byte("registrations: []"), spiffeid.TrustDomain{}); err == nil {
		t.Fatal("ParseRegistrations without a trust domain succeeded")
	}
}

func TestMatch(t *testing.T) {
	regs, err := ParseRegistrations([]byte(`
registrations:
  - spiffeID: spiffe://example.org/uid
    selectors: {uid: 1000}
  - spiffeID: spiffe://example.org/uid-and-path
    selectors: {uid: 1000, path: /usr/local/bin/server}
  - spiffeID: spiffe://example.org/root-group
    selectors: {gid: 0}
  - spiffeID: spiffe://example.org/path
    selectors: {gid: 5, path: /usr/local/bin/server}
`), testTD)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		sel  Selectors
		want []string
	}{
		{"uid only matches the uid registration", Selectors{UID: ptr(1000), GID: ptr(1000), Path: "/bin/sh"}, []string{"/uid"}},
		{"all selectors of a registration must match", Selectors{UID: ptr(1000), GID: ptr(1000), Path: "/usr/local/bin/server"}, []string{"/uid", "/uid-and-path"}},
		{"other uid matches by gid and path", Selectors{UID: ptr(1001), GID: ptr(5), Path: "/usr/local/bin/server"}, []string{"/path"}},
		{"path without the gid matches nothing", Selectors{UID: ptr(1001), GID: ptr(6), Path: "/usr/local/bin/server"}, nil},
		{"gid 0 is a value, not absent", Selectors{UID: ptr(0), GID: ptr(0), Path: "/bin/sh"}, []string{"/root-group"}},
		{"unset selectors never match a uid", Selectors{Path: "/bin/sh"}, nil},
		{"kubernetes selectors match nothing", Selectors{PodUID: testPodUID, Namespace: "default"}, nil},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			var got []string
			for _, r := range Match(regs, tt.sel) {
				got = append(got, r.SPIFFEID.Path())
			}
			if strings.Join(got, ",") != strings.Join(tt.want, ",") {
				t.Errorf("Match = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestMatchIgnoresRegistrationsWithoutSelectors(t *testing.T) {
	regs := []Registration{{ID: "spiffe://example.org/x"}}
	if got := Match(regs, Selectors{UID: ptr(0), GID: ptr(0), Path: "/"}); len(got) != 0 {
		t.Errorf("Match = %v, want none", got)
	}
}

// TestMatchIgnoresPathOnlyRegistrations: a registration built in code
// with a path selector alone (ParseRegistrations refuses it) matches
// nothing: any local user could obtain it by exec'ing the binary.
func TestMatchIgnoresPathOnlyRegistrations(t *testing.T) {
	regs := []Registration{{ID: "spiffe://example.org/x", Selectors: RegistrationSelectors{Path: "/usr/bin/server"}}}
	if got := Match(regs, Selectors{UID: ptr(1000), GID: ptr(1000), Path: "/usr/bin/server"}); len(got) != 0 {
		t.Errorf("Match = %v, want none", got)
	}
}
