package upstream_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/config"
	"github.com/mayfly-pki/mayfly/internal/test/promtest"
	"github.com/mayfly-pki/mayfly/internal/test/testca"
	"github.com/mayfly-pki/mayfly/internal/upstream"
	"github.com/mayfly-pki/mayfly/internal/upstream/upstreamtest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// switchable is the upstream of a running CA that a test turns bad.
type switchable struct{ u authority.Upstream }

func (s *switchable) SignIntermediate(ctx context.Context, req authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate, error) {
	return s.u.SignIntermediate(ctx, req)
}
func (s *switchable) Name() string { return s.u.Name() }

// answer is an upstream that returns what a test made of the request.
type answer struct {
	make func(t *testing.T, req authority.IntermediateRequest) (chain, roots []*x509.Certificate)
	t    *testing.T
}

func (a answer) SignIntermediate(_ context.Context, req authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate, error) {
	chain, roots := a.make(a.t, req)
	return chain, roots, nil
}
func (a answer) Name() string { return "test answer" }

// intermediateCert signs a certificate for pub as an intermediate would
// be, with the changes of edit, under parent.
func intermediateCert(t *testing.T, pub crypto.PublicKey, parent *upstreamtest.CA, edit func(*x509.Certificate)) *x509.Certificate {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "mayfly intermediate"},
		NotBefore:             time.Now().Add(-time.Minute),
		NotAfter:              time.Now().Add(48 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
		URIs:                  []*url.URL{td.ID().URL()},
	}
	if edit != nil {
		edit(tmpl)
	}
	return upstreamtest.Sign(t, tmpl, pub, parent)
}

