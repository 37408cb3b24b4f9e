package upstream_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/x509"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/upstream"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

var td = spiffeid.RequireTrustDomainFromString("example.org")

func TestMain(m *testing.M) {
	// step-ca's client and server look under $HOME/.step.
	home, err := os.MkdirTemp("", "mayfly-upstream-home")
	if err != nil {
		panic(err)
	}
	os.Setenv("HOME", home)
	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}

// newUpstream is upstream.New of cfg (now nil: time.Now), failing the
// test if the configuration is refused.
func newUpstream(t testing.TB, cfg *upstream.Config, now func() time.Time) authority.Upstream {
	t.Helper()
	u, err := upstream.New(cfg, now)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// sign asks u for an intermediate and returns the result as the authority
// judges it.
func sign(t *testing.T, u authority.Upstream) (authority.UpstreamResult, error) {
	t.Helper()
	key := testca.Key(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	chain, roots, err := u.SignIntermediate(ctx, authority.IntermediateRequest{TrustDomain: td, Key: key, TTL: 48 * time.Hour})
	if err != nil {
		return authority.UpstreamResult{}, err
	}
	return authority.UpstreamResult{Slot: &authority.Slot{Chain: chain, Key: key}, Roots: roots, TrustDomain: td, Now: time.Now()}, nil
}

// mustSign is sign for an upstream that must give a usable intermediate.
func mustSign(t *testing.T, u authority.Upstream) authority.UpstreamResult {
	t.Helper()
	r, err := sign(t, u)
	if err != nil {
		t.Fatalf("SignIntermediate: %v", err)
	}
	if err := authority.CheckUpstreamResult(r); err != nil {
		t.Fatalf("the upstream's intermediate is refused: %v", err)
	}
	return r
}

// leafVerifies signs a leaf with the intermediate and verifies it as
// relying parties do, against roots.
func leafVerifies(t *testing.T, r authority.UpstreamResult) {
	t.Helper()
	s := &pki.Signer{Authority: pki.Authority{Cert: r.Slot.Cert(), Key: r.Slot.Key, Chain: r.Slot.Chain[1:]}, Options: pki.DefaultWorkloadOptions(), Now: time.Now, Rand: rand.Reader}
	id := spiffeid.RequireFromPath(td, "/ns/default/sa/web")
	leaf, _, err := s.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: testca.Key(t).Public(), ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatalf("signing a leaf with the upstream's intermediate: %v", err)
	}
	if _, err := pki.VerifyX509SVID(leaf, r.Slot.Chain, r.Roots, time.Now(), x509.ExtKeyUsageServerAuth); err != nil {
		t.Fatalf("leaf does not verify against the upstream roots: %v", err)
	}
}

func TestStepCAJWKSignsIntermediate(t *testing.T) {
	s := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{})
	u := newUpstream(t, &upstream.Config{StepCA: &s.Config}, nil)
	r := mustSign(t, u)
	if !r.Roots[0].Equal(s.Root.Cert) || len(r.Slot.Chain) != 2 {
		t.Fatalf("roots %d chain %d, want step-ca's root and a chain of 2", len(r.Roots), len(r.Slot.Chain))
	}
	if got := time.Until(r.Slot.NotAfter()); got < 47*time.Hour || got > 49*time.Hour {
		t.Fatalf("intermediate valid for %s, want the requested 48h", got)
	}
	leafVerifies(t, r)
	// A second renewal needs a new token (step-ca refuses a reused one).
	mustSign(t, u)
}

func TestStepCAX5CSignsIntermediate(t *testing.T) {
	x5cRoot := upstreamtest.NewCA(t, "Corp provisioning root", nil, -1)
	s := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{X5CRoot: x5cRoot})
	credential := upstreamtest.NewLeaf(t, "mayfly provisioning credential", x5cRoot)
	s.Config.X5C = &upstream.StepCAX5C{
		CertFile: upstreamtest.WriteCert(t, s.Dir, "x5c.crt", credential.Cert),
		KeyFile:  upstreamtest.WriteKey(t, s.Dir, "x5c.key", credential.Key),
	}
	u := newUpstream(t, &upstream.Config{StepCA: &s.Config}, nil)
	leafVerifies(t, mustSign(t, u))
}

