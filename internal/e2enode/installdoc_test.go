package e2enode

import (
	"os"
	"strings"
	"testing"
)

// TestInstallDocNamesE2EValues: docs/install.md shows the helm command the
// e2e renders its tree with, value for value (make e2e-node follows that
// page). It runs in make test, without a node.
func TestInstallDocNamesE2EValues(t *testing.T) {
	b, err := os.ReadFile("../../docs/install.md")
	if err != nil {
		t.Fatal(err)
	}
	want := "helm template mayfly deploy/helm/mayfly --namespace mayfly-system"
	for _, v := range e2eValues {
		want += " --set " + v
	}
	if !strings.Contains(string(b), want+"\n") {
		t.Errorf("docs/install.md does not show the e2e's helm command:\n%s", want)
	}
}

// TestSocketLeavesReadsDemoClient: the e2e reads demo-client's lines
// (cmd/demo-client) for the serials and roots of both leaves.
func TestSocketLeavesReadsDemoClient(t *testing.T) {
	log := `19:00:01 handshake ok  peer spiffe://example.org/ns/e2e-mtls/sa/server serial 0a1b2c3d left  45s | me serial 11223344 left   5s
19:00:01.000 [socket/client] trust bundle now holds 1 roots: aaaa0001  t=1.000
19:00:01.000 [socket/client] leaf now under root aaaa0001  t=1.000
19:00:01.000 [socket/server] leaf now under root aaaa0001  t=1.000
19:00:02 handshake ok  peer spiffe://example.org/ns/e2e-mtls/sa/server serial 0a1b2c3d left  44s | me serial 55667788 left  59s
19:00:03 handshake FAILED: remote error
19:00:04 handshake ok  peer spiffe://example.org/ns/e2e-mtls/sa/server serial 99aabbcc left  59s | me serial 55667788 left  57s
19:00:04.000 [socket/server] leaf now under root bbbb0002  t=4.000
`
	mine, peer, myRoot, peerRoot := socketLeaves(log)
	if mine != 2 || peer != 2 || myRoot != "aaaa0001" || peerRoot != "bbbb0002" {
		t.Fatalf("socketLeaves = %d, %d, %s, %s; want 2, 2, aaaa0001, bbbb0002", mine, peer, myRoot, peerRoot)
	}
	if n := countLines(log, "FAILED"); n != 1 {
		t.Fatalf("countLines FAILED = %d, want 1", n)
	}
}
