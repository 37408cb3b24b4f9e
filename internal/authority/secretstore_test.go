package authority_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestSecretStore runs against a real API server; one server serves every
// subtest, each in its own namespace.
func TestSecretStore(t *testing.T) {
	c := cluster.Start(t)
	ctx := context.Background()
	newNamespace := func(t *testing.T) string {
		t.Helper()
		ns, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "mayfly-ca-"}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatalf("creating namespace: %v", err)
		}
		return ns.Name
	}

	t.Run("save and load round trip with compare-and-swap", func(t *testing.T) {
		ns := newNamespace(t)
		s := authority.NewSecretStore(c.Client, ns, "mayfly-ca")
		if _, err := s.Load(ctx); !errors.Is(err, authority.ErrNotFound) {
			t.Fatalf("Load before the Secret exists = %v, want ErrNotFound", err)
		}
		d1 := encode(t, bootstrap(t, newMinter(testPolicy()), t0))
		v1, err := s.Save(ctx, d1, "")
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		snap, err := s.Load(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if snap.Version != v1 || !reflect.DeepEqual(snap.Data, d1) {
			t.Fatal("Load does not return what Save wrote")
		}
		if _, err := s.Save(ctx, d1, ""); !errors.Is(err, authority.ErrConflict) {
			t.Fatalf("second create = %v, want ErrConflict", err)
		}
		d2 := encode(t, bootstrap(t, newMinter(testPolicy()), t0))
		v2, err := s.Save(ctx, d2, v1)
		if err != nil {
			t.Fatalf("update at the current version: %v", err)
		}
		if _, err := s.Save(ctx, d1, v1); !errors.Is(err, authority.ErrConflict) {
			t.Fatalf("update at a stale resourceVersion = %v, want ErrConflict", err)
		}
		if snap, err := s.Load(ctx); err != nil || snap.Version != v2 || !reflect.DeepEqual(snap.Data, d2) {
			t.Fatalf("after the refused update: %v, want the data of version %s", err, v2)
		}
		sec, err := c.Client.CoreV1().Secrets(ns).Get(ctx, "mayfly-ca", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sec.Type != corev1.SecretTypeOpaque || sec.Labels["app.kubernetes.io/component"] != "ca-state" {
			t.Errorf("Secret type %q labels %v", sec.Type, sec.Labels)
		}
		if err := c.Client.CoreV1().Secrets(ns).Delete(ctx, "mayfly-ca", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Save(ctx, d1, v2); !errors.Is(err, authority.ErrConflict) {
			t.Fatalf("update of a deleted Secret = %v, want ErrConflict", err)
		}
	})

	t.Run("two replicas on one Secret", func(t *testing.T) {
		ns := newNamespace(t)
		p := testPolicy()
		clock := rotate.NewFakeClock(t0)
		marker := &memMarker{} // the published bundle both replicas see
		replicas := []*authority.Manager{
			newManager(authority.NewSecretStore(c.Client, ns, "mayfly-ca"), clock, marker),
			newManager(authority.NewSecretStore(c.Client, ns, "mayfly-ca"), clock, marker),
		}

		// Both start at once: one bootstraps, the other uses its state.
		var wg sync.WaitGroup
		loadErrs := make([]error, 2)
		for i, m := range replicas {
			wg.Go(func() { loadErrs[i] = m.Load(ctx) })
		}
		wg.Wait()
		for i, err := range loadErrs {
			if err != nil {
				t.Fatalf("replica %d Load: %v", i, err)
			}
		}
		a, b := mustCurrent(t, replicas[0]), mustCurrent(t, replicas[1])
		if a.Version != b.Version || !a.State.Root.Current.Cert().Equal(b.State.Root.Current.Cert()) {
			t.Fatal("the replicas hold different states after starting together")
		}
		secretStore := authority.NewSecretStore(c.Client, ns, "mayfly-ca")
		_, v0 := authoritytest.Stored(t, secretStore)
		gen0 := a.State.Generation

		// Both reach the rotation point at the same instant.
		clock.Set(point(a.State.Intermediate.Current.Cert(), p.PrepareAt))
		waits := make([]time.Duration, 2)
		for i, m := range replicas {
			wg.Go(func() { waits[i] = m.RotateOnce(ctx) })
		}
		wg.Wait()
		stored, v := authoritytest.Stored(t, secretStore)
		if v == v0 || stored.Generation != gen0+1 {
			t.Fatalf("stored generation %d, want %d: exactly one replica must write", stored.Generation, gen0+1)
		}
		if (waits[0] == 0) == (waits[1] == 0) {
			t.Errorf("RotateOnce waits %v: want exactly one writer", waits)
		}
		for i, m := range replicas {
			if err := m.Reload(ctx); err != nil {
				t.Fatalf("replica %d Reload: %v", i, err)
			}
			l := mustCurrent(t, m)
			if l.Version != v || l.State.Intermediate.Next == nil || !l.State.Intermediate.Next.Cert().Equal(stored.Intermediate.Next.Cert()) {
				t.Errorf("replica %d did not converge on the stored state", i)
			}
		}

		// The Secret is deleted: a Reload makes the replica refuse to sign.
		if err := c.Client.CoreV1().Secrets(ns).Delete(ctx, "mayfly-ca", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		err := replicas[0].Reload(ctx)
		if !errors.Is(err, authority.ErrNotReady) {
			t.Fatalf("Reload after deletion = %v, want ErrNotReady", err)
		}
		ready := replicas[0].Ready()
		if ready == nil || !strings.Contains(ready.Error(), "Secret "+ns+"/mayfly-ca") {
			t.Fatalf("Ready() = %v, want an error naming Secret %s/mayfly-ca", ready, ns)
		}
		// A restarted replica must not mint a new root over the deleted state.
		restarted := newManager(authority.NewSecretStore(c.Client, ns, "mayfly-ca"), clock, marker)
		if err := restarted.Load(ctx); err == nil || !strings.Contains(err.Error(), "--allow-rebootstrap") {
			t.Fatalf("Load after deletion = %v, want a refusal naming --allow-rebootstrap", err)
		}
		if _, err := secretStore.Load(ctx); !errors.Is(err, authority.ErrNotFound) {
			t.Fatalf("the Secret was re-created (%v) by a replica that must refuse", err)
		}
	})
}
