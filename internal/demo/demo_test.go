package demo_test

import (
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/demo"
)

const (
	server = "spiffe://example.org/demo/server"
	client = "spiffe://example.org/demo/client"
)

func TestParseIDsKeepsBoth(t *testing.T) {
	ids, err := demo.ParseIDs(server, client, "client-id")
	if err != nil || ids.Self.String() != server || ids.Peer.String() != client {
		t.Fatalf("ParseIDs = %v, %v; want %s and %s", ids, err, server, client)
	}
}

// TestParseIDsNamesTheBadFlag: each malformed ID is refused with the flag
// it came from.
func TestParseIDsNamesTheBadFlag(t *testing.T) {
	for _, c := range []struct{ self, peer, wantPrefix string }{
		{"example.org/demo/server", client, "--id: "},
		{"", client, "--id: "},
		{server, "spiffe://", "--client-id: "},
	} {
		ids, err := demo.ParseIDs(c.self, c.peer, "client-id")
		if err == nil || !strings.HasPrefix(err.Error(), c.wantPrefix) {
			t.Errorf("ParseIDs(%q, %q) = %v, %v; want an error starting %q", c.self, c.peer, ids, err, c.wantPrefix)
		}
	}
}
