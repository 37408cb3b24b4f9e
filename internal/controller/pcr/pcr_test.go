package pcr_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	certificatesv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/controller/pcr"
	"github.com/mayfly-pki/mayfly/internal/kubenodes"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fakeauthority"
	"github.com/mayfly-pki/mayfly/internal/test/logbuf"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// logBuffer collects JSON log lines from several goroutines.
type logBuffer struct{ logbuf.Buffer }

// lines returns the decoded log lines whose field key equals value.
func (b *logBuffer) lines(t *testing.T, key, value string) []map[string]any {
	t.Helper()
	data := b.Bytes()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		if m[key] == value {
			out = append(out, m)
		}
	}
	return out
}

type env struct {
	c      *cluster.Cluster
	client client.Client
}

func newEnv(t *testing.T) *env {
	t.Helper()
	c := cluster.Start(t)
	cl, err := client.New(c.Config, client.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &env{c: c, client: cl}
}

// signingCA is a test CA whose intermediate outlives every request the
// signer may issue (48h, above the 24h cap).
func signingCA(t *testing.T) *testca.CA {
	t.Helper()
	return testca.New(t, testca.WithIntermediateTTL(48*time.Hour))
}

// podCache starts a pod cache on the env's API server, running until the
// test ends.
func (e *env) podCache(t *testing.T) *kubenodes.PodCache {
	t.Helper()
	pods := kubenodes.NewPodCache(e.c.Client, 0)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = pods.Start(ctx) }()
	return pods
}

// startSigner runs r in a new manager whose cache holds only r's signer's
// requests, until the test ends.
func (e *env) startSigner(t *testing.T, r *pcr.Reconciler) {
	t.Helper()
	mgr := cluster.NewManager(t, e.c.Config, nil, map[client.Object]cache.ByObject{
		&certificatesv1.PodCertificateRequest{}: pcr.CacheByObject(r.SignerName),
	})
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	cluster.RunManager(t, mgr)
}

func (e *env) namespace(t *testing.T, name string) {
	t.Helper()
	if err := e.client.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
}

// pod creates a scheduled pod (no kubelet runs: it stays Pending).
func (e *env) pod(t *testing.T, ns, name, node, sa string, finalizers ...string) *corev1.Pod {
	t.Helper()
	p := cluster.ScheduledPod(ns, name, sa, node)
	p.Finalizers = finalizers
	if err := e.client.Create(context.Background(), p); err != nil {
		t.Fatal(err)
	}
	return p
}

type request struct {
	name, signer     string
	pod              *corev1.Pod
	podName          string
	podUID           types.UID
	node, sa         string
	maxExp           int32
	key              crypto.Signer
	annotations      map[string]string
	wantType, reason string
}

func (e *env) createPCR(t *testing.T, ns string, r request) {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, r.key)
	if err != nil {
		t.Fatal(err)
	}
	podName, podUID := r.podName, r.podUID
	if r.pod != nil {
		podName, podUID = r.pod.Name, r.pod.UID
	}
	req := &certificatesv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: r.name},
		Spec: certificatesv1.PodCertificateRequestSpec{
			SignerName:                r.signer,
			PodName:                   podName,
			PodUID:                    podUID,
			ServiceAccountName:        r.sa,
			ServiceAccountUID:         uuid.NewUUID(),
			NodeName:                  types.NodeName(r.node),
			NodeUID:                   uuid.NewUUID(),
			MaxExpirationSeconds:      ptr.To(r.maxExp),
			StubPKCS10Request:         der,
			UnverifiedUserAnnotations: r.annotations,
		},
	}
	if err := e.client.Create(context.Background(), req); err != nil {
		t.Fatalf("create PodCertificateRequest %s: %v", r.name, err)
	}
}

func (e *env) get(t *testing.T, ns, name string) *certificatesv1.PodCertificateRequest {
	t.Helper()
	var req certificatesv1.PodCertificateRequest
	if err := e.client.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &req); err != nil {
		t.Fatal(err)
	}
	return &req
}

// waitDecided polls until the request carries a condition.
func (e *env) waitDecided(t *testing.T, ns, name string) *certificatesv1.PodCertificateRequest {
	t.Helper()
	var req *certificatesv1.PodCertificateRequest
	wait.Within(t, "a decision on PodCertificateRequest "+ns+"/"+name, cluster.PollTimeout, cluster.PollEvery, func() bool {
		req = e.get(t, ns, name)
		return len(req.Status.Conditions) > 0
	})
	return req
}

