package upstreamtest

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/smallstep/certificates/authority/config"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"go.step.sm/crypto/jose"

	"github.com/mayfly-pki/mayfly/internal/test/loopback"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
	"github.com/mayfly-pki/mayfly/internal/upstream"
)

// IntermediateTemplate is the step-ca provisioner template that makes a
// mayfly intermediate: a CA with path length 0 that keeps the request's
// SANs (the trust domain's SPIFFE ID). docs/upstream.md shows the same.
const IntermediateTemplate = `{
	"subject": {{ toJson .Subject }},
	"sans": {{ toJson .SANs }},
	"keyUsage": ["certSign", "crlSign"],
	"basicConstraints": {"isCA": true, "maxPathLen": 0}
}`

// StepCAOptions shape the test step-ca.
type StepCAOptions struct {
	// Template of the provisioner (default IntermediateTemplate; "leaf":
	// step-ca's default leaf template).
	Template string
	// Root and Intermediate sign (default: new ones; the intermediate
	// has path length 1).
	Root, Intermediate *CA
	// ExtraRoots are listed at /roots besides Root (a root rotation).
	ExtraRoots []*CA
	// X5CRoot makes the provisioner an X5C one trusting this root instead
	// of a JWK one.
	X5CRoot *CA
	// Backdate is how far before its own clock step-ca dates the
	// certificates it signs (default step-ca's, 1m): a test whose CA runs
	// on a fake clock behind the real one needs intermediates valid then.
	Backdate time.Duration
	// Address to listen on (default: a free loopback port): a step-ca
	// started again on the address of one stopped before.
	Address string
	// JWK is the JWK provisioner's key (default: a new one).
	JWK *jose.JSONWebKey
}

// StepCA is a running step-ca and the upstream config that reaches it.
type StepCA struct {
	Root   *CA
	Config upstream.StepCAConfig
	// JWK is the provisioner's private key (JWK provisioner).
	JWK *jose.JSONWebKey
	Dir string
	// Addr is where it listens.
	Addr string

	stop func()
}

// Stop stops the step-ca before the test ends (a second call does nothing).
func (s *StepCA) Stop() { s.stop() }

// NewStepCA starts a step-ca in-process over TLS with one provisioner
// ("mayfly") and stops it when the test ends.
func NewStepCA(t testing.TB, o StepCAOptions) *StepCA {
	t.Helper()
	ca.DisableIdentity = true
	dir := t.TempDir()
	if o.Root == nil {
		o.Root = NewCA(t, "Corp step root", nil, -1)
	}
	if o.Intermediate == nil {
		o.Intermediate = NewCA(t, "Corp step intermediate", o.Root, 1)
	}
	roots := []string{WriteCert(t, dir, "root.crt", o.Root.Cert)}
	for i, r := range o.ExtraRoots {
		roots = append(roots, WriteCert(t, dir, fmt.Sprintf("root-%d.crt", i), r.Cert))
	}
	s := &StepCA{Root: o.Root, Dir: dir}
	tmpl := o.Template
	if tmpl == "" {
		tmpl = IntermediateTemplate
	}
	maxDur := &provisioner.Duration{Duration: 30 * 24 * time.Hour}
	claims := &provisioner.Claims{MaxTLSDur: maxDur, DefaultTLSDur: &provisioner.Duration{Duration: 48 * time.Hour}}
	var opts *provisioner.Options
	if tmpl != "leaf" {
		opts = &provisioner.Options{X509: &provisioner.X509Options{Template: tmpl}}
	}
	var prov provisioner.Interface
	if o.X5CRoot != nil {
		prov = &provisioner.X5C{Type: "X5C", Name: "mayfly", Roots: []byte(pemOf(o.X5CRoot)), Claims: claims, Options: opts}
	} else {
		jwk := o.JWK
		if jwk == nil {
			var err error
			if jwk, err = jose.GenerateJWK("EC", "P-256", "ES256", "sig", "", 0); err != nil {
				t.Fatal(err)
			}
		}
		pub := jwk.Public()
		s.JWK = jwk
		raw, err := json.Marshal(jwk)
		if err != nil {
			t.Fatal(err)
		}
		s.Config.JWK = &upstream.StepCAJWK{KeyFile: WriteFile(t, dir, "provisioner.jwk", raw)}
		prov = &provisioner.JWK{Type: "JWK", Name: "mayfly", Key: &pub, Claims: claims, Options: opts}
	}
	addr := o.Address
	if addr == "" {
		addr = loopback.FreeAddr(t) // step-ca cannot tell the port it bound to ":0"
	}
	s.Addr = addr
	cfg := &config.Config{
		Root:             roots,
		IntermediateCert: WriteCert(t, dir, "intermediate.crt", o.Intermediate.Cert),
		IntermediateKey:  WriteKey(t, dir, "intermediate.key", o.Intermediate.Key),
		Address:          addr,
		DNSNames:         []string{"127.0.0.1", "localhost"},
		AuthorityConfig:  &config.AuthConfig{Provisioners: provisioner.List{prov}},
	}
	if o.Backdate > 0 {
		cfg.AuthorityConfig.Backdate = &provisioner.Duration{Duration: o.Backdate}
	}
	srv, err := ca.New(cfg, ca.WithQuiet(true))
	if err != nil {
		t.Fatalf("step-ca: %v", err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- srv.Run() }()
	var stop sync.Once
	s.stop = func() {
		stop.Do(func() {
			select {
			case err := <-runErr:
				t.Logf("step-ca stopped early: %v", err)
				return
			default:
			}
			_ = srv.Stop()
		})
	}
	t.Cleanup(s.stop)
	s.Config.URL = "https://" + addr
	s.Config.RootFile = WriteCert(t, dir, "trust.crt", o.Root.Cert)
	s.Config.Provisioner = "mayfly"
	client, err := ca.NewClient(s.Config.URL, ca.WithRootFile(s.Config.RootFile))
	if err != nil {
		t.Fatal(err)
	}
	wait.Until(t, "step-ca answers /health", time.Minute, 50*time.Millisecond, func(ctx context.Context) (bool, string) {
		select {
		case err := <-runErr:
			t.Fatalf("step-ca: %v", err)
		default:
		}
		_, err := client.HealthWithContext(ctx)
		return err == nil, fmt.Sprint(err)
	})
	return s
}

func pemOf(c *CA) string { return string(pemCert(c)) }
