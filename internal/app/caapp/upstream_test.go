package caapp_test

// The tests of authority.FileUpstream stay here, next to
// TestStandaloneWithFileUpstream which runs the CA on the same fixtures.

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// upstreamFiles is a root and an issuing CA below it, written to disk.
type upstreamFiles struct {
	root, issuing                          *upstreamtest.CA
	rootCert, rootKey, issuingCert, issKey string
	dir                                    string
}

func writeUpstream(t *testing.T) *upstreamFiles {
	t.Helper()
	dir := t.TempDir()
	root := upstreamtest.NewCA(t, "Corp Root CA", nil, -1)
	issuing := upstreamtest.NewCA(t, "Corp Issuing CA", root, -1)
	return &upstreamFiles{
		root: root, issuing: issuing, dir: dir,
		rootCert:    upstreamtest.WriteCert(t, dir, "root.crt", root.Cert),
		rootKey:     upstreamtest.WriteKey(t, dir, "root.key", root.Key),
		issuingCert: upstreamtest.WriteCert(t, dir, "issuing.crt", issuing.Cert),
		issKey:      upstreamtest.WriteKey(t, dir, "issuing.key", issuing.Key),
	}
}

var upstreamTD = spiffeid.RequireTrustDomainFromString("example.org")

// signAndVerify asks u for an intermediate and checks it as the CA would
// use it: a pathLen-0 CA of the trust domain for the requested key,
// chaining to the returned roots through the returned chain.
func signAndVerify(t *testing.T, u authority.Upstream, ttl time.Duration) (chain, roots []*x509.Certificate) {
	t.Helper()
	key := testca.Key(t)
	chain, roots, err := u.SignIntermediate(context.Background(), authority.IntermediateRequest{TrustDomain: upstreamTD, Key: key, TTL: ttl})
	if err != nil {
		t.Fatalf("SignIntermediate: %v", err)
	}
	if len(chain) == 0 || len(roots) == 0 {
		t.Fatalf("SignIntermediate returned %d chain and %d root certificates", len(chain), len(roots))
	}
	inter := chain[0]
	if !inter.IsCA || inter.MaxPathLen != 0 || !inter.MaxPathLenZero {
		t.Errorf("intermediate IsCA=%v MaxPathLen=%d MaxPathLenZero=%v, want a CA with pathLen 0", inter.IsCA, inter.MaxPathLen, inter.MaxPathLenZero)
	}
	if len(inter.URIs) != 1 || inter.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("intermediate URIs = %v, want [spiffe://example.org]", inter.URIs)
	}
	if inter.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("intermediate lacks keyCertSign")
	}
	if pub, ok := inter.PublicKey.(*ecdsa.PublicKey); !ok || !pub.Equal(key.Public()) {
		t.Error("intermediate is not for the requested key")
	}
	if got := inter.NotAfter.Sub(inter.NotBefore); got > ttl+pki.Backdate+time.Second {
		t.Errorf("intermediate lives %s, asked for %s", got, ttl)
	}
	rootPool, interPool := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain[1:] {
		interPool.AddCert(c)
	}
	if _, err := inter.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: interPool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("intermediate does not verify against the roots: %v", err)
	}
	// A workload SVID signed by the intermediate verifies against the roots.
	leafKey := testca.Key(t)
	signer := &pki.Signer{Authority: pki.Authority{Cert: inter, Key: key}, Now: time.Now, Rand: rand.Reader, Options: pki.DefaultWorkloadOptions()}
	leaf, _, err := signer.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: leafKey.Public(), ID: spiffeid.RequireFromString("spiffe://example.org/ns/default/sa/web"), TTL: time.Hour})
	if err != nil {
		t.Fatalf("signing a workload under the intermediate: %v", err)
	}
	if _, err := pki.VerifyX509SVID(leaf, chain, roots, time.Now(), x509.ExtKeyUsageClientAuth); err != nil {
		t.Fatalf("workload SVID under the upstream does not verify: %v", err)
	}
	return chain, roots
}

