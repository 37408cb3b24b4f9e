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
