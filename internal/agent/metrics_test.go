package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestManagerSVIDMetricsByPathAndIdentity: one series per delivery path
// and identity, so that two identities of one SPIFFE ID (a socket
// identity and a CSI volume asking for other options) never collide, an
// identity served on two paths shows on both, and an identity's series go
// with it.
func TestManagerSVIDMetricsByPathAndIdentity(t *testing.T) {
	h := newManager(t, true)
	h.ca.grant(idWeb, idDB)
	const (
		shared  = "default/web"          // socket and CSI share it
		options = "default/web#0a1b2c3d" // a CSI volume with its own TTL
	)
	web := h.get(Spec{Key: shared, SpiffeID: idWeb})
	h.get(Spec{Key: shared, SpiffeID: idWeb, Path: PathCSI})
	withOptions := h.get(Spec{Key: options, SpiffeID: idWeb, Path: PathCSI, TTL: 30 * time.Minute})
	db := h.get(Spec{Key: idDB, SpiffeID: idDB, Path: PathWriteDir, Pinned: true})
	h.settle(3)
	// Watched, as CSI volumes and Workload API streams do: kept while idle.
	for _, key := range []string{shared, options} {
		_, unwatch := h.m.Subscribe(key)
		defer unwatch()
	}
	agentID := spiffeid.RequireFromString("spiffe://example.org/mayfly/agent/node-a")
	agentChain, _ := h.ca.tca.IssueWorkload(t, agentID, 20*time.Minute)
	h.m.SetAgentSVID(agentChain[0])

	type series struct{ path, identity, id string }
	want := map[series][2]time.Time{
		{PathSocket, shared, idWeb}:            {web.Leaf().NotBefore, web.Leaf().NotAfter},
		{PathCSI, shared, idWeb}:               {web.Leaf().NotBefore, web.Leaf().NotAfter},
		{PathCSI, options, idWeb}:              {withOptions.Leaf().NotBefore, withOptions.Leaf().NotAfter},
		{PathWriteDir, idDB, idDB}:             {db.Leaf().NotBefore, db.Leaf().NotAfter},
		{PathAgent, "agent", agentID.String()}: {agentChain[0].NotBefore, agentChain[0].NotAfter},
	}
	check := func(when string) {
		t.Helper()
		mfs := gather(t, h.reg)
		for _, name := range []string{"mayfly_agent_svid_issued_timestamp_seconds", "mayfly_agent_svid_expiry_timestamp_seconds"} {
			n := 0
			for _, mf := range mfs {
				if mf.GetName() == name {
					n = len(mf.GetMetric())
				}
			}
			if n != len(want) {
				t.Errorf("%s: %d series of %s, want %d", when, n, name, len(want))
			}
		}
		for s, v := range want {
			labels := []string{"path=" + s.path, "identity=" + s.identity, "spiffe_id=" + s.id}
			nb, ok1 := sample(t, h.reg, "mayfly_agent_svid_issued_timestamp_seconds", labels...)
			na, ok2 := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", labels...)
			if !ok1 || !ok2 || nb != float64(v[0].Unix()) || na != float64(v[1].Unix()) {
				t.Errorf("%s: %v: exported %v/%v issued %v expiry %v, want %d %d", when, s, ok1, ok2, nb, na, v[0].Unix(), v[1].Unix())
			}
		}
	}
	check("at start")

	// A renewal moves every path of the identity to the new certificate.
	h.clk.Advance(pastRenewal)
	h.settle(3)
	renewed := h.get(Spec{Key: shared, SpiffeID: idWeb})
	if renewed.Leaf().SerialNumber.Cmp(web.Leaf().SerialNumber) == 0 {
		t.Fatal("no renewal after the renewal point")
	}
	dbNow := h.get(Spec{Key: idDB, SpiffeID: idDB, Path: PathWriteDir, Pinned: true})
	optNow := h.get(Spec{Key: options, SpiffeID: idWeb, Path: PathCSI, TTL: 30 * time.Minute})
	want[series{PathSocket, shared, idWeb}] = [2]time.Time{renewed.Leaf().NotBefore, renewed.Leaf().NotAfter}
	want[series{PathCSI, shared, idWeb}] = [2]time.Time{renewed.Leaf().NotBefore, renewed.Leaf().NotAfter}
	want[series{PathWriteDir, idDB, idDB}] = [2]time.Time{dbNow.Leaf().NotBefore, dbNow.Leaf().NotAfter}
	want[series{PathCSI, options, idWeb}] = [2]time.Time{optNow.Leaf().NotBefore, optNow.Leaf().NotAfter}
	check("after the renewal")

	// The shared identity goes: both its series go, the other CSI
	// identity of the same SPIFFE ID stays.
	h.m.Remove(shared)
	delete(want, series{PathSocket, shared, idWeb})
	delete(want, series{PathCSI, shared, idWeb})
	check("after Remove")

	// Asked for again on one path only: exported on that path only.
	again := h.get(Spec{Key: shared, SpiffeID: idWeb, Path: PathCSI})
	h.settle(3)
	want[series{PathCSI, shared, idWeb}] = [2]time.Time{again.Leaf().NotBefore, again.Leaf().NotAfter}
	check(fmt.Sprintf("after %s came back on CSI", shared))
}

// TestDeliveryPathsOfTheWiring: the Workload API's pod identities count as
// socket, CSI volumes as csi, registrations with a writeDir as writedir.
func TestDeliveryPathsOfTheWiring(t *testing.T) {
	h := newManager(t, true)
	h.ca.pod("uid-web", idWeb)
	h.ca.pod("uid-db", idDB)
	h.ca.grant(idCache)
	pods := &PodIndex{}

	socket, release := (&PodIdentities{Pods: pods}).Hold(workloadattest.Selectors{Namespace: "default", ServiceAccount: "web", PodUID: "uid-web"})
	defer release()
	h.get(socket[0])
	v := &VolumeIdentities{Manager: h.m, Pods: pods}
	untrack, err := v.Track(csi.VolumeIdentity{Namespace: "default", ServiceAccount: "db", PodName: "db-0", PodUID: "uid-db"},
		rotate.SinkFunc(func(context.Context, *rotate.Credential) error { return nil }))
	if err != nil {
		t.Fatal(err)
	}
	defer untrack()
	regs := &Registrations{Manager: h.m, WriteDir: t.TempDir()}
	if err := regs.Apply([]workloadattest.Registration{{SPIFFEID: spiffeid.RequireFromString(idCache)}}); err != nil {
		t.Fatal(err)
	}
	h.settle(3)

	for _, want := range []struct{ path, identity, id string }{
		{PathSocket, "default/web", idWeb},
		{PathCSI, "default/db", idDB},
		{PathWriteDir, idCache, idCache},
	} {
		if _, ok := sample(t, h.reg, "mayfly_agent_svid_expiry_timestamp_seconds", "path="+want.path, "identity="+want.identity, "spiffe_id="+want.id); !ok {
			t.Errorf("no expiry series %+v", want)
		}
	}
}