func TestStepCARootsListedAtRootsReachTheResult(t *testing.T) {
	next := upstreamtest.NewCA(t, "Corp step root 2", nil, -1)
	s := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{ExtraRoots: []*upstreamtest.CA{next}})
	u := newUpstream(t, &upstream.Config{StepCA: &s.Config}, nil)
	r := mustSign(t, u)
	if len(r.Roots) != 2 {
		t.Fatalf("got %d roots, want both roots the step-ca lists", len(r.Roots))
	}
}

func TestStepCAErrorsSayWhatToCheck(t *testing.T) {
	s := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{})
	tests := []struct {
		name   string
		modify func(c *upstream.StepCAConfig)
		want   string
	}{
		{"wrong provisioner name", func(c *upstream.StepCAConfig) { c.Provisioner = "other" }, `refused the token of provisioner "other"`},
		{"another provisioner key", func(c *upstream.StepCAConfig) {
			other := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{})
			c.JWK = other.Config.JWK
		}, "refused the token"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := s.Config
			tt.modify(&cfg)
			u := newUpstream(t, &upstream.Config{StepCA: &cfg}, nil)
			_, err := sign(t, u)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestCFSSLSignsIntermediate(t *testing.T) {
	c := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{})
	u := newUpstream(t, &upstream.Config{CFSSL: &c.Config}, nil)
	r := mustSign(t, u)
	if len(r.Slot.Chain) != 3 || !r.Slot.Chain[2].Equal(c.Signer.Cert) || !r.Roots[0].Equal(c.Root.Cert) {
		t.Fatalf("chain %d roots %d: want the intermediate, the issuing CA cfssl signed, cfssl's signer, and its root", len(r.Slot.Chain), len(r.Roots))
	}
	if r.Slot.Chain[1].MaxPathLen != 1 {
		t.Fatalf("issuing CA path length %d, want 1", r.Slot.Chain[1].MaxPathLen)
	}
	leafVerifies(t, r)
}

func TestCFSSLErrorsSayWhatToCheck(t *testing.T) {
	c := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{})
	tests := []struct {
		name   string
		modify func(t *testing.T, cfg *upstream.CFSSLConfig)
		want   string // in SignIntermediate's error, or in the check's
	}{
		{"wrong auth key", func(t *testing.T, cfg *upstream.CFSSLConfig) {
			cfg.AuthKeyFile = upstreamtest.WriteFile(t, t.TempDir(), "k", []byte("00112233445566778899aabbccddeeff"))
		}, "authKeyFile does not hold the auth_key"},
		{"unknown profile falls back to cfssl's default, a leaf", func(_ *testing.T, cfg *upstream.CFSSLConfig) { cfg.Profile = "intermediat" }, "a leaf certificate, not a CA"},
		{"profile with path length 0", func(_ *testing.T, cfg *upstream.CFSSLConfig) { cfg.Profile = "pathlen0" }, "path length 0, want 1"},
		{"profile without a path length", func(_ *testing.T, cfg *upstream.CFSSLConfig) { cfg.Profile = "unlimited" }, "path length unlimited, want 1"},
		{"server down", func(_ *testing.T, cfg *upstream.CFSSLConfig) {
			down := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{})
			down.Server.Close()
			cfg.URL = down.Server.URL
		}, "cfssl is unreachable"},
		{"server with another TLS certificate", func(_ *testing.T, cfg *upstream.CFSSLConfig) {
			cfg.CAFile = upstreamtest.WriteCert(t, t.TempDir(), "ca.crt", c.Root.Cert)
		}, "certificate signed by unknown authority"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := c.Config
			tt.modify(t, &cfg)
			u := newUpstream(t, &upstream.Config{CFSSL: &cfg}, nil)
			r, err := sign(t, u)
			if err == nil {
				err = authority.CheckUpstreamResult(r)
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestCFSSLSlowServerTimesOut(t *testing.T) {
	release := make(chan struct{})
	c := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{Handler: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			h.ServeHTTP(w, r)
		})
	}})
	defer close(release)
	c.Config.Timeout = config.Duration{Duration: 200 * time.Millisecond}
	u := newUpstream(t, &upstream.Config{CFSSL: &c.Config}, nil)
	if _, err := sign(t, u); err == nil || !strings.Contains(err.Error(), "no answer within") {
		t.Fatalf("error = %v, want a timeout", err)
	}
}

