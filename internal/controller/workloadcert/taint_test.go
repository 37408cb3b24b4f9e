package workloadcert_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestTaintedAuthorityReissuesSecretsOverTheWindow: once the CA announces
// the intermediate of the Secrets as tainted (and signs with another), each
// Secret gets a renewal time inside the re-issue window, spread, and is
// re-issued under the new intermediate when its time came.
func TestTaintedAuthorityReissuesSecretsOverTheWindow(t *testing.T) {
	const n, window = 12, 10 * time.Minute
	clock := rotate.NewFakeClock(time.Now())
	e := start(t, clock, nil, 0)
	e.create(t, namespace("app"), serviceAccount("app", "web"))
	serials := map[string]string{}
	for i := range n {
		name := fmt.Sprintf("w%02d", i)
		e.create(t, workloadCert("app", name, "web", name+"-tls"))
		serials[name] = e.waitSecret(t, "app", name, name+"-tls", "").serial()
	}

	next := testca.New(t, testca.WithTrustDomain("example.org"))
	l := fakeauthority.Loaded(next, "v2", e.ca.Root, next.Root)
	l.Taints = []authority.Taint{{Role: authority.RoleIntermediate, SubjectKeyID: e.ca.Intermediate.SubjectKeyId}}
	l.TaintReissueWindow = window
	taintedAt := clock.Now()
	e.auth.Set(l, nil)

	distinct := map[time.Time]bool{}
	eventually(t, "every renewal time moved into the window", func(ctx context.Context) (bool, string) {
		clear(distinct)
		for name := range serials {
			wc, err := e.get(ctx, "app", name)
			if err != nil {
				return false, err.Error()
			}
			rt := wc.Status.RenewalTime
			if rt == nil || rt.Time.Before(taintedAt.Add(-time.Second)) || rt.After(taintedAt.Add(window)) {
				return false, fmt.Sprintf("%s renews at %v", name, rt)
			}
			distinct[rt.Time] = true
		}
		return true, ""
	})
	if len(distinct) < n/2 {
		t.Errorf("%d Secrets share %d renewal times: not spread over the window", n, len(distinct))
	}

	clock.Set(taintedAt.Add(window + time.Second))
	l2 := *l
	l2.BundleVersion = "v3" // any change makes the controller look at every object
	e.auth.Set(&l2, nil)
	for name, serial := range serials {
		got := e.waitSecret(t, "app", name, name+"-tls", serial)
		if !got.chain[1].Equal(next.Intermediate) {
			t.Errorf("%s re-issued, but not under the new intermediate", name)
		}
	}
}
