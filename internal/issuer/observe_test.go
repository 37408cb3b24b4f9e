package issuer_test

import (
	"crypto/rand"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"
	"golang.org/x/time/rate"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
)

// mixedBatch is two issued items, three denied (bad CSR, TTL, not
// granted) and one authorizer error.
func mixedBatch(t *testing.T) *issuerv1.SignWorkloadsRequest {
	t.Helper()
	return &issuerv1.SignWorkloadsRequest{Requests: []*issuerv1.WorkloadRequest{
		workloadItem(t, "ok1", webID, 0),
		workloadItem(t, "ok2", webID, 600),
		{RequestId: "bad-csr", Csr: []byte("garbage"), SpiffeId: webID, PodUid: "uid-bad-csr"},
		workloadItem(t, "ttl", webID, 60),
		workloadItem(t, "denied", "spiffe://example.org/ns/kube-system/sa/admin", 0),
		workloadItem(t, "error", idInternalError, 0),
	}}
}

func TestMetrics(t *testing.T) {
	h := newHarness(t)
	agent := h.webAgent()
	if _, err := agent.SignWorkloads(ctx(t), mixedBatch(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{Csr: testca.CSR(t, testca.Key(t))}); err == nil {
		t.Fatal("attestation without credential succeeded")
	}

	counters := []struct {
		kind, result string
		want         float64
	}{
		{"workload", "issued", 2},
		{"workload", "denied", 3},
		{"workload", "error", 1},
		{"agent", "issued", 1},
		{"agent", "denied", 1},
		{"agent", "error", 0},
	}
	for _, c := range counters {
		t.Run("issued_total kind="+c.kind+" result="+c.result, func(t *testing.T) {
			if got := h.issued(c.kind, c.result); got != c.want {
				t.Fatalf("got %v, want %v", got, c.want)
			}
		})
	}
	t.Run("sign duration observes every signature", func(t *testing.T) {
		mf := h.family("mayfly_ca_sign_duration_seconds")
		if mf == nil {
			t.Fatal("not gathered")
		}
		// One agent SVID and two workload SVIDs were signed.
		if got := mf.GetMetric()[0].GetHistogram().GetSampleCount(); got < 3 {
			t.Fatalf("%d observations, want at least 3", got)
		}
	})
	t.Run("metrics pass promlint", func(t *testing.T) {
		mfs, err := h.reg.Gather()
		if err != nil {
			t.Fatal(err)
		}
		problems, err := promlint.NewWithMetricFamilies(mfs).Lint()
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	})
}

// serialRand makes every 16-byte serial start with a zero nibble (0x0a..),
// where hex of the bytes and big.Int.Text(16) differ.
type serialRand struct{}

func (serialRand) Read(p []byte) (int, error) {
	n, err := rand.Read(p)
	if n > 0 {
		p[0] = 0x0a
	}
	return n, err
}

func TestAuditLog(t *testing.T) {
	h := newHarness(t, func(c *issuer.Config) {
		c.Rand = serialRand{}
		c.NodeRate, c.NodeBurst = rate.Limit(1), 8
	})
	agent := h.webAgent()
	if _, err := h.dial(nil).AttestAgent(ctx(t), &issuerv1.AttestAgentRequest{
		Csr: testca.CSR(t, testca.Key(t)), Credential: &issuerv1.AttestAgentRequest_JoinToken{JoinToken: "refused-token-x9"},
	}); err == nil {
		t.Fatal("refused token attested")
	}
	resp, err := agent.SignWorkloads(ctx(t), mixedBatch(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := agent.SignWorkloads(ctx(t), batch(t, 4, webID)); err == nil {
		t.Fatal("batch beyond the rate limit was served")
	}
	if _, err := h.dial(nil).SignWorkloads(ctx(t), batch(t, 1, webID)); err == nil {
		t.Fatal("unauthenticated SignWorkloads was served")
	}

	lines := h.auditLines()
	// attest ok, attest refused, 6 batch items, 1 rate-limited batch, 1
	// unauthenticated call.
	if len(lines) != 10 {
		t.Fatalf("%d audit lines, want 10:\n%s", len(lines), h.logs.String())
	}
	t.Run("every line names event, decision, kind and caller", func(t *testing.T) {
		for _, l := range lines {
			for _, k := range []string{"event", "decision", "kind", "caller"} {
				if s, _ := l[k].(string); s == "" {
					t.Errorf("line without %s: %v", k, l)
				}
			}
		}
	})
	t.Run("issuance lines carry identity, serial and notAfter", func(t *testing.T) {
		n := 0
		for _, l := range lines {
			if l["decision"] != "allow" {
				continue
			}
			n++
			for _, k := range []string{"spiffe_id", "serial", "not_after"} {
				if s, _ := l[k].(string); s == "" {
					t.Errorf("issuance line without %s: %v", k, l)
				}
			}
		}
		if n != 3 {
			t.Fatalf("%d issuance lines, want 3 (agent + 2 workloads)", n)
		}
	})
	t.Run("denial lines carry a reason and what was asked for", func(t *testing.T) {
		for _, l := range lines {
			if l["decision"] != "deny" {
				continue
			}
			if s, _ := l["reason"].(string); s == "" {
				t.Errorf("denial line without reason: %v", l)
			}
			if _, ok := l["subject"]; !ok && l["count"] == nil && l["op"] != "attest" {
				t.Errorf("denial line without subject: %v", l)
			}
		}
	})
	t.Run("the serial of an issuance line is the serial the agent got", func(t *testing.T) {
		for _, res := range resp.GetResults() {
			iss := res.GetIssued()
			if iss == nil {
				continue
			}
			chain, err := issuerclient.ParseChain(iss.GetCertificateChain())
			if err != nil {
				t.Fatal(err)
			}
			if want := chain[0].SerialNumber.Text(16); iss.GetSerialNumber() != want || !strings.HasPrefix(want, "a") {
				t.Errorf("serial_number %q, want %q (starting with a zero nibble dropped)", iss.GetSerialNumber(), want)
			}
			found := false
			for _, l := range lines {
				if l["serial"] == iss.GetSerialNumber() {
					found = true
					if l["spiffe_id"] != webID || l["not_after"] != chain[0].NotAfter.UTC().Format(time.RFC3339) {
						t.Errorf("line %v does not match the certificate", l)
					}
				}
			}
			if !found {
				t.Errorf("no audit line with serial %s", iss.GetSerialNumber())
			}
		}
	})
	t.Run("the internal error is in the log", func(t *testing.T) {
		if !strings.Contains(h.logs.String(), secretAuthorizerDetail) {
			t.Fatal("authorizer error missing from the audit log")
		}
	})
	t.Run("no keys, certificates or tokens are logged", func(t *testing.T) {
		log := h.logs.String()
		for _, secret := range []string{"PRIVATE KEY", "BEGIN CERTIFICATE", "good-node-a", "refused-token-x9"} {
			if strings.Contains(log, secret) {
				t.Errorf("log contains %q", secret)
			}
		}
	})
}
