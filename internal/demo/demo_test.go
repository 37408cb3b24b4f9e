package demo_test

import (
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/demo"
)

func TestParseIDs(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, self, peer, wantErr string
	}{
		{name: "both_valid", self: "spiffe://example.org/demo/server", peer: "spiffe://example.org/demo/client"},
		{name: "bad_own_id_names_--id", self: "example.org/demo/server", peer: "spiffe://example.org/demo/client", wantErr: "--id: "},
		{name: "bad_peer_id_names_its_flag", self: "spiffe://example.org/demo/server", peer: "spiffe://", wantErr: "--client-id: "},
		{name: "empty_own_id_refused", self: "", peer: "spiffe://example.org/demo/client", wantErr: "--id: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ids, err := demo.ParseIDs(tc.self, tc.peer, "client-id")
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("ParseIDs = %v, %v; want an error starting %q", ids, err, tc.wantErr)
				}
				return
			}
			if err != nil || ids.Self.String() != tc.self || ids.Peer.String() != tc.peer {
				t.Fatalf("ParseIDs = %v, %v; want %s and %s", ids, err, tc.self, tc.peer)
			}
		})
	}
}
