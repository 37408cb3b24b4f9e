package workloadcert_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// TestWorkloadCertificate runs the controller against a real API server;
// the subtests share it and run in order (the clock and the CA are shared).
func TestWorkloadCertificate(t *testing.T) {
	clock := rotate.NewFakeClock(time.Now())
	e := start(t, clock, nil, 0)
	ctx := context.Background()
	e.create(t, namespace("app"), namespace("other-ns"), serviceAccount("app", "web"), service("app", "web"), service("other-ns", "x"))

	var first *issued
	t.Run("issues_a_Secret_that_verifies_against_the_root", func(t *testing.T) {
		wc := workloadCert("app", "web", "web", "web-tls")
		wc.Spec.SecretTemplate = &mayflyv1alpha1.SecretTemplate{Labels: map[string]string{"team": "payments"}, Annotations: map[string]string{"example.com/note": "hi"}}
		e.create(t, wc)
		got := e.waitSecret(t, "app", "web", "web-tls", "")
		first = got
		leaf := got.chain[0]
		id, err := pki.VerifyX509SVID(leaf, got.chain[1:], e.ca.Bundle(), clock.Now(), x509.ExtKeyUsageServerAuth)
		if err != nil {
			t.Fatalf("tls.crt does not verify against the root: %v", err)
		}
		if want := "spiffe://example.org/ns/app/sa/web"; id.String() != want {
			t.Errorf("ID %s, want %s", id, want)
		}
		if len(got.chain) != 2 || !got.chain[1].Equal(e.ca.Intermediate) {
			t.Errorf("tls.crt holds %d certificates, want the leaf and the intermediate", len(got.chain))
		}
		if len(got.roots) != 1 || !got.roots[0].Equal(e.ca.Root) {
			t.Errorf("ca.crt holds %d certificates, want the root", len(got.roots))
		}
		if !bytes.HasPrefix(got.secret.Data["tls.key"], []byte("-----BEGIN PRIVATE KEY-----")) {
			t.Errorf("tls.key is not PKCS#8")
		}
		if kt, _ := pki.KeyTypeOf(leaf.PublicKey); kt != pki.KeyTypeECDSAP256 {
			t.Errorf("key type %s, want the default ECDSA P-256", kt)
		}
		if ttl := leaf.NotAfter.Sub(leaf.NotBefore); ttl < time.Hour || ttl > time.Hour+time.Minute {
			t.Errorf("lifetime %s, want the default 1h (+1m backdating)", ttl)
		}
		s := got.secret
		if s.Type != corev1.SecretTypeTLS {
			t.Errorf("type %s", s.Type)
		}
		if s.Labels["team"] != "payments" || s.Labels[mayflyv1alpha1.LabelWorkloadCertificate] != "web" || s.Annotations["example.com/note"] != "hi" {
			t.Errorf("labels %v annotations %v", s.Labels, s.Annotations)
		}
		ref := metav1.GetControllerOf(s)
		if ref == nil || ref.Kind != "WorkloadCertificate" || ref.Name != "web" || ref.APIVersion != "mayfly.dev/v1alpha1" {
			t.Errorf("controller reference %+v", ref)
		}

		w, err := e.get(ctx, "app", "web")
		if err != nil {
			t.Fatal(err)
		}
		st := w.Status
		if st.SPIFFEID != id.String() || !st.NotAfter.Time.Equal(leaf.NotAfter) || !st.NotBefore.Time.Equal(leaf.NotBefore) || st.ObservedGeneration != w.Generation {
			t.Errorf("status %+v does not describe the certificate (notAfter %s)", st, leaf.NotAfter)
		}
		life := leaf.NotAfter.Sub(leaf.NotBefore)
		lo, hi := leaf.NotBefore.Add(life*4/10-time.Second), leaf.NotBefore.Add(life*6/10+time.Second)
		if st.RenewalTime == nil || st.RenewalTime.Time.Before(lo) || st.RenewalTime.After(hi) {
			t.Errorf("renewalTime %v, want within [%s, %s] (50%% ±10%%)", st.RenewalTime, lo, hi)
		}
		if w.Spec.TTL == nil || w.Spec.TTL.Duration != time.Hour || w.Spec.KeyType != mayflyv1alpha1.KeyTypeECDSAP256 {
			t.Errorf("defaults: ttl %v keyType %q", w.Spec.TTL, w.Spec.KeyType)
		}
		for typ, want := range map[string]metav1.ConditionStatus{"Ready": "True", "Issuing": "False", "Failed": "False"} {
			if c := meta.FindStatusCondition(st.Conditions, typ); c == nil || c.Status != want || c.Reason != mayflyv1alpha1.ReasonIssued {
				t.Errorf("condition %s = %+v, want %s/Issued", typ, c, want)
			}
		}

		logs := e.logs.String()
		if !has(logs, `"msg":"audit"`) || !has(logs, `"spiffe_id":"spiffe://example.org/ns/app/sa/web"`) || !has(logs, `"serial":"`+got.serial()+`"`) ||
			!has(logs, `"secret_name":"web-tls"`) || !has(logs, `"not_after":"`) {
			t.Errorf("no audit line for the issuance in:\n%s", logs)
		}
		if has(logs, "PRIVATE KEY") || has(logs, "BEGIN CERTIFICATE") {
			t.Error("the log holds key or certificate material")
		}
		if n := e.counter(t, "issued"); n < 1 {
			t.Errorf("mayfly_ca_workloadcertificates_issued_total{result=issued} = %v", n)
		}
	})

	t.Run("prints_the_columns", func(t *testing.T) {
		raw, err := e.c.Client.Discovery().RESTClient().Get().AbsPath("/apis/mayfly.dev/v1alpha1/namespaces/app/workloadcertificates").
			SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").Do(ctx).Raw()
		if err != nil {
			t.Fatal(err)
		}
		var table metav1.Table
		if err := json.Unmarshal(raw, &table); err != nil {
			t.Fatal(err)
		}
		var cols []string
		for _, c := range table.ColumnDefinitions {
			cols = append(cols, strings.ToUpper(c.Name))
		}
		if want := []string{"NAME", "SECRET", "SPIFFE ID", "READY", "NOT AFTER", "AGE"}; !slices.Equal(cols, want) {
			t.Fatalf("columns %v, want %v", cols, want)
		}
		if len(table.Rows) != 1 {
			t.Fatalf("%d rows", len(table.Rows))
		}
		cells := fmt.Sprint(table.Rows[0].Cells[:4])
		if want := "[web web-tls spiffe://example.org/ns/app/sa/web True]"; cells != want {
			t.Errorf("row %s, want %s", cells, want)
		}
		if na, _ := table.Rows[0].Cells[4].(string); na != first.chain[0].NotAfter.UTC().Format(time.RFC3339) {
			t.Errorf("NOT AFTER %v, want %s", table.Rows[0].Cells[4], first.chain[0].NotAfter.UTC().Format(time.RFC3339))
		}
	})

	t.Run("allows_DNS_names_of_Services_in_its_own_namespace", func(t *testing.T) {
		e.create(t, workloadCert("app", "dns", "web", "dns-tls", "web.app.svc", "web.app.svc.cluster.local"))
		got := e.waitSecret(t, "app", "dns", "dns-tls", "")
		if want := []string{"web.app.svc", "web.app.svc.cluster.local"}; !slices.Equal(got.chain[0].DNSNames, want) {
			t.Errorf("DNS names %v, want %v", got.chain[0].DNSNames, want)
		}
	})

	t.Run("denies_a_DNS_name_of_another_namespace_with_the_field_path", func(t *testing.T) {
		denied := e.counter(t, "denied")
		e.create(t, workloadCert("app", "foreign-dns", "web", "foreign-dns-tls", "web.app.svc", "x.other-ns.svc"))
		wc := e.waitCondition(t, "app", "foreign-dns", mayflyv1alpha1.ConditionFailed, "True", mayflyv1alpha1.ReasonInvalidSpec)
		msg := meta.FindStatusCondition(wc.Status.Conditions, mayflyv1alpha1.ConditionFailed).Message
		if want := `spec.dnsNames[1]: policy: rule service-dns-name: dns name "x.other-ns.svc" is not a Service name of namespace app`; !has(msg, want) {
			t.Errorf("message %q lacks %q", msg, want)
		}
		if c := meta.FindStatusCondition(wc.Status.Conditions, mayflyv1alpha1.ConditionReady); c == nil || c.Status != "False" {
			t.Errorf("Ready = %+v, want False", c)
		}
		var s corev1.Secret
		if err := e.cl.Get(ctx, client.ObjectKey{Namespace: "app", Name: "foreign-dns-tls"}, &s); !apierrors.IsNotFound(err) {
			t.Errorf("Secret of a denied spec: %v", err)
		}
		if e.counter(t, "denied") <= denied {
			t.Error("the denial was not counted")
		}
	})

	t.Run("issues_once_a_missing_Service_and_ServiceAccount_exist", func(t *testing.T) {
		e.create(t, workloadCert("app", "late", "late-sa", "late-tls", "late.app.svc"))
		wc := e.waitCondition(t, "app", "late", mayflyv1alpha1.ConditionFailed, "True", mayflyv1alpha1.ReasonInvalidSpec)
		if msg := meta.FindStatusCondition(wc.Status.Conditions, "Failed").Message; !has(msg, `spec.dnsNames[0]: policy: rule service-dns-name: "late.app.svc" names Service "late", which does not exist in namespace app`) {
			t.Errorf("message %q", msg)
		}
		e.create(t, service("app", "late"))
		wc = e.waitCondition(t, "app", "late", mayflyv1alpha1.ConditionFailed, "True", mayflyv1alpha1.ReasonServiceAccountNotFound)
		if msg := meta.FindStatusCondition(wc.Status.Conditions, "Failed").Message; !has(msg, `spec.serviceAccountName: ServiceAccount "late-sa" does not exist in namespace app`) {
			t.Errorf("message %q", msg)
		}
		e.create(t, serviceAccount("app", "late-sa"))
		e.waitSecret(t, "app", "late", "late-tls", "")
	})

	t.Run("the_API_rejects_invalid_specs", func(t *testing.T) {
		ttl := func(d time.Duration) *metav1.Duration { return &metav1.Duration{Duration: d} }
		names := make([]string, 33)
		for i := range names {
			names[i] = fmt.Sprintf("s%d.app.svc", i)
		}
		for _, tc := range []struct {
			name   string
			change func(*mayflyv1alpha1.WorkloadCertificateSpec)
			want   string
		}{
			{"secret_name_not_a_subdomain", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.SecretName = "Bad_Name" }, "spec.secretName"},
			{"ttl_below_5m", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.TTL = ttl(time.Minute) }, "spec.ttl: Invalid value"},
			{"ttl_above_24h", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.TTL = ttl(25 * time.Hour) }, "must be between 5m and 24h"},
			{"33_dns_names", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = names }, "spec.dnsNames: Too many"},
			{"uppercase_dns_name", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.DNSNames = []string{"Web.app.svc"} }, "spec.dnsNames[0]"},
			{"unknown_key_type", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.KeyType = "DSA1024" }, "spec.keyType: Unsupported value"},
			{"reserved_label", func(s *mayflyv1alpha1.WorkloadCertificateSpec) {
				s.SecretTemplate = &mayflyv1alpha1.SecretTemplate{Labels: map[string]string{mayflyv1alpha1.LabelWorkloadCertificate: "x"}}
			}, "spec.secretTemplate.labels"},
			{"no_service_account", func(s *mayflyv1alpha1.WorkloadCertificateSpec) { s.ServiceAccountName = "" }, "spec.serviceAccountName"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				wc := workloadCert("app", "invalid", "web", "invalid-tls")
				tc.change(&wc.Spec)
				err := e.cl.Create(ctx, wc)
				if !apierrors.IsInvalid(err) {
					t.Fatalf("create: %v, want Invalid", err)
				}
				if !has(err.Error(), tc.want) {
					t.Errorf("error %q lacks %q", err, tc.want)
				}
			})
		}
		wc := workloadCert("app", "valid-ttl", "web", "valid-ttl-tls")
		wc.Spec.TTL = ttl(5 * time.Minute)
		wc.Spec.KeyType = mayflyv1alpha1.KeyTypeEd25519
		if err := e.cl.Create(ctx, wc); err != nil {
			t.Fatalf("ttl 5m, Ed25519: %v", err)
		}
		got := e.waitSecret(t, "app", "valid-ttl", "valid-ttl-tls", "")
		if kt, _ := pki.KeyTypeOf(got.chain[0].PublicKey); kt != pki.KeyTypeEd25519 {
			t.Errorf("key type %s", kt)
		}
	})

	t.Run("never_overwrites_a_foreign_Secret", func(t *testing.T) {
		foreign := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "app", Name: "taken"}, Data: map[string][]byte{"password": []byte("hunter2")}}
		e.create(t, foreign)
		e.create(t, workloadCert("app", "taker", "web", "taken"))
		wc := e.waitCondition(t, "app", "taker", mayflyv1alpha1.ConditionReady, "False", mayflyv1alpha1.ReasonSecretNotOwned)
		msg := meta.FindStatusCondition(wc.Status.Conditions, "Ready").Message
		if !has(msg, "Secret app/taken exists and is not controlled by this WorkloadCertificate") || !has(msg, "Delete that Secret, or set spec.secretName") {
			t.Errorf("message %q does not say what to do", msg)
		}
		if !meta.IsStatusConditionTrue(wc.Status.Conditions, mayflyv1alpha1.ConditionFailed) {
			t.Errorf("Failed is not True: %v", wc.Status.Conditions)
		}
		var s corev1.Secret
		if err := e.cl.Get(ctx, client.ObjectKeyFromObject(foreign), &s); err != nil {
			t.Fatal(err)
		}
		if s.ResourceVersion != foreign.ResourceVersion || len(s.Data) != 1 || string(s.Data["password"]) != "hunter2" || len(s.OwnerReferences) != 0 {
			t.Errorf("the foreign Secret was changed: rv %s->%s, data keys %d, owners %v", foreign.ResourceVersion, s.ResourceVersion, len(s.Data), s.OwnerReferences)
		}
	})

	t.Run("restores_a_deleted_Secret", func(t *testing.T) {
		if err := e.cl.Delete(ctx, first.secret); err != nil {
			t.Fatal(err)
		}
		first = e.waitSecret(t, "app", "web", "web-tls", first.serial())
	})

	t.Run("restores_a_Secret_whose_key_was_replaced", func(t *testing.T) {
		other, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		pemKey, err := pki.MarshalPrivateKeyPEM(other)
		if err != nil {
			t.Fatal(err)
		}
		s := first.secret.DeepCopy()
		s.Data["tls.key"] = pemKey
		if err := e.cl.Update(ctx, s); err != nil {
			t.Fatal(err)
		}
		first = e.waitSecret(t, "app", "web", "web-tls", first.serial())
	})

	t.Run("renews_after_the_renewal_time", func(t *testing.T) {
		wc, err := e.get(ctx, "app", "web")
		if err != nil {
			t.Fatal(err)
		}
		old := first.serial()
		clock.Set(wc.Status.RenewalTime.Add(-time.Minute))
		touch(t, e, "app", "web", "before")
		// Not due yet: the same certificate, observed after the touch.
		eventually(t, "the controller saw the touch", func(ctx context.Context) (bool, string) {
			got, err := e.secret(ctx, "app", "web-tls")
			return err == nil && got.serial() == old, fmt.Sprint(err)
		})
		clock.Set(wc.Status.RenewalTime.Add(time.Second))
		touch(t, e, "app", "web", "after")
		first = e.waitSecret(t, "app", "web", "web-tls", old)
		if !first.chain[0].NotBefore.After(wc.Status.NotBefore.Time) {
			t.Errorf("renewed notBefore %s is not after %s", first.chain[0].NotBefore, wc.Status.NotBefore)
		}
	})

	t.Run("updates_ca.crt_when_the_bundle_changes", func(t *testing.T) {
		next := testca.New(t, testca.WithTrustDomain("example.org"))
		serial := first.serial()
		// A new root is published next to the old one: ca.crt follows, the
		// certificate stays.
		e.auth.Set(fakeauthority.Loaded(e.ca, "v2", e.ca.Root, next.Root), nil)
		eventually(t, "ca.crt holds both roots", func(ctx context.Context) (bool, string) {
			got, err := e.secret(ctx, "app", "web-tls")
			if err != nil {
				return false, err.Error()
			}
			return len(got.roots) == 2 && got.roots[1].Equal(next.Root) && got.serial() == serial, fmt.Sprintf("%d roots, serial %s", len(got.roots), got.serial())
		})
		// The old root goes: the certificate no longer verifies, so a new
		// one from the new CA replaces it.
		e.auth.Set(fakeauthority.Loaded(next, "v3"), nil)
		got := e.waitSecret(t, "app", "web", "web-tls", serial)
		if _, err := pki.VerifyX509SVID(got.chain[0], got.chain[1:], next.Bundle(), clock.Now(), x509.ExtKeyUsageServerAuth); err != nil {
			t.Errorf("the new certificate does not verify against the new root: %v", err)
		}
		if len(got.roots) != 1 || !got.roots[0].Equal(next.Root) {
			t.Errorf("ca.crt holds %d roots, want the new root", len(got.roots))
		}
		e.ca = next
	})

	t.Run("waits_while_the_CA_is_not_ready", func(t *testing.T) {
		l, _ := e.auth.Current()
		e.auth.Set(nil, fmt.Errorf("CA is not ready: state not loaded yet"))
		e.create(t, workloadCert("app", "early", "web", "early-tls"))
		wc := e.waitCondition(t, "app", "early", mayflyv1alpha1.ConditionIssuing, "True", mayflyv1alpha1.ReasonCANotReady)
		if c := meta.FindStatusCondition(wc.Status.Conditions, "Ready"); c == nil || c.Status != "False" || c.Reason != mayflyv1alpha1.ReasonCANotReady {
			t.Errorf("Ready = %+v", c)
		}
		e.auth.Set(l, nil)
		e.waitSecret(t, "app", "early", "early-tls", "")
	})

	t.Run("updates_ca.crt_of_a_WorkloadCertificate_that_cannot_renew", func(t *testing.T) {
		e.create(t, serviceAccount("app", "leaving"), workloadCert("app", "leaving", "leaving", "leaving-tls"))
		before := e.waitSecret(t, "app", "leaving", "leaving-tls", "")
		if err := e.cl.Delete(ctx, serviceAccount("app", "leaving")); err != nil {
			t.Fatal(err)
		}
		e.waitCondition(t, "app", "leaving", mayflyv1alpha1.ConditionFailed, "True", mayflyv1alpha1.ReasonServiceAccountNotFound)
		// A new root is published: the certificate cannot be renewed (no
		// ServiceAccount), yet ca.crt must hold the new root before it signs.
		l, _ := e.auth.Current()
		third := testca.New(t, testca.WithTrustDomain("example.org"))
		e.auth.Set(fakeauthority.Loaded(e.ca, "v4", e.ca.Root, third.Root), nil)
		eventually(t, "ca.crt of the failed WorkloadCertificate's Secret holds both roots", func(ctx context.Context) (bool, string) {
			got, err := e.secret(ctx, "app", "leaving-tls")
			if err != nil {
				return false, err.Error()
			}
			return len(got.roots) == 2 && got.roots[1].Equal(third.Root) && got.serial() == before.serial(),
				fmt.Sprintf("%d roots, serial %s (was %s)", len(got.roots), got.serial(), before.serial())
		})
		e.auth.Set(l, nil)
	})

	t.Run("a_spec_change_reissues_and_a_renamed_Secret_replaces_the_old_one", func(t *testing.T) {
		wc, err := e.get(ctx, "app", "web")
		if err != nil {
			t.Fatal(err)
		}
		wc.Spec.KeyType = mayflyv1alpha1.KeyTypeECDSAP384
		wc.Spec.SecretName = "web-tls-2"
		if err := e.cl.Update(ctx, wc); err != nil {
			t.Fatal(err)
		}
		got := e.waitSecret(t, "app", "web", "web-tls-2", "")
		if kt, _ := pki.KeyTypeOf(got.chain[0].PublicKey); kt != pki.KeyTypeECDSAP384 {
			t.Errorf("key type %s", kt)
		}
		eventually(t, "the old Secret is gone", func(ctx context.Context) (bool, string) {
			err := e.cl.Get(ctx, client.ObjectKey{Namespace: "app", Name: "web-tls"}, &corev1.Secret{})
			return apierrors.IsNotFound(err), fmt.Sprint(err)
		})
	})
}

// touch sets an annotation, which makes the controller look at the object.
func touch(t *testing.T, e *env, ns, name, value string) {
	t.Helper()
	wc, err := e.get(context.Background(), ns, name)
	if err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(wc.DeepCopy())
	if wc.Annotations == nil {
		wc.Annotations = map[string]string{}
	}
	wc.Annotations["test.mayfly.dev/touch"] = value
	if err := e.cl.Patch(context.Background(), wc, patch); err != nil {
		t.Fatal(err)
	}
}
