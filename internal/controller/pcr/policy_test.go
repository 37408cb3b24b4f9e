package pcr

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/mayfly-pki/mayfly/internal/policy"
)

func TestPlan(t *testing.T) {
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	day := lifetimePolicy{min: time.Hour, max: 24 * time.Hour}
	oldNB, farNA := now.Add(-time.Hour), now.Add(48*time.Hour)
	tests := []struct {
		name   string
		policy lifetimePolicy
		maxExp time.Duration
		nb, na time.Time
		want   leafPlan
	}{
		{"one_hour_request_gets_exactly_one_hour_with_the_backdate", day, time.Hour, oldNB, farNA,
			leafPlan{ttl: 59 * time.Minute, life: time.Hour, floor: time.Hour}},
		{"default_request_gets_24h", day, 24 * time.Hour, oldNB, farNA,
			leafPlan{ttl: 24*time.Hour - time.Minute, life: 24 * time.Hour, floor: time.Hour}},
		{"max_ttl_caps_long_requests", day, 91 * 24 * time.Hour, oldNB, farNA,
			leafPlan{ttl: 24*time.Hour - time.Minute, life: 24 * time.Hour, floor: time.Hour}},
		{"policy_max_below_request", lifetimePolicy{min: time.Hour, max: 2 * time.Hour}, 6 * time.Hour, oldNB, farNA,
			leafPlan{ttl: 2*time.Hour - time.Minute, life: 2 * time.Hour, floor: time.Hour}},
		{"floor_never_above_the_request", lifetimePolicy{min: 4 * time.Hour, max: 24 * time.Hour}, 2 * time.Hour, oldNB, farNA,
			leafPlan{ttl: 2*time.Hour - time.Minute, life: 2 * time.Hour, floor: 2 * time.Hour}},
		{"floor_is_policy_min_when_request_allows", lifetimePolicy{min: 4 * time.Hour, max: 24 * time.Hour}, 8 * time.Hour, oldNB, farNA,
			leafPlan{ttl: 8*time.Hour - time.Minute, life: 8 * time.Hour, floor: 4 * time.Hour}},
		{"young_intermediate_shortens_the_backdate_not_the_life", day, time.Hour, now.Add(-20 * time.Second), farNA,
			leafPlan{ttl: time.Hour - 20*time.Second, life: time.Hour, floor: time.Hour}},
		{"old_intermediate_caps_the_life_below_the_floor", day, 24 * time.Hour, oldNB, now.Add(30*time.Minute + 500*time.Millisecond),
			leafPlan{ttl: 30 * time.Minute, life: 31 * time.Minute, floor: time.Hour}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.policy.plan(now, tt.maxExp, tt.nb, tt.na); got != tt.want {
				t.Errorf("plan(maxExp %s) = %+v, want %+v", tt.maxExp, got, tt.want)
			}
		})
	}
}

func TestBeginRefreshAt(t *testing.T) {
	nb := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		life time.Duration
		want time.Duration // after nb
	}{
		{"half_of_one_hour", time.Hour, 30 * time.Minute},
		{"half_of_a_day", 24 * time.Hour, 12 * time.Hour},
		{"odd_seconds_truncate", time.Hour + time.Second, 30 * time.Minute},
		{"twenty_minutes_meets_both_margins", 20 * time.Minute, 10 * time.Minute},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := beginRefreshAt(nb, nb.Add(tt.life))
			if got.Sub(nb) != tt.want {
				t.Errorf("beginRefreshAt = nb+%s, want nb+%s", got.Sub(nb), tt.want)
			}
		})
	}
}

func testRequest() *certificatesv1.PodCertificateRequest {
	return &certificatesv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "req"},
		Spec: certificatesv1.PodCertificateRequestSpec{
			SignerName:         DefaultSignerName,
			PodName:            "web",
			PodUID:             "uid-1",
			ServiceAccountName: "web-sa",
			NodeName:           "node-1",
		},
	}
}

func testPod() *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns1", Name: "web", UID: "uid-1"},
		Spec:       corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "web-sa"},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning},
	}
}