// badConfig is an upstream configuration that upstream.New refuses with
// an error containing want.
type badConfig struct {
	name string
	cfg  upstream.Config
	want string
}

func wantNewErrors(t *testing.T, tests []badConfig) {
	t.Helper()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := upstream.New(&tt.cfg, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	tests := []badConfig{
		{"none", upstream.Config{}, "set exactly one of file, stepCA, cfssl"},
		{"two", upstream.Config{File: &upstream.FileConfig{CertFile: "a", KeyFile: "b"}, CFSSL: &upstream.CFSSLConfig{}}, "set exactly one"},
		{"cfssl over http", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: "http://cfssl:8888"}}, "upstream.cfssl.url"},
		{"cfssl without scheme", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: "cfssl:8888"}}, "must be https://"},
		{"cfssl without key", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: "https://cfssl", CAFile: "/ca"}}, "upstream.cfssl.authKeyFile: required"},
		{"cfssl without bundle", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: "https://cfssl", CAFile: "/ca", AuthKeyFile: "/k"}}, "upstream.cfssl.bundleFile: required"},
		{"cfssl missing files", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: "https://cfssl", CAFile: "/nonexistent/ca", AuthKeyFile: "/k", BundleFile: "/b"}}, "upstream.cfssl.caFile"},
		{"step-ca without root", upstream.Config{StepCA: &upstream.StepCAConfig{URL: "https://ca:9000"}}, "upstream.stepCA.rootFile: required"},
		{"step-ca without provisioner", upstream.Config{StepCA: &upstream.StepCAConfig{URL: "https://ca:9000", RootFile: "/r"}}, "upstream.stepCA.provisioner: required"},
		{"step-ca without credential", upstream.Config{StepCA: &upstream.StepCAConfig{URL: "https://ca:9000", RootFile: "/r", Provisioner: "p"}}, "set exactly one of jwk, x5c"},
		{"step-ca negative timeout", upstream.Config{StepCA: &upstream.StepCAConfig{URL: "https://ca:9000", RootFile: "/r", Provisioner: "p", JWK: &upstream.StepCAJWK{KeyFile: "/k"}, Timeout: config.Duration{Duration: -time.Second}}}, "upstream.stepCA.timeout"},
	}
	wantNewErrors(t, tests)
}

