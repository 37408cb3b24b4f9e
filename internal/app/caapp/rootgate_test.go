package caapp_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/app/caapp"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestKubernetesRootWaitsForDeliveryObjects runs the Kubernetes CA with no
// agent connected (the agents' acknowledgements hold): a requested root is
// prepared at once, but activates only once every WorkloadCertificate
// Secret holds it, and the propagation delay after the last one did.
func TestKubernetesRootWaitsForDeliveryObjects(t *testing.T) {
	c := startCluster(t, "mayfly-system", "app")
	ctx := context.Background()
	kube := c.Client
	create(t, kube.CoreV1().ServiceAccounts("app").Create, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "web"}})
	clock := rotate.NewFakeClock(time.Now())
	runCA(t, kubeConfig+"  leaderElection: false\n", caapp.Options{RestConfig: c.Config, Clock: clock})

	cl, err := client.New(c.Config, client.Options{Scheme: wcScheme(t)})
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.Create(ctx, &mayflyv1alpha1.WorkloadCertificate{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "web"},
		Spec:       mayflyv1alpha1.WorkloadCertificateSpec{ServiceAccountName: "web", SecretName: "web-tls"},
	}); err != nil {
		t.Fatal(err)
	}
	caCrt := func(name string) []byte {
		s, err := kube.CoreV1().Secrets("app").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil
		}
		return s.Data["ca.crt"]
	}
	wait.For(t, "the WorkloadCertificate Secret", func() bool { return caCrt("web-tls") != nil })
	// A Secret no running controller updates: its WorkloadCertificate is
	// gone and no garbage collector runs here.
	orphan := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "orphan-tls",
			Labels: map[string]string{mayflyv1alpha1.LabelWorkloadCertificate: "ghost"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: mayflyv1alpha1.GroupVersion.String(), Kind: "WorkloadCertificate",
				Name: "ghost", UID: uuid.NewUUID(), Controller: ptr.To(true)}}},
		Data: map[string][]byte{"ca.crt": caCrt("web-tls")},
	}
	orphan = create(t, kube.CoreV1().Secrets("app").Create, orphan)

	store := authority.NewSecretStore(kube, "mayfly-system", "mayfly-ca")
	state := func() *authority.State { s, _ := authoritytest.Stored(t, store); return s }
	root0 := state().Root.Current.Cert()
	if err := authority.RequestRootRotation(ctx, store); err != nil {
		t.Fatal(err)
	}
	wait.For(t, "the next root is prepared", func() bool { return state().Root.Next != nil })
	next := state().Root.Next.Cert()
	bundle := pki.EncodeCertificates(root0, next)
	wait.For(t, "the controller puts the next root into web-tls", func() bool { return bytes.Equal(caCrt("web-tls"), bundle) })

	activated := func() bool { return !state().Root.Current.Cert().Equal(root0) }
	// step advances the fake clock by the rotation loop's 10s retry and
	// waits until the loop planned again (armed its next 10s timer, beside
	// the eviction poller's, also every 10s) or the root activated.
	step := func() {
		t.Helper()
		clock.Advance(10 * time.Second)
		wait.For(t, "the rotation loop plans again", func() bool {
			return clock.TimersAt(clock.Now().Add(10*time.Second)) >= 2 || activated()
		})
	}
	for range 30 { // 5 minutes, beyond the 3m propagation delay
		step()
		if activated() {
			t.Fatal("the root activated while a WorkloadCertificate Secret lacked it")
		}
	}

	if _, err := kube.CoreV1().Secrets("app").Update(ctx, func() *corev1.Secret {
		orphan.Data["ca.crt"] = bundle
		return orphan
	}(), metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	fixed := clock.Now()
	for i := 0; !activated(); i++ {
		if i > 60 {
			t.Fatalf("the root did not activate %s after every Secret held it", clock.Now().Sub(fixed))
		}
		step()
	}
	if waited := clock.Now().Sub(fixed); waited < 3*time.Minute {
		t.Errorf("the root activated %s after the last Secret caught up, before the 3m propagation delay", waited)
	}
	if s := state(); !s.Root.Current.Cert().Equal(next) {
		t.Errorf("activated root %s, want the prepared next root %s", s.Root.Current.Cert().SerialNumber, next.SerialNumber)
	}
}
