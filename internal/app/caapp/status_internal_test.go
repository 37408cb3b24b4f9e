package caapp

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/controller/bundlegate"
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