func TestFileUpstreamRootSignsIntermediates(t *testing.T) {
	t.Parallel()
	f := writeUpstream(t)
	u, err := authority.LoadFileUpstream(f.rootCert, f.rootKey, "", nil)
	if err != nil {
		t.Fatalf("LoadFileUpstream: %v", err)
	}
	if !strings.Contains(u.Name(), f.rootCert) {
		t.Errorf("Name() = %q, want it to name %s", u.Name(), f.rootCert)
	}
	chain, roots := signAndVerify(t, u, 48*time.Hour)
	if len(chain) != 1 {
		t.Errorf("chain has %d certificates, want only the new intermediate", len(chain))
	}
	if len(roots) != 1 || !roots[0].Equal(f.root.Cert) {
		t.Errorf("roots = %d certificates, want [upstream root]", len(roots))
	}
	if err := chain[0].CheckSignatureFrom(f.root.Cert); err != nil {
		t.Errorf("intermediate is not signed by the root: %v", err)
	}
}

func TestFileUpstreamIntermediateWithBundle(t *testing.T) {
	t.Parallel()
	f := writeUpstream(t)
	bundle := upstreamtest.WriteCert(t, f.dir, "bundle.crt", f.root.Cert)
	u, err := authority.LoadFileUpstream(f.issuingCert, f.issKey, bundle, nil)
	if err != nil {
		t.Fatalf("LoadFileUpstream: %v", err)
	}
	chain, roots := signAndVerify(t, u, 12*time.Hour)
	if len(chain) != 2 || !chain[1].Equal(f.issuing.Cert) {
		t.Fatalf("chain = %d certificates, want [new intermediate, upstream issuing CA]", len(chain))
	}
	if err := chain[0].CheckSignatureFrom(f.issuing.Cert); err != nil {
		t.Errorf("intermediate is not signed by the issuing CA: %v", err)
	}
	if len(roots) != 1 || !roots[0].Equal(f.root.Cert) {
		t.Errorf("roots = %d certificates, want [upstream root]", len(roots))
	}
	// Each call returns a fresh slice: callers may append to it.
	chain2, _ := signAndVerify(t, u, 12*time.Hour)
	if chain2[0].Equal(chain[0]) || !chain2[1].Equal(f.issuing.Cert) || !chain[1].Equal(f.issuing.Cert) {
		t.Error("a second intermediate changed the first chain or was not new")
	}
}

// An issuing CA two levels below the root loads when certFile carries the
// intermediate between them after it, as a tls.crt does.
func TestFileUpstreamChainsThroughIntermediatesInCertFile(t *testing.T) {
	t.Parallel()
	f := writeUpstream(t)
	sub := upstreamtest.NewCA(t, "Corp Sub CA", f.issuing, -1)
	certFile := upstreamtest.WriteCert(t, f.dir, "sub-chain.crt", sub.Cert, f.issuing.Cert)
	u, err := authority.LoadFileUpstream(certFile, upstreamtest.WriteKey(t, f.dir, "sub.key", sub.Key), upstreamtest.WriteCert(t, f.dir, "bundle.crt", f.root.Cert), nil)
	if err != nil {
		t.Fatalf("LoadFileUpstream: %v", err)
	}
	chain, roots := signAndVerify(t, u, time.Hour)
	if len(chain) != 3 || !chain[1].Equal(sub.Cert) || !chain[2].Equal(f.issuing.Cert) {
		t.Fatalf("chain = %d certificates, want the intermediate, the sub CA and the issuing CA", len(chain))
	}
	if len(roots) != 1 || !roots[0].Equal(f.root.Cert) {
		t.Fatalf("roots = %d certificates, want the corp root", len(roots))
	}
}

func TestFileUpstreamLegacyKeyFormats(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ecKey := testca.Key(t).(*ecdsa.PrivateKey)
	sec1, err := x509.MarshalECPrivateKey(ecKey)
	if err != nil {
		t.Fatal(err)
	}
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		key  crypto.Signer
		pem  []byte
	}{
		{"ec_private_key", ecKey, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1})},
		{"rsa_private_key", rsaKey, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(rsaKey)})},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			root := upstreamtest.NewCA(t, "Corp "+tc.name, nil, -1, upstreamtest.WithKey(tc.key))
			u, err := authority.LoadFileUpstream(
				upstreamtest.WriteCert(t, dir, tc.name+".crt", root.Cert),
				upstreamtest.WriteFile(t, dir, tc.name+".key", tc.pem), "", nil)
			if err != nil {
				t.Fatalf("LoadFileUpstream: %v", err)
			}
			signAndVerify(t, u, 24*time.Hour)
		})
	}
}

