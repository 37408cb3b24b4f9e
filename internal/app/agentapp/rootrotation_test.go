package agentapp_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/handshake"
)

// TestEndToEndRootRotation: a root rotation requested as `ca rotate-root`
// does (on the store of the running CA) reaches two go-spiffe workloads
// doing mTLS through the agent in the safe order: both trust the next root
// before any certificate under it is served, then both rotate onto it, and
// the old root stays trusted. No handshake may fail on the way.
func TestEndToEndRootRotation(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test with a real root rotation (about 30s); skipped with -short")
	}
	s := startStack(t, "20s")
	m := startMTLS(t, s)
	oldRoots := roots(t, m.serverSrc)
	if len(oldRoots) != 1 {
		t.Fatalf("the bundle holds %d roots before the rotation, want 1", len(oldRoots))
	}
	oldRoot := oldRoots[0]

	store, err := authority.NewDirStore(s.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := authority.RequestRootRotation(context.Background(), store); err != nil {
		t.Fatalf("RequestRootRotation: %v", err)
	}

	var (
		published time.Time // both workloads trust two roots
		newRoot   *x509.Certificate
		onNew     = map[string]bool{}
	)
	// A request every 200ms until both workloads hold certificates under
	// the new root, checking the order of events at each step.
	began := time.Now()
	c := handshake.Until(t, "the root rotation", 90*time.Second, 200*time.Millisecond, []handshake.Pair{{Name: "go-spiffe pair", Handshake: m.handshake}}, func(int) (bool, string) {
		for name, src := range map[string]*workloadapi.X509Source{"server": m.serverSrc, "client": m.clientSrc} {
			svid, err := src.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			top := svid.Certificates[len(svid.Certificates)-1]
			if top.CheckSignatureFrom(oldRoot) == nil {
				continue
			}
			// A certificate under another root: every workload must trust
			// that root already, and the old one still.
			for other, osrc := range map[string]*workloadapi.X509Source{"server": m.serverSrc, "client": m.clientSrc} {
				rs := roots(t, osrc)
				if !slices.ContainsFunc(rs, oldRoot.Equal) {
					t.Fatalf("%s's bundle dropped the old root while certificates under it are valid", other)
				}
				signed := false
				for _, r := range rs {
					if !r.Equal(oldRoot) && top.CheckSignatureFrom(r) == nil {
						signed, newRoot = true, r
					}
				}
				if !signed {
					t.Fatalf("%s was served a certificate under a root that %s does not trust yet", name, other)
				}
			}
			onNew[name] = true
		}
		if published.IsZero() && len(roots(t, m.serverSrc)) == 2 && len(roots(t, m.clientSrc)) == 2 {
			published = time.Now()
			if len(onNew) != 0 {
				t.Fatal("a certificate under the next root was served before both workloads trusted it")
			}
		}
		return len(onNew) == 2, fmt.Sprintf("next root published: %v, workloads on it: %v", !published.IsZero(), onNew)
	})
	if published.IsZero() || newRoot == nil {
		t.Fatal("the workloads moved to a new root without the bundle carrying both first")
	}
	if !strings.Contains(s.caLogs.String(), "rotated CA keys") {
		t.Errorf("the CA did not log the rotation:\n%s", s.caLogs)
	}
	t.Logf("root rotation: next root trusted by both workloads %v after the request, both on it %v after; %d handshakes, %d failed",
		published.Sub(began).Round(100*time.Millisecond), time.Since(began).Round(100*time.Millisecond), c.Rounds, c.Failed)
}

func roots(t *testing.T, src *workloadapi.X509Source) []*x509.Certificate {
	t.Helper()
	b, err := src.GetX509BundleForTrustDomain(serverID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	return b.X509Authorities()
}