// waitLog polls until a log line has msg and its error contains substr.
func waitLog(t *testing.T, logs *logBuffer, pcrName, substr string) {
	t.Helper()
	wait.Within(t, "a log line for "+pcrName+" with "+strconv.Quote(substr), cluster.PollTimeout, cluster.PollEvery, func() bool {
		for _, l := range logs.lines(t, "pcr", pcrName) {
			if e, _ := l["error"].(string); strings.Contains(e, substr) {
				return true
			}
		}
		return false
	})
}

func ecKey(t *testing.T, c elliptic.Curve) crypto.Signer {
	t.Helper()
	k, err := ecdsa.GenerateKey(c, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func counter(t *testing.T, reg *prometheus.Registry, result string) float64 {
	t.Helper()
	v, ok := promtest.Value(t, reg, "mayfly_ca_podcertificaterequests_total", "result="+result)
	if !ok {
		t.Fatalf("no mayfly_ca_podcertificaterequests_total{result=%q}", result)
	}
	return v
}

// checkIssued checks an Issued request against the API rules and the
// X.509-SVID rules: chain to the root, ID of the pod's ns/sa, key of the
// CSR, lifetime, refresh point.
func checkIssued(t *testing.T, req *certificatesv1.PodCertificateRequest, tca *testca.CA, key crypto.Signer, wantLife time.Duration) {
	t.Helper()
	certs, err := pki.DecodeCertificates([]byte(req.Status.CertificateChain), pki.PEMLimits{})
	if err != nil {
		t.Fatalf("certificateChain: %v", err)
	}
	if len(certs) != 2 || !certs[1].Equal(tca.Intermediate) {
		t.Fatalf("chain has %d certificates, want leaf + the intermediate", len(certs))
	}
	leaf := certs[0]
	id, err := pki.VerifyX509SVID(leaf, certs[1:], tca.Bundle(), time.Now(), x509.ExtKeyUsageClientAuth)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	wantID, err := pki.WorkloadID(tca.TrustDomain, req.Namespace, req.Spec.ServiceAccountName)
	if err != nil {
		t.Fatal(err)
	}
	if id != wantID {
		t.Errorf("ID = %s, want %s", id, wantID)
	}
	if pub, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !pub.Equal(key.Public()) {
		t.Error("leaf is not issued to the CSR's key")
	}
	if !req.Status.NotBefore.Time.Equal(leaf.NotBefore) || !req.Status.NotAfter.Time.Equal(leaf.NotAfter) {
		t.Errorf("status times %s..%s, leaf %s..%s", req.Status.NotBefore, req.Status.NotAfter, leaf.NotBefore, leaf.NotAfter)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life != wantLife {
		t.Errorf("lifetime %s, want %s", life, wantLife)
	}
	if d := time.Since(leaf.NotBefore); d < 0 || d > 2*time.Minute {
		t.Errorf("notBefore %s is %s before now", leaf.NotBefore, d)
	}
	wantRefresh := leaf.NotBefore.Add(wantLife / 2)
	if !req.Status.BeginRefreshAt.Time.Equal(wantRefresh) {
		t.Errorf("beginRefreshAt %s, want %s (half of the life)", req.Status.BeginRefreshAt, wantRefresh)
	}
}

func TestSigner(t *testing.T) {
	e := newEnv(t)
	tca := signingCA(t)
	pods := e.podCache(t)

	logs := &logBuffer{}
	reg := prometheus.NewRegistry()
	e.startSigner(t, &pcr.Reconciler{
		Authority:   fakeauthority.New(fakeauthority.Loaded(tca, "v1"), nil),
		Pods:        pods,
		TrustDomain: tca.TrustDomain,
		Logger:      slog.New(slog.NewJSONHandler(logs, nil)),
		Registerer:  reg,
	})

	const ns = "team-a"
	e.namespace(t, ns)
	web := e.pod(t, ns, "web", "node-1", "web-sa")
	dying := e.pod(t, ns, "dying", "node-1", "web-sa", "mayfly.dev/test-hold")
	if err := e.client.Delete(context.Background(), dying); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Let the held pod go, so the namespace could be deleted.
		_ = e.client.Patch(context.Background(), dying, client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"finalizers":null}}`)))
	})

	// A request for another signer, created first: the signer must never
	// touch it.
	foreign := request{name: "foreign", signer: "example.com/other", pod: web, node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256())}
	e.createPCR(t, ns, foreign)

	_, edKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issued := "Issued"
	denied := "Denied"
	tests := []struct {
		request
		wantLife time.Duration
	}{
		{request: request{name: "issues-one-hour", pod: web, node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256()), wantType: issued, reason: pcr.ReasonIssued}, wantLife: time.Hour},
		{request: request{name: "issues-p384-two-hours", pod: web, node: "node-1", sa: "web-sa", maxExp: 7200, key: ecKey(t, elliptic.P384()), wantType: issued, reason: pcr.ReasonIssued}, wantLife: 2 * time.Hour},
		{request: request{name: "caps-at-max-ttl", pod: web, node: "node-1", sa: "web-sa", maxExp: 86400 * 7, key: edKey, wantType: issued, reason: pcr.ReasonIssued}, wantLife: 24 * time.Hour},
		{request: request{name: "pod-missing", podName: "ghost", podUID: uuid.NewUUID(), node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256()), wantType: denied, reason: pcr.ReasonPodNotFound}},
		{request: request{name: "pod-uid-differs", podName: "web", podUID: uuid.NewUUID(), node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256()), wantType: denied, reason: pcr.ReasonPodNotFound}},
		{request: request{name: "wrong-node", pod: web, node: "node-2", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256()), wantType: denied, reason: pcr.ReasonWrongNode}},
		{request: request{name: "wrong-sa", pod: web, node: "node-1", sa: "admin", maxExp: 3600, key: ecKey(t, elliptic.P256()), wantType: denied, reason: pcr.ReasonWrongServiceAccount}},
		{request: request{name: "pod-terminating", pod: dying, node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256()), wantType: denied, reason: pcr.ReasonPodTerminating}},
		{request: request{name: "p521", pod: web, node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P521()), wantType: denied, reason: pcr.ReasonUnsupportedKeyType}},
		{request: request{name: "user-annotations", pod: web, node: "node-1", sa: "web-sa", maxExp: 3600, key: ecKey(t, elliptic.P256()), annotations: map[string]string{"example.com/dns-name": "web"}, wantType: denied, reason: pcr.ReasonInvalidUserAnnotations}},
	}
	for _, tt := range tests {
		tt.signer = pcr.DefaultSignerName
		e.createPCR(t, ns, tt.request)
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := e.waitDecided(t, ns, tt.name)
			if n := len(req.Status.Conditions); n != 1 {
				t.Fatalf("%d conditions, want 1: %+v", n, req.Status.Conditions)
			}
			c := req.Status.Conditions[0]
			if c.Type != tt.wantType || c.Status != metav1.ConditionTrue || c.Reason != tt.reason || c.Message == "" {
				t.Fatalf("condition %s=%s reason %q message %q; want %s=True reason %q", c.Type, c.Status, c.Reason, c.Message, tt.wantType, tt.reason)
			}
			t.Logf("%s: %s", c.Reason, c.Message)
			if tt.wantType == issued {
				checkIssued(t, req, tca, tt.key, tt.wantLife)
			} else if req.Status.CertificateChain != "" || req.Status.NotAfter != nil {
				t.Errorf("%s request carries a certificate", tt.wantType)
			}
			// The audit line follows the status update: wait for it.
			var audits []map[string]any
			wait.For(t, "the audit line of "+tt.name, func() bool {
				audits = logs.lines(t, "pcr", tt.name)
				return len(audits) > 0
			})
			if len(audits) != 1 || audits[0]["msg"] != "audit" || audits[0]["reason"] != tt.reason {
				t.Errorf("audit lines %v, want one with reason %s", audits, tt.reason)
			}
		})
	}

	t.Run("other_signer_untouched", func(t *testing.T) {
		// Every request above is decided; the foreign one, created first,
		// must still be pending.
		if req := e.get(t, ns, foreign.name); len(req.Status.Conditions) != 0 || req.Status.CertificateChain != "" {
			t.Errorf("request of signer %s was changed: %+v", foreign.signer, req.Status)
		}
	})
	t.Run("metrics_describe_the_last_certificate_of_each_running_pod", func(t *testing.T) {
		mfs, err := reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		expiry, ok := promtest.Find(mfs, "mayfly_ca_podcertificate_expiry_timestamp_seconds", "namespace="+ns, "pod=web")
		if !ok {
			t.Fatal("no mayfly_ca_podcertificate_expiry_timestamp_seconds for pod web")
		}
		notBefore, _ := promtest.Find(mfs, "mayfly_ca_podcertificate_issued_timestamp_seconds", "namespace="+ns, "pod=web")
		refresh, _ := promtest.Find(mfs, "mayfly_ca_podcertificate_refresh_timestamp_seconds", "namespace="+ns, "pod=web")
		var match bool
		for _, tt := range tests {
			if tt.wantType != issued {
				continue
			}
			st := e.get(t, ns, tt.name).Status
			match = match || (float64(st.NotBefore.Unix()) == notBefore && float64(st.NotAfter.Unix()) == expiry && float64(st.BeginRefreshAt.Unix()) == refresh)
		}
		if !match {
			t.Errorf("pod web: notBefore %v expiry %v refresh %v match none of the certificates issued for it", notBefore, expiry, refresh)
		}
		for _, mf := range mfs {
			if strings.HasPrefix(mf.GetName(), "mayfly_ca_podcertificate_") && strings.HasSuffix(mf.GetName(), "_timestamp_seconds") && len(mf.GetMetric()) != 1 {
				t.Errorf("%s: %d series, want 1 (pod web; the others were denied)", mf.GetName(), len(mf.GetMetric()))
			}
		}
	})
	t.Run("metrics_count_decisions", func(t *testing.T) {
		for result, want := range map[string]float64{"issued": 3, "denied": 7, "failed": 0} {
			if got := counter(t, reg, result); got != want {
				t.Errorf("result %s: %v, want %v", result, got, want)
			}
		}
	})
}

// TestSignerWaitsForCA checks that a request the CA cannot issue yet stays
// pending (never Failed: the kubelet would give up on the pod) and is
// issued once the CA can: first the CA is not ready, then its intermediate
// has too little life left, then it has rotated. Pods are read from the
// API server only (no pod cache).
func TestSignerWaitsForCA(t *testing.T) {
	e := newEnv(t)
	logs := &logBuffer{}
	auth := fakeauthority.New(nil, fmt.Errorf("%w: state not loaded yet", authority.ErrNotReady))
	const signer = "mayfly.dev/waiting"
	tca := signingCA(t)
	e.startSigner(t, &pcr.Reconciler{
		Authority:   auth,
		TrustDomain: tca.TrustDomain,
		SignerName:  signer,
		Logger:      slog.New(slog.NewJSONHandler(logs, nil)),
		// Long enough that only the authority's notifications can make
		// the request issue within the poll timeout.
		RetryInterval: time.Hour,
	})
	const ns = "team-b"
	e.namespace(t, ns)
	p := e.pod(t, ns, "api", "node-3", "api-sa")
	key := ecKey(t, elliptic.P256())
	e.createPCR(t, ns, request{name: "api", signer: signer, pod: p, node: "node-3", sa: "api-sa", maxExp: 3600, key: key})

	waitLog(t, logs, "api", authority.ErrNotReady.Error())
	if req := e.get(t, ns, "api"); len(req.Status.Conditions) != 0 {
		t.Fatalf("CA not ready: request decided %+v, want pending", req.Status.Conditions)
	}

	old := testca.New(t, testca.WithIntermediateTTL(30*time.Minute))
	auth.Set(fakeauthority.Loaded(old, "v1"), nil)
	waitLog(t, logs, "api", "waiting for the CA to rotate")
	if req := e.get(t, ns, "api"); len(req.Status.Conditions) != 0 {
		t.Fatalf("intermediate expiring: request decided %+v, want pending", req.Status.Conditions)
	}

	auth.Set(fakeauthority.Loaded(tca, "v1"), nil)
	req := e.waitDecided(t, ns, "api")
	if c := req.Status.Conditions[0]; c.Type != "Issued" {
		t.Fatalf("condition %s %s: %s, want Issued", c.Type, c.Reason, c.Message)
	}
	checkIssued(t, req, tca, key, time.Hour)
}

func TestSetupRejectsBadConfig(t *testing.T) {
	e := newEnv(t)
	td := testca.New(t).TrustDomain
	tests := []struct {
		name string
		r    pcr.Reconciler
	}{
		{"no_authority", pcr.Reconciler{TrustDomain: td}},
		{"no_trust_domain", pcr.Reconciler{Authority: fakeauthority.New(nil, errors.New("x"))}},
		{"min_ttl_below_one_hour", pcr.Reconciler{Authority: fakeauthority.New(nil, errors.New("x")), TrustDomain: td, MinTTL: 30 * time.Minute}},
		{"max_below_min", pcr.Reconciler{Authority: fakeauthority.New(nil, errors.New("x")), TrustDomain: td, MinTTL: 2 * time.Hour, MaxTTL: time.Hour + time.Minute}},
		{"max_above_a_day", pcr.Reconciler{Authority: fakeauthority.New(nil, errors.New("x")), TrustDomain: td, MaxTTL: 48 * time.Hour}},
		{"negative_workers", pcr.Reconciler{Authority: fakeauthority.New(nil, errors.New("x")), TrustDomain: td, Workers: -1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.r.SetupWithManager(cluster.NewManager(t, e.c.Config, nil, nil)); err == nil {
				t.Error("SetupWithManager accepted the configuration")
			}
		})
	}
}
