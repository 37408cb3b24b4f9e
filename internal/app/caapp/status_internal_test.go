package caapp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/adoption"
)

func TestPrintStatusNamesPendingNodes(t *testing.T) {
	var pending []string
	for i := range adoption.MaxListed {
		pending = append(pending, fmt.Sprintf("node-%02d", i))
	}
	st := Status{TrustDomain: "example.org", Ready: true, RootAdoption: &adoption.Status{
		BundleVersion: "abc", Known: true, Expected: 30, Pending: 25, PendingNodes: pending, WaitRemaining: 90 * time.Minute,
	}}
	var out bytes.Buffer
	if err := printStatus(&out, st, time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"5 of 30 nodes hold bundle abc", "activates anyway in 1h30m0s", "node-00, node-01", "node-19 (and 5 more)"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
}
