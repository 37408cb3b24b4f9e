package workloadcert_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/rest"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// validity returns the issued and expiry series of ns/name in g, and
// whether both exist.
func validity(t testing.TB, g prometheus.Gatherer, ns, name string) (issued, expiry float64, ok bool) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("Gather: %v", err)
	}
	issued, ok1 := promtest.Find(mfs, "mayfly_ca_workloadcertificate_issued_timestamp_seconds", "namespace="+ns, "name="+name)
	expiry, ok2 := promtest.Find(mfs, "mayfly_ca_workloadcertificate_expiry_timestamp_seconds", "namespace="+ns, "name="+name)
	return issued, expiry, ok1 && ok2
}

// waitValidity waits until g exports notBefore/notAfter of leaf for ns/name.
func waitValidity(t testing.TB, g prometheus.Gatherer, what, ns, name string, notBefore, notAfter time.Time) {
	t.Helper()
	eventually(t, what, func(context.Context) (bool, string) {
		nb, na, ok := validity(t, g, ns, name)
		return ok && nb == float64(notBefore.Unix()) && na == float64(notAfter.Unix()),
			fmt.Sprintf("exported %v: issued %v expiry %v, want %d %d", ok, nb, na, notBefore.Unix(), notAfter.Unix())
	})
}

// TestValidityMetrics: the validity of the certificate in each
// WorkloadCertificate's Secret is exported on every reconcile, by a
// controller that issued it or finds it (a new leader), through failures
// that leave the Secret alone, and dropped with the object.
func TestValidityMetrics(t *testing.T) {
	clock := rotate.NewFakeClock(time.Now())
	e := start(t, clock, nil, 0)
	ctx := context.Background()
	e.create(t, namespace("app"), serviceAccount("app", "web"), workloadCert("app", "web", "web", "web-tls"))
	first := e.waitSecret(t, "app", "web", "web-tls", "").chain[0]
	waitValidity(t, e.reg, "the issuing controller exports the Secret's certificate", "app", "web", first.NotBefore, first.NotAfter)

	// A second controller (as a new leader after a failover) finds the
	// certificate valid and exports it without issuing.
	next := prometheus.NewRegistry()
	e.runController(t, rest.CopyConfig(e.c.Config), 0, next)
	waitValidity(t, next, "a controller that did not issue exports the Secret's certificate", "app", "web", first.NotBefore, first.NotAfter)
	if v, _ := promtest.Value(t, next, "mayfly_ca_workloadcertificates_issued_total", "result=issued"); v != 0 {
		t.Errorf("the second controller issued %v certificates, want 0", v)
	}

	// Renewal moves the series to the new certificate.
	wc, err := e.get(ctx, "app", "web")
	if err != nil {
		t.Fatal(err)
	}
	clock.Set(wc.Status.RenewalTime.Add(time.Second))
	touch(t, e, "app", "web", "renew")
	renewed := e.waitSecret(t, "app", "web", "web-tls", first.SerialNumber.Text(16)).chain[0]
	waitValidity(t, e.reg, "the renewed certificate is exported", "app", "web", renewed.NotBefore, renewed.NotAfter)

	// The ServiceAccount goes: the controller refuses to renew and leaves
	// the Secret as it is; the series keep describing it, so the
	// certificate alerts fire as it ages.
	if err := e.cl.Delete(ctx, serviceAccount("app", "web")); err != nil {
		t.Fatal(err)
	}
	e.waitCondition(t, "app", "web", mayflyv1alpha1.ConditionFailed, "True", mayflyv1alpha1.ReasonServiceAccountNotFound)
	for _, g := range []prometheus.Gatherer{e.reg, next} {
		if nb, na, ok := validity(t, g, "app", "web"); !ok || nb != float64(renewed.NotBefore.Unix()) || na != float64(renewed.NotAfter.Unix()) {
			t.Errorf("after the failure: exported %v, issued %v expiry %v, want the Secret's certificate %s..%s", ok, nb, na, renewed.NotBefore, renewed.NotAfter)
		}
	}

	// The WorkloadCertificate goes: so do its series, on every replica.
	if err := e.cl.Delete(ctx, wc); err != nil {
		t.Fatal(err)
	}
	for i, g := range []prometheus.Gatherer{e.reg, next} {
		eventually(t, fmt.Sprintf("controller %d dropped the series of the deleted object", i), func(context.Context) (bool, string) {
			_, _, ok := validity(t, g, "app", "web")
			return !ok, "still exported"
		})
	}
}
