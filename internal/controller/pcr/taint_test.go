package pcr_test

import (
	"crypto/elliptic"
	"crypto/x509"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/pcr"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
)

// TestSignerRefreshesEarlyWhileATaintedKeySigns: while a tainted key still
// signs (a tainted root waits for the agents), a new credential gets the
// earliest beginRefreshAt the API allows (notBefore+10m), so the kubelet
// comes back soon, by then under the new authority.
func TestSignerRefreshesEarlyWhileATaintedKeySigns(t *testing.T) {
	e := newEnv(t)
	const signer = "mayfly.dev/tainted"
	tca := signingCA(t)
	l := fakeauthority.Loaded(tca, "v1")
	l.State = &authority.State{
		Intermediate: authority.Rotation{Current: &authority.Slot{Chain: []*x509.Certificate{tca.Intermediate}}},
		Taints:       []authority.Taint{{Role: authority.RoleRoot, SubjectKeyID: tca.Root.SubjectKeyId}},
	}
	e.startSigner(t, &pcr.Reconciler{Authority: fakeauthority.New(l, nil), TrustDomain: tca.TrustDomain, SignerName: signer})
	const ns = "team-t"
	e.namespace(t, ns)
	p := e.pod(t, ns, "api", "node-3", "api-sa")
	e.createPCR(t, ns, request{name: "api", signer: signer, pod: p, node: "node-3", sa: "api-sa", maxExp: 3600, key: ecKey(t, elliptic.P256())})
	req := e.waitDecided(t, ns, "api")
	if c := req.Status.Conditions[0]; c.Type != "Issued" {
		t.Fatalf("condition %s %s: %s, want Issued", c.Type, c.Reason, c.Message)
	}
	if want := req.Status.NotBefore.Add(10 * time.Minute); !req.Status.BeginRefreshAt.Time.Equal(want) {
		t.Fatalf("beginRefreshAt %s, want notBefore+10m %s", req.Status.BeginRefreshAt, want)
	}
}