func TestFileUpstreamIntermediateEndsWithTheUpstream(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	notAfter := time.Now().Add(3 * time.Hour).Truncate(time.Second)
	root := upstreamtest.NewCA(t, "Corp Short Root", nil, -1, upstreamtest.WithNotAfter(notAfter))
	u, err := authority.LoadFileUpstream(upstreamtest.WriteCert(t, dir, "r.crt", root.Cert), upstreamtest.WriteKey(t, dir, "r.key", root.Key), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	chain, _ := signAndVerify(t, u, 48*time.Hour)
	if !chain[0].NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("intermediate notAfter = %s, want the upstream's %s", chain[0].NotAfter, root.Cert.NotAfter)
	}
}

func TestFileUpstreamRefusesOtherTrustDomain(t *testing.T) {
	t.Parallel()
	// A mayfly root of example.org as upstream cannot sign for another
	// trust domain.
	other := testca.New(t)
	dir := t.TempDir()
	u, err := authority.LoadFileUpstream(upstreamtest.WriteFile(t, dir, "r.crt", other.BundlePEM()), upstreamtest.WriteKey(t, dir, "r.key", other.RootKey), "", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = u.SignIntermediate(context.Background(), authority.IntermediateRequest{
		TrustDomain: spiffeid.RequireTrustDomainFromString("other.org"), Key: testca.Key(t), TTL: 24 * time.Hour,
	})
	if err == nil {
		t.Fatal("an example.org root signed an intermediate of other.org")
	}
}

// TestFileUpstreamUsesTheGivenClock: the upstream certificate is checked
// against the CA's clock, and intermediates are dated by it.
func TestFileUpstreamUsesTheGivenClock(t *testing.T) {
	t.Parallel()
	f := writeUpstream(t)
	late := func() time.Time { return f.root.Cert.NotAfter.Add(time.Minute) }
	if _, err := authority.LoadFileUpstream(f.rootCert, f.rootKey, "", late); err == nil || !strings.Contains(err.Error(), "expired at ") {
		t.Fatalf("LoadFileUpstream after the root's notAfter: error = %v, want expired", err)
	}
	now := time.Now().Add(time.Hour).Truncate(time.Second)
	u, err := authority.LoadFileUpstream(f.rootCert, f.rootKey, "", func() time.Time { return now })
	if err != nil {
		t.Fatalf("LoadFileUpstream: %v", err)
	}
	chain, _, err := u.SignIntermediate(context.Background(), authority.IntermediateRequest{TrustDomain: upstreamTD, Key: testca.Key(t), TTL: time.Hour})
	if err != nil {
		t.Fatalf("SignIntermediate: %v", err)
	}
	if nb := chain[0].NotBefore; nb.After(now) || nb.Before(now.Add(-time.Hour)) {
		t.Fatalf("intermediate notBefore = %s, want near the given clock's %s", nb, now)
	}
}

func TestLoadFileUpstreamRejectsBadInputs(t *testing.T) {
	t.Parallel()
	f := writeUpstream(t)
	dir := f.dir
	leaf := upstreamtest.NewLeaf(t, "server", f.root)
	caNoCertSign := upstreamtest.NewCA(t, "CRL only", nil, -1, upstreamtest.WithKeyUsage(x509.KeyUsageCRLSign))
	rootPEM := pki.EncodeCertificates(f.root.Cert)
	keyRaw, err := pki.MarshalPrivateKeyPEM(f.root.Key)
	if err != nil {
		t.Fatal(err)
	}
	var (
		missing      = filepath.Join(dir, "does-not-exist.pem")
		leafCert     = upstreamtest.WriteCert(t, dir, "leaf.crt", leaf.Cert)
		leafKey      = upstreamtest.WriteKey(t, dir, "leaf.key", leaf.Key)
		noSignCert   = upstreamtest.WriteCert(t, dir, "nosign.crt", caNoCertSign.Cert)
		noSignKey    = upstreamtest.WriteKey(t, dir, "nosign.key", caNoCertSign.Key)
		truncCert    = upstreamtest.WriteFile(t, dir, "trunc.crt", rootPEM[:len(rootPEM)/2])
		noFooterCert = upstreamtest.WriteFile(t, dir, "nofooter.crt", []byte(strings.TrimSuffix(strings.TrimSpace(string(rootPEM)), "-----END CERTIFICATE-----")))
		truncKey     = upstreamtest.WriteFile(t, dir, "trunc.key", keyRaw[:len(keyRaw)-30])
		emptyFile    = upstreamtest.WriteFile(t, dir, "empty.pem", nil)
		garbage      = upstreamtest.WriteFile(t, dir, "garbage.pem", []byte("not a PEM file\n"))
		keyAsCert    = upstreamtest.WriteFile(t, dir, "keyascert.crt", keyRaw)
		certAsKey    = upstreamtest.WriteFile(t, dir, "certaskey.key", rootPEM)
		truncBundle  = upstreamtest.WriteFile(t, dir, "trunc-bundle.crt", rootPEM[:len(rootPEM)-40])
		otherKey     = upstreamtest.WriteKey(t, dir, "other.key", testca.Key(t))
		otherRoot    = upstreamtest.NewCA(t, "Other Root CA", nil, -1)
		otherBundle  = upstreamtest.WriteCert(t, dir, "other-root.crt", otherRoot.Cert)
		rootBundle   = upstreamtest.WriteFile(t, dir, "root-bundle.crt", rootPEM)
		sub          = upstreamtest.NewCA(t, "Corp Sub CA", f.issuing, -1)
		subCert      = upstreamtest.WriteCert(t, dir, "sub.crt", sub.Cert)
		subKey       = upstreamtest.WriteKey(t, dir, "sub.key", sub.Key)
		expired      = upstreamtest.NewCA(t, "Expired Root", nil, -1, upstreamtest.WithNotAfter(time.Now().Add(-time.Minute)))
		expiredCert  = upstreamtest.WriteCert(t, dir, "expired.crt", expired.Cert)
		expiredKey   = upstreamtest.WriteKey(t, dir, "expired.key", expired.Key)
		// Larger than any certificate or key file may be.
		hugeFile = upstreamtest.WriteFile(t, dir, "huge.pem", bytes.Repeat([]byte("A"), pki.DefaultPEMMaxBytes+1))
	)
	for _, tc := range []struct {
		name                      string
		certFile, keyFile, bundle string
		wantErr                   string
	}{
		{"cert_file_missing", missing, f.rootKey, "", "upstream.file.certFile: "},
		{"key_file_missing", f.rootCert, missing, "", "upstream.file.keyFile: "},
		{"bundle_file_missing", f.issuingCert, f.issKey, missing, "upstream.file.bundleFile: "},
		{"key_does_not_match_cert", f.rootCert, otherKey, "", "upstream.file.keyFile " + otherKey + ": does not match the certificate in " + f.rootCert},
		{"issuing_key_for_root_cert", f.rootCert, f.issKey, "", "upstream.file.keyFile " + f.issKey + ": does not match"},
		{"not_a_ca_certificate", leafCert, leafKey, "", "upstream.file.certFile " + leafCert + ": not a CA certificate"},
		{"ca_without_cert_sign", noSignCert, noSignKey, "", "upstream.file.certFile " + noSignCert + ": not a CA certificate with keyCertSign"},
		{"truncated_cert_pem", truncCert, f.rootKey, "", "upstream.file.certFile " + truncCert + ": "},
		{"cert_pem_without_footer", noFooterCert, f.rootKey, "", "upstream.file.certFile " + noFooterCert + ": "},
		{"empty_cert_file", emptyFile, f.rootKey, "", "upstream.file.certFile " + emptyFile + ": "},
		{"garbage_cert_file", garbage, f.rootKey, "", "upstream.file.certFile " + garbage + ": "},
		{"key_in_cert_file", keyAsCert, f.rootKey, "", "upstream.file.certFile " + keyAsCert + ": "},
		{"truncated_key_pem", f.rootCert, truncKey, "", "upstream.file.keyFile " + truncKey + ": "},
		{"cert_in_key_file", f.rootCert, certAsKey, "", "upstream.file.keyFile " + certAsKey + ": "},
		{"empty_key_file", f.rootCert, emptyFile, "", "upstream.file.keyFile " + emptyFile + ": "},
		{"intermediate_without_bundle", f.issuingCert, f.issKey, "", "upstream.file.bundleFile: required, " + f.issuingCert + " is not a self-signed root"},
		{"truncated_bundle", f.issuingCert, f.issKey, truncBundle, "upstream.file.bundleFile " + truncBundle + ": "},
		{"empty_bundle", f.issuingCert, f.issKey, emptyFile, "upstream.file.bundleFile " + emptyFile + ": "},
		{"bundle_of_another_root", f.issuingCert, f.issKey, otherBundle, "upstream.file.certFile " + f.issuingCert + ": does not chain to the roots of upstream.file.bundleFile"},
		{"intermediate_left_out_of_cert_file", subCert, subKey, rootBundle, "upstream.file.certFile " + subCert + ": does not chain to the roots of upstream.file.bundleFile"},
		{"expired_root", expiredCert, expiredKey, "", "upstream.file.certFile " + expiredCert + ": expired at "},
		{"cert_file_too_large", hugeFile, f.rootKey, "", "upstream.file.certFile: " + hugeFile + ": longer than "},
		{"key_file_too_large", f.rootCert, hugeFile, "", "upstream.file.keyFile: " + hugeFile + ": longer than "},
		{"bundle_file_too_large", f.issuingCert, f.issKey, hugeFile, "upstream.file.bundleFile: " + hugeFile + ": longer than "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			u, err := authority.LoadFileUpstream(tc.certFile, tc.keyFile, tc.bundle, nil)
			if err == nil {
				t.Fatalf("LoadFileUpstream accepted it: %+v", u)
			}
			if !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Fatalf("error = %q, want it to start with %q", err, tc.wantErr)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY-----") {
				t.Fatalf("error quotes key material: %q", err)
			}
		})
	}
}