func TestNewRejectsBadCredentialFiles(t *testing.T) {
	s := upstreamtest.NewStepCA(t, upstreamtest.StepCAOptions{})
	c := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{})
	dir := t.TempDir()
	pub, err := s.JWK.Public().MarshalJSON()
	if err != nil {
		t.Fatal(err)
	}
	// Larger than any certificate or key file may be (pki.DefaultPEMMaxBytes).
	huge := bytes.Repeat([]byte("A"), pki.DefaultPEMMaxBytes+1)
	tests := []badConfig{
		{"JWK file holds the public key", upstream.Config{StepCA: &upstream.StepCAConfig{URL: s.Config.URL, RootFile: s.Config.RootFile, Provisioner: "mayfly", JWK: &upstream.StepCAJWK{KeyFile: upstreamtest.WriteFile(t, dir, "pub.jwk", pub)}}}, "holds a public key"},
		{"JWK file is garbage", upstream.Config{StepCA: &upstream.StepCAConfig{URL: s.Config.URL, RootFile: s.Config.RootFile, Provisioner: "mayfly", JWK: &upstream.StepCAJWK{KeyFile: upstreamtest.WriteFile(t, dir, "bad.jwk", []byte("{nope"))}}}, "upstream.stepCA.jwk.keyFile"},
		{"root file is no PEM", upstream.Config{StepCA: &upstream.StepCAConfig{URL: s.Config.URL, RootFile: upstreamtest.WriteFile(t, dir, "root", []byte("x")), Provisioner: "mayfly", JWK: s.Config.JWK}}, "upstream.stepCA.rootFile"},
		{"cfssl key not hex", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: c.Config.URL, CAFile: c.Config.CAFile, BundleFile: c.Config.BundleFile, AuthKeyFile: upstreamtest.WriteFile(t, dir, "k", []byte("not hex"))}}, "hex key of at least 16 bytes"},
		{"root file too large", upstream.Config{StepCA: &upstream.StepCAConfig{URL: s.Config.URL, RootFile: upstreamtest.WriteFile(t, dir, "big-root", huge), Provisioner: "mayfly", JWK: s.Config.JWK}}, "upstream.stepCA.rootFile: " + filepath.Join(dir, "big-root") + ": longer than "},
		{"JWK file too large", upstream.Config{StepCA: &upstream.StepCAConfig{URL: s.Config.URL, RootFile: s.Config.RootFile, Provisioner: "mayfly", JWK: &upstream.StepCAJWK{KeyFile: upstreamtest.WriteFile(t, dir, "big.jwk", huge)}}}, "upstream.stepCA.jwk.keyFile: " + filepath.Join(dir, "big.jwk") + ": longer than "},
		{"cfssl key too large", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: c.Config.URL, CAFile: c.Config.CAFile, BundleFile: c.Config.BundleFile, AuthKeyFile: upstreamtest.WriteFile(t, dir, "big-k", huge)}}, "upstream.cfssl.authKeyFile: " + filepath.Join(dir, "big-k") + ": longer than "},
		{"cfssl bundle without root", upstream.Config{CFSSL: &upstream.CFSSLConfig{URL: c.Config.URL, CAFile: c.Config.CAFile, AuthKeyFile: c.Config.AuthKeyFile, BundleFile: upstreamtest.WriteCert(t, dir, "b", c.Signer.Cert)}}, "no self-signed root"},
	}
	wantNewErrors(t, tests)
}

func TestFileUpstreamIsReReadWhenItChanges(t *testing.T) {
	dir := t.TempDir()
	first := upstreamtest.NewCA(t, "Corp file root", nil, -1)
	cfg := upstream.FileConfig{
		CertFile: upstreamtest.WriteCert(t, dir, "ca.crt", first.Cert),
		KeyFile:  upstreamtest.WriteKey(t, dir, "ca.key", first.Key),
	}
	u := newUpstream(t, &upstream.Config{File: &cfg}, nil)
	if r := mustSign(t, u); !r.Roots[0].Equal(first.Cert) {
		t.Fatal("first signing is not under the first root")
	}

	// A half-written change (the new certificate, the old key) is refused
	// with the start-up checks, and nothing is signed.
	second := upstreamtest.NewCA(t, "Corp file root 2", nil, -1)
	upstreamtest.WriteCert(t, dir, "ca.crt", second.Cert)
	if _, err := sign(t, u); err == nil || !strings.Contains(err.Error(), "changed and are refused") || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("error = %v, want the changed files refused for a key that does not match", err)
	}

	// Completed: the new CA signs, without a restart.
	upstreamtest.WriteKey(t, dir, "ca.key", second.Key)
	if r := mustSign(t, u); !r.Roots[0].Equal(second.Cert) {
		t.Fatal("after the change the intermediate is not under the new root")
	}
}
