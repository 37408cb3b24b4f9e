package caapp

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/bundlegate"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

func TestPrintStatusShowsKubernetesDelivery(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    bundlegate.Status
		want string
	}{
		{
			name: "pending_objects_first_few_and_count",
			k: bundlegate.Status{Tracking: true, BundleVersion: "b2", Objects: 9, Pending: 7, PropagationDelay: "3m0s",
				PendingObjects: []string{"configmap a/mayfly-trust-bundle", "secret a/web-tls"}},
			want: "kubernetes delivery: 7 of 9 objects lack bundle b2: configmap a/mayfly-trust-bundle, secret a/web-tls and 5 more\n",
		},
		{
			name: "all_held_with_the_delay_left",
			k:    bundlegate.Status{Tracking: true, BundleVersion: "b2", Objects: 9, PropagationDelay: "3m0s", PropagationLeft: "1m10s"},
			want: "kubernetes delivery: all 9 objects hold bundle b2; propagation delay 3m0s, 1m10s left\n",
		},
		{
			name: "follower_does_not_track",
			k:    bundlegate.Status{PropagationDelay: "3m0s"},
			want: "kubernetes delivery: not tracked on this replica (the leader tracks it)\n",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			st := withDelivery(Status{TrustDomain: "example.org", Ready: true, BundleVersion: "b2"}, tc.k)
			if err := printStatus(&buf, st, time.Now()); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(buf.String(), tc.want) {
				t.Errorf("status output\n%s\nlacks %q", buf.String(), tc.want)
			}
		})
	}
	t.Run("not_shown_while_the_CA_is_not_ready", func(t *testing.T) {
		if st := withDelivery(Status{NotReady: "no state"}, bundlegate.Status{Tracking: true}); st.Kubernetes != nil {
			t.Errorf("delivery shown for a CA that is not ready: %+v", st.Kubernetes)
		}
	})
}

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

// TestStatusJWTKeys: ca status lists the active, prepared and retired JWT
// keys with their kid, alg and times; a prepared key says when it signs
// (its activation point once every agent holds the bundle, the end of the
// wait for them at the latest).
func TestStatusJWTKeys(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	p := authority.DefaultPolicy()
	p.RootAckWait = time.Hour
	slot := func(curve elliptic.Curve, from time.Time) *authority.Slot {
		key, err := ecdsa.GenerateKey(curve, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		kid, err := jwtsvid.KeyID(key.Public())
		if err != nil {
			t.Fatal(err)
		}
		return &authority.Slot{Key: key, KeyID: kid, ValidFrom: from, ValidUntil: from.Add(24 * time.Hour)}
	}
	cur := slot(elliptic.P256(), now.Add(-20*time.Hour))
	next := slot(elliptic.P256(), now.Add(-time.Hour))
	old := slot(elliptic.P384(), now.Add(-44*time.Hour))
	published := now.Add(-10 * time.Minute)
	s := &authority.State{JWT: authority.Rotation{
		Current: cur, Next: next, NextPublishedAt: published,
		Retired: []authority.Retired{{KeyID: old.KeyID, Public: old.Key.Public(), Until: now.Add(30 * time.Minute)}},
	}}

	keys := jwtKeyInfos(s, p)
	if len(keys) != 3 {
		t.Fatalf("keys %+v, want active, prepared and retired", keys)
	}
	sch := p.JWTSchedule()
	wantActivate := s.JWT.ActivatePoint(sch)
	wantBy := published.Add(time.Hour) // the wait for the agents ends first
	if force := cur.ValidUntil.Add(-sch.ForceBefore); force.Before(wantBy) {
		wantBy = force
	}
	if wantBy.Before(wantActivate) {
		wantBy = wantActivate
	}
	for i, want := range []JWTKeyInfo{
		{KeyID: cur.KeyID, Alg: "ES256", State: JWTKeyActive, NotBefore: cur.ValidFrom, NotAfter: cur.ValidUntil},
		{KeyID: next.KeyID, Alg: "ES256", State: JWTKeyPrepared, NotBefore: next.ValidFrom, NotAfter: next.ValidUntil, PublishedAt: published, ActivatesAt: wantActivate, ActivatesBy: wantBy},
		{KeyID: old.KeyID, Alg: "ES384", State: JWTKeyRetired, PublishedUntil: now.Add(30 * time.Minute)},
	} {
		if keys[i] != want {
			t.Errorf("key %d:\n got %+v\nwant %+v", i, keys[i], want)
		}
	}

	st := Status{TrustDomain: "example.org", Ready: true, Agents: AgentCounts{Connected: 3, CurrentBundle: 2}, JWTKeys: keys}
	var out bytes.Buffer
	if err := printStatus(&out, st, now); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"JWT KEY", cur.KeyID[:16], "active", next.KeyID[:16], "prepared", old.KeyID[:16], "ES384", "retired",
		now.Add(30 * time.Minute).Format(time.RFC3339), "30m0s",
		"next JWT key " + next.KeyID + ": published " + published.Format(time.RFC3339) + "; 2 of 3 connected agents hold the current bundle",
		"by " + wantBy.Format(time.RFC3339) + " at the latest",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("status output lacks %q:\n%s", want, out.String())
		}
	}
	if keys := jwtKeyInfos(&authority.State{}, p); keys != nil {
		t.Errorf("a state without JWT keys lists %+v", keys)
	}
}