const upstreamCAConfig = caConfigHead + `nodes:
  - name: host-a
    allowedIDs: ["spiffe://example.org/demo/*"]
upstream:
  file:
UPSTREAM
`

// runUpstreamCA runs a standalone CA whose config names the upstream
// files, and returns it once the issuer API serves.
func runUpstreamCA(t *testing.T, upstreamYAML string) *runningCA {
	t.Helper()
	return serveCA(t, strings.ReplaceAll(upstreamCAConfig, "UPSTREAM", upstreamYAML))
}

func TestStandaloneWithFileUpstream(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		upstream func(f *upstreamFiles) string
	}{
		{"root", func(f *upstreamFiles) string {
			return "    certFile: " + f.rootCert + "\n    keyFile: " + f.rootKey
		}},
		{"issuing_ca_with_bundle", func(f *upstreamFiles) string {
			bundle := filepath.Join(f.dir, "bundle.crt")
			if err := os.WriteFile(bundle, pki.EncodeCertificates(f.root.Cert), 0o600); err != nil {
				t.Fatal(err)
			}
			return "    certFile: " + f.issuingCert + "\n    keyFile: " + f.issKey + "\n    bundleFile: " + bundle
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := writeUpstream(t)
			r := runUpstreamCA(t, tc.upstream(f))
			if len(r.bundle) != 1 || !r.bundle[0].Equal(f.root.Cert) {
				var names []string
				for _, c := range r.bundle {
					names = append(names, c.Subject.String())
				}
				t.Fatalf("trust bundle = %v, want only the upstream root %s", names, f.root.Cert.Subject)
			}
			// An agent SVID from this CA verifies against the upstream root
			// (attest checks the chain against r.bundle).
			r.attest(t, "host-a")
		})
	}
}