// TestFailingUpstreamNeverReplacesTheIntermediate: whatever goes wrong
// with the upstream when the intermediate is due for renewal, the
// intermediate in service stays, the loop retries with a bounded backoff,
// and the failure shows in the metric and Manager.Failure (ca status).
func TestFailingUpstreamNeverReplacesTheIntermediate(t *testing.T) {
	good := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{})
	other := upstreamtest.NewCA(t, "Other CA", nil, -1)
	release := make(chan struct{})
	slow := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{Root: good.Root, Signer: good.Signer, Handler: func(h http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			select {
			case <-release:
			case <-r.Context().Done():
			}
			h.ServeHTTP(w, r)
		})
	}})
	t.Cleanup(func() { close(release) }) // before the slow server closes: it waits for its handlers
	down := upstreamtest.NewCFSSL(t, upstreamtest.CFSSLOptions{Root: good.Root, Signer: good.Signer})
	down.Server.Close()

	cfssl := func(edit func(c *upstream.CFSSLConfig)) func(t *testing.T) authority.Upstream {
		return func(t *testing.T) authority.Upstream {
			cfg := good.Config
			edit(&cfg)
			u := newUpstream(t, &upstream.Config{CFSSL: &cfg}, nil)
			return u
		}
	}
	fixed := func(f func(t *testing.T, req authority.IntermediateRequest) (chain, roots []*x509.Certificate)) func(t *testing.T) authority.Upstream {
		return func(t *testing.T) authority.Upstream { return answer{make: f, t: t} }
	}
	roots := []*x509.Certificate{good.Root.Cert}
	tests := []struct {
		name     string
		upstream func(t *testing.T) authority.Upstream
		want     string
	}{
		{"upstream down", cfssl(func(c *upstream.CFSSLConfig) { c.URL = down.Server.URL }), "cfssl is unreachable"},
		{"upstream slow", cfssl(func(c *upstream.CFSSLConfig) {
			*c = slow.Config
			c.Timeout = config.Duration{Duration: 200 * time.Millisecond}
		}), "no answer within 200ms"},
		{"leaf instead of a CA", cfssl(func(c *upstream.CFSSLConfig) { c.Profile = "no-such-profile" }), "a leaf certificate, not a CA"},
		{"CA with the wrong path length", cfssl(func(c *upstream.CFSSLConfig) { c.Profile = "unlimited" }), "path length unlimited, want 1"},
		{"wrong chain", fixed(func(t *testing.T, req authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate) {
			return []*x509.Certificate{intermediateCert(t, req.Key.Public(), other, nil)}, roots
		}), "does not chain to the upstream roots"},
		{"intermediate with a path length", fixed(func(t *testing.T, req authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate) {
			return []*x509.Certificate{intermediateCert(t, req.Key.Public(), good.Signer, func(c *x509.Certificate) { c.MaxPathLen, c.MaxPathLenZero = 3, false }), good.Signer.Cert}, roots
		}), "path length 3, want 0"},
		{"certificate for another key", fixed(func(t *testing.T, _ authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate) {
			return []*x509.Certificate{intermediateCert(t, testca.Key(t).Public(), good.Signer, nil), good.Signer.Cert}, roots
		}), "for another key"},
		{"expired chain", fixed(func(t *testing.T, req authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate) {
			expired := &upstreamtest.CA{Key: good.Signer.Key}
			expired.Cert = intermediateCert(t, good.Signer.Key.Public(), good.Root, func(c *x509.Certificate) {
				c.Subject = good.Signer.Cert.Subject
				c.NotBefore, c.NotAfter = time.Now().Add(-72*time.Hour), time.Now().Add(-time.Hour)
				c.MaxPathLen, c.MaxPathLenZero = 2, false
				c.URIs = nil
			})
			return []*x509.Certificate{intermediateCert(t, req.Key.Public(), expired, nil), expired.Cert}, roots
		}), "does not chain to the upstream roots"},
		{"leaf without the trust domain", fixed(func(t *testing.T, req authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate) {
			return []*x509.Certificate{intermediateCert(t, req.Key.Public(), good.Signer, func(c *x509.Certificate) { c.URIs = nil }), good.Signer.Cert}, roots
		}), "lacks the URI SAN spiffe://example.org"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			goodUp := newUpstream(t, &upstream.Config{CFSSL: &good.Config}, nil)
			up := &switchable{u: goodUp}
			store, err := authority.NewDirStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			clock := rotate.NewFakeClock(time.Now())
			reg := prometheus.NewRegistry()
			m := authority.NewManager(authority.ManagerOptions{
				Store:      store,
				Minter:     &authority.Minter{TrustDomain: td, Policy: authority.DefaultPolicy(), Upstream: up, Rand: rand.Reader},
				Clock:      clock,
				Registerer: reg,
			})
			ctx := context.Background()
			if err := m.Load(ctx); err != nil {
				t.Fatal(err)
			}
			l, _ := m.Current()
			inService := l.State.Intermediate.Current.Cert()

			// Due for renewal, and the upstream fails.
			clock.Set(l.State.Intermediate.PreparePoint(authority.DefaultPolicy().IntermediateSchedule()))
			up.u = tt.upstream(t)
			var waits []time.Duration
			for range 7 {
				waits = append(waits, m.RotateOnce(ctx))
				l, err := m.Current()
				if err != nil {
					t.Fatalf("CA not ready after a failed renewal: %v", err)
				}
				if !l.State.Intermediate.Current.Cert().Equal(inService) || l.State.Intermediate.Next != nil {
					t.Fatal("the failed renewal changed the intermediates")
				}
			}
			want := []time.Duration{10 * time.Second, 20 * time.Second, 40 * time.Second, 80 * time.Second, 160 * time.Second, 5 * time.Minute, 5 * time.Minute}
			for i := range want {
				if waits[i] != want[i] {
					t.Fatalf("retry waits %v, want %v (doubling, at most 5m)", waits, want)
				}
			}
			f := m.Failure()
			if f.Failures != 7 || !strings.Contains(f.Error, tt.want) || f.Step != authority.StepPrepareIntermediate {
				t.Fatalf("Failure() = %+v, want 7 failures of %s with %q", f, authority.StepPrepareIntermediate, tt.want)
			}
			if v, _ := promtest.Value(t, reg, "mayfly_ca_rotation_consecutive_failures"); v != 7 {
				t.Fatalf("mayfly_ca_rotation_consecutive_failures = %v, want 7", v)
			}

			// The upstream recovers: the next attempt prepares a successor.
			up.u = goodUp
			m.RotateOnce(ctx)
			l, _ = m.Current()
			if l.State.Intermediate.Next == nil || m.Failure().Failures != 0 {
				t.Fatalf("after recovery: next=%v failure=%+v, want a successor and no failure", l.State.Intermediate.Next != nil, m.Failure())
			}
			if v, _ := promtest.Value(t, reg, "mayfly_ca_rotation_consecutive_failures"); v != 0 {
				t.Fatalf("mayfly_ca_rotation_consecutive_failures = %v after recovery, want 0", v)
			}
		})
	}
}
