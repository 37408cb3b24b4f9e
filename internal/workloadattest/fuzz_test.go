package workloadattest

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzContainerFromCgroups parses arbitrary cgroup files: it must never
// panic, and an accepted result has a well-formed pod UID and container ID
// that appear in the input.
func FuzzContainerFromCgroups(f *testing.F) {
	f.Add([]byte("0::/kubepods/burstable/pod" + testPodUID + "/" + testCID + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		lines, err := ParseCgroups(data)
		if err != nil {
			return
		}
		derived, _ := CgroupRootOf(lines) // must not panic either
		for _, root := range []string{"", derived, "/e2e-root"} {
			checkContainer(t, data, lines, root)
		}
	})
}

// checkContainer: ContainerFromCgroupsUnder(lines, root) returns an error of
// a known class and no result, or a well-formed result found in data.
func checkContainer(t *testing.T, data []byte, lines []CgroupLine, root string) {
	t.Helper()
	uid, cid, err := ContainerFromCgroupsUnder(lines, root)
	if err != nil {
		if uid != "" || cid != "" {
			t.Fatalf("root %q: error %v with a result %q %q", root, err, uid, cid)
		}
		if !errors.Is(err, ErrNotInPod) && !errors.Is(err, ErrUnrecognizedCgroup) {
			t.Fatalf("root %q: untyped error %v", root, err)
		}
		return
	}
	if !isUUID(uid, '-') {
		t.Fatalf("accepted malformed pod UID %q", uid)
	}
	if !isContainerID(cid) {
		t.Fatalf("accepted malformed container ID %q", cid)
	}
	in := string(data)
	if !strings.Contains(in, cid) || (!strings.Contains(in, uid) && !strings.Contains(in, strings.ReplaceAll(uid, "-", "_"))) {
		t.Fatalf("result %q %q is not in the input", uid, cid)
	}
}

// FuzzParseRegistrations parses arbitrary registrations files: it must never
// panic, and an accepted registration is valid and in the trust domain.
func FuzzParseRegistrations(f *testing.F) {
	f.Add([]byte("registrations:\n  - spiffeID: spiffe://example.org/demo/server\n    selectors: {uid: 1000, path: /usr/local/bin/server}\n"))
	td := spiffeid.RequireTrustDomainFromString("example.org")
	f.Fuzz(func(t *testing.T, data []byte) {
		regs, err := ParseRegistrations(data, td)
		if err != nil {
			return
		}
		for i, r := range regs {
			if !r.SPIFFEID.MemberOf(td) || r.SPIFFEID.String() != r.ID {
				t.Fatalf("registrations[%d]: accepted ID %q (%q)", i, r.ID, r.SPIFFEID)
			}
			s := r.Selectors
			if s.UID == nil && s.GID == nil && s.Path == "" {
				t.Fatalf("registrations[%d]: accepted without selectors", i)
			}
			if s.Path != "" && !strings.HasPrefix(s.Path, "/") {
				t.Fatalf("registrations[%d]: accepted relative path %q", i, s.Path)
			}
			if r.TTL != "" && r.TTLDuration <= 0 {
				t.Fatalf("registrations[%d]: accepted ttl %q as %s", i, r.TTL, r.TTLDuration)
			}
			// The registration matches the selectors it names.
			if len(Match([]Registration{r}, Selectors{UID: s.UID, GID: s.GID, Path: s.Path})) != 1 {
				t.Fatalf("registrations[%d] does not match its own selectors", i)
			}
		}
	})
}
