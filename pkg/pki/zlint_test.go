package pki_test

import (
	"bytes"
	"crypto/x509"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// zlintWarnAllowList lists zlint warnings that mayfly accepts, with the
// reason. Keep it short; every entry must say why.
var zlintWarnAllowList = map[string]string{
	// (empty: no RFC 5280 warnings are expected today)
}

// TestZlint lints every certificate profile mayfly issues with zlint's
// RFC 5280 lints, through the direct encoder (the default) and the standard
// path, signed by intermediates of every key type. It needs the zlint binary
// in MAYFLY_ZLINT.
func TestZlint(t *testing.T) {
	zlint := os.Getenv("MAYFLY_ZLINT")
	if zlint == "" {
		if os.Getenv("CI") == "true" {
			t.Fatal("MAYFLY_ZLINT not set; CI must run zlint (make test sets it)")
		}
		t.Skip("MAYFLY_ZLINT not set; make test sets it")
	}
	ca := newTestCA(t)
	// standard issues with x509.CreateCertificate instead of the direct
	// encoder (Signer.StandardPath); issuer, when set, signs instead of ca.
	var (
		standard bool
		issuer   *testCA
	)
	issueID := func(kind pki.Kind, kt pki.KeyType, id spiffeid.ID, dns []string) *x509.Certificate {
		t.Helper()
		req := workloadRequest(mustKey(t, kt).Public())
		req.Kind, req.DNSNames = kind, dns
		if !id.IsZero() {
			req.ID = id
		} else if kind == pki.KindAgent {
			req.ID = testAgentID
		}
		s := ca.Signer(nil)
		if issuer != nil {
			s = issuer.Signer(nil)
		}
		s.StandardPath = standard
		if !id.IsZero() {
			s.Options = nil // the CA's serving ID fits no kind's ID shape
		}
		cert, _, err := s.Sign(req)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	issue := func(kind pki.Kind, kt pki.KeyType, dns []string) *x509.Certificate {
		t.Helper()
		return issueID(kind, kt, spiffeid.ID{}, dns)
	}
	certs := map[string]*x509.Certificate{
		"root":              ca.Root,
		"intermediate":      ca.Intermediate,
		"workload_ecdsa":    issue(pki.KindWorkload, pki.KeyTypeECDSAP256, nil),
		"workload_ecdsa384": issue(pki.KindWorkload, pki.KeyTypeECDSAP384, nil),
		"workload_rsa":      issue(pki.KindWorkload, pki.KeyTypeRSA2048, nil),
		"workload_ed25519":  issue(pki.KindWorkload, pki.KeyTypeEd25519, nil),
		"agent":             issue(pki.KindAgent, pki.KeyTypeECDSAP256, nil),
		// The CA's serving certificate: a component leaf (with the component
		// policy) of ID /mayfly/ca with DNS names.
		"ca_server":          issueID(pki.KindAgent, pki.KeyTypeECDSAP256, spiffeid.RequireFromString("spiffe://example.org/mayfly/ca"), []string{"mayfly-ca.mayfly-system.svc"}),
		"workload_dns_names": issue(pki.KindWorkload, pki.KeyTypeECDSAP256, []string{"web.default.svc", "web.default.svc.cluster.local"}),
	}
	// The same profiles through the standard path, and leaves signed by
	// intermediates of every key type (the direct encoder writes the
	// signature algorithm).
	standard = true
	certs["standard_workload_ecdsa"] = issue(pki.KindWorkload, pki.KeyTypeECDSAP256, nil)
	certs["standard_workload_rsa"] = issue(pki.KindWorkload, pki.KeyTypeRSA2048, nil)
	certs["standard_agent"] = issue(pki.KindAgent, pki.KeyTypeECDSAP256, nil)
	certs["standard_workload_dns_names"] = issue(pki.KindWorkload, pki.KeyTypeECDSAP256, []string{"web.default.svc"})
	standard = false
	for _, kt := range []pki.KeyType{pki.KeyTypeECDSAP384, pki.KeyTypeEd25519, pki.KeyTypeRSA2048} {
		issuer = newTestCA(t, withIntermediateKey(kt))
		certs["intermediate_"+string(kt)] = issuer.Intermediate
		certs["workload_by_"+string(kt)] = issue(pki.KindWorkload, pki.KeyTypeECDSAP256, []string{"web.default.svc"})
		certs["agent_by_"+string(kt)] = issue(pki.KindAgent, pki.KeyTypeEd25519, nil)
	}
	issuer = nil

	dir := t.TempDir()
	names := make([]string, 0, len(certs))
	for name := range certs {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		t.Run(name, func(t *testing.T) {
			results := runZlint(t, zlint, filepath.Join(dir, name+".pem"), certs[name])
			pass := 0
			for lint, r := range results {
				switch r.Result {
				case "pass":
					pass++
				case "NA", "NE", "info":
				case "warn":
					if _, ok := zlintWarnAllowList[lint]; !ok {
						t.Errorf("%s: warn %s", lint, r.Details)
					}
				default: // error, fatal, or anything unknown
					t.Errorf("%s: %s %s", lint, r.Result, r.Details)
				}
			}
			t.Logf("%d lints, %d passed", len(results), pass)
		})
	}
	// A control: a certificate with neither subject nor SAN must produce an
	// error, or the harness above would not notice one either.
	t.Run("control_detects_empty_subject_without_san", func(t *testing.T) {
		bad := craftLeaf(t, ca.Intermediate, ca.IntermediateKey, func(c *x509.Certificate) { c.URIs = nil })
		results := runZlint(t, zlint, filepath.Join(dir, "control.pem"), bad)
		if r := results["e_subject_empty_without_san"]; r.Result != "error" {
			t.Fatalf("e_subject_empty_without_san = %q, want error", r.Result)
		}
	})
}

type zlintResult struct {
	Result  string `json:"result"`
	Details string `json:"details"`
}

// runZlint writes cert to file and returns zlint's RFC 5280 results.
func runZlint(t *testing.T, zlint, file string, cert *x509.Certificate) map[string]zlintResult {
	t.Helper()
	if err := os.WriteFile(file, pki.EncodeCertificates(cert), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(t.Context(), zlint, "-includeSources", "RFC5280", file)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Run(); err != nil {
		t.Fatalf("zlint: %v\n%s", err, stderr.String())
	}
	var results map[string]zlintResult
	if err := json.Unmarshal(stdout.Bytes(), &results); err != nil {
		t.Fatalf("zlint output is not JSON: %v\n%.500s", err, stdout.String())
	}
	if len(results) == 0 {
		t.Fatal("zlint ran no lints")
	}
	return results
}