func TestCheckPod(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*corev1.Pod) *corev1.Pod
		want   string
	}{
		{"allows_running_pod_on_its_node", func(p *corev1.Pod) *corev1.Pod { return p }, ""},
		{"denies_missing_pod", func(*corev1.Pod) *corev1.Pod { return nil }, ReasonPodNotFound},
		{"denies_pod_of_other_uid", func(p *corev1.Pod) *corev1.Pod { p.UID = "uid-2"; return p }, ReasonPodNotFound},
		{"denies_pod_of_other_namespace", func(p *corev1.Pod) *corev1.Pod { p.Namespace = "ns2"; return p }, ReasonPodNotFound},
		{"denies_pod_of_other_name", func(p *corev1.Pod) *corev1.Pod { p.Name = "db"; return p }, ReasonPodNotFound},
		{"denies_pod_on_other_node", func(p *corev1.Pod) *corev1.Pod { p.Spec.NodeName = "node-2"; return p }, ReasonWrongNode},
		{"denies_unscheduled_pod", func(p *corev1.Pod) *corev1.Pod { p.Spec.NodeName = ""; return p }, ReasonWrongNode},
		{"denies_other_service_account", func(p *corev1.Pod) *corev1.Pod { p.Spec.ServiceAccountName = "admin"; return p }, ReasonWrongServiceAccount},
		{"empty_service_account_is_default", func(p *corev1.Pod) *corev1.Pod { p.Spec.ServiceAccountName = ""; return p }, ReasonWrongServiceAccount},
		{"denies_deleted_pod", func(p *corev1.Pod) *corev1.Pod { p.DeletionTimestamp = &metav1.Time{}; return p }, ReasonPodTerminating},
		{"denies_succeeded_pod", func(p *corev1.Pod) *corev1.Pod { p.Status.Phase = corev1.PodSucceeded; return p }, ReasonPodTerminating},
		{"denies_failed_pod", func(p *corev1.Pod) *corev1.Pod { p.Status.Phase = corev1.PodFailed; return p }, ReasonPodTerminating},
		{"denies_mirror_pod", func(p *corev1.Pod) *corev1.Pod {
			p.Annotations = map[string]string{policy.MirrorPodAnnotation: "x"}
			return p
		}, ReasonMirrorPod},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var pod *policy.Pod
			if full := tt.mutate(testPod()); full != nil {
				p := policy.PodOf(full)
				pod = &p
			}
			d := checkPod(testRequest(), pod)
			got := ""
			if d != nil {
				got = d.reason
				if d.message == "" {
					t.Error("denial without a message")
				}
			}
			if got != tt.want {
				t.Errorf("checkPod reason = %q (%v), want %q", got, d, tt.want)
			}
		})
	}
}

func TestParseKey(t *testing.T) {
	csr := func(k crypto.Signer) []byte {
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	ec := func(c elliptic.Curve) crypto.Signer {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	badSig := csr(ec(elliptic.P256()))
	badSig[len(badSig)-3] ^= 0xff

	tests := []struct {
		name string
		der  []byte
		want string
	}{
		{"accepts_p256", csr(ec(elliptic.P256())), ""},
		{"accepts_p384", csr(ec(elliptic.P384())), ""},
		{"accepts_ed25519", csr(edKey), ""},
		{"denies_p521_as_unsupported", csr(ec(elliptic.P521())), ReasonUnsupportedKeyType},
		{"denies_garbage", []byte("not a csr"), ReasonInvalidCSR},
		{"denies_empty", nil, ReasonInvalidCSR},
		{"denies_bad_signature", badSig, ReasonInvalidCSR},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := testRequest()
			req.Spec.StubPKCS10Request = tt.der
			pub, d := parseKey(req)
			got := ""
			if d != nil {
				got = d.reason
			} else if pub == nil {
				t.Fatal("no key and no denial")
			}
			if got != tt.want {
				t.Errorf("parseKey reason = %q (%v), want %q", got, d, tt.want)
			}
		})
	}
}

func TestCheckUserAnnotations(t *testing.T) {
	req := testRequest()
	if d := checkUserAnnotations(req); d != nil {
		t.Fatalf("no annotations: %v", d)
	}
	req.Spec.UnverifiedUserAnnotations = map[string]string{"example.com/dns": "x"}
	if d := checkUserAnnotations(req); d == nil || d.reason != ReasonInvalidUserAnnotations {
		t.Fatalf("annotations: got %v, want %s", d, ReasonInvalidUserAnnotations)
	}
}

func TestIsTerminal(t *testing.T) {
	for _, ct := range []string{"Issued", "Denied", "Failed"} {
		req := testRequest()
		req.Status.Conditions = []metav1.Condition{{Type: ct, Status: metav1.ConditionTrue}}
		if !isTerminal(req) {
			t.Errorf("%s is not terminal", ct)
		}
	}
	if isTerminal(testRequest()) {
		t.Error("a request without conditions is terminal")
	}
}
