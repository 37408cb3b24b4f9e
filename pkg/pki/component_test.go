package pki_test

import (
	"crypto/x509"
	"errors"
	"testing"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestComponentPolicy(t *testing.T) {
	ca := newTestCA(t)
	sign := func(t *testing.T, kind pki.Kind, opts ...pki.SignOption) (*x509.Certificate, error) {
		t.Helper()
		req := workloadRequest(mustKey(t, pki.KeyTypeECDSAP256).Public())
		req.Kind = kind
		if kind == pki.KindAgent {
			req.ID = testAgentID
		}
		s := ca.Signer(nil)
		s.Options = opts
		cert, _, err := s.Sign(req)
		return cert, err
	}
	t.Run("agent leaves carry the component policy", func(t *testing.T) {
		cert, err := sign(t, pki.KindAgent)
		if err != nil {
			t.Fatal(err)
		}
		if !pki.HasComponentPolicy(cert) {
			t.Fatalf("policies %v lack %s", cert.Policies, pki.OIDComponentPolicy)
		}
	})
	t.Run("workload leaves never carry it", func(t *testing.T) {
		cert, err := sign(t, pki.KindWorkload)
		if err != nil {
			t.Fatal(err)
		}
		if pki.HasComponentPolicy(cert) || len(cert.Policies) != 0 {
			t.Fatalf("workload leaf has policies %v", cert.Policies)
		}
	})
	t.Run("an option adding it to a workload leaf fails the self-check", func(t *testing.T) {
		add := pki.SignOptionFunc(func(_ *pki.SignRequest, tmpl *x509.Certificate) error {
			tmpl.Policies = append(tmpl.Policies, pki.OIDComponentPolicy)
			return nil
		})
		if _, err := sign(t, pki.KindWorkload, add); !errors.Is(err, pki.ErrNotSVID) {
			t.Fatalf("err = %v, want ErrNotSVID", err)
		}
	})
	t.Run("an option removing it from an agent leaf fails the self-check", func(t *testing.T) {
		drop := pki.SignOptionFunc(func(_ *pki.SignRequest, tmpl *x509.Certificate) error {
			tmpl.Policies = nil
			return nil
		})
		if _, err := sign(t, pki.KindAgent, drop); !errors.Is(err, pki.ErrNotSVID) {
			t.Fatalf("err = %v, want ErrNotSVID", err)
		}
	})
	t.Run("nil certificate has none", func(t *testing.T) {
		if pki.HasComponentPolicy(nil) {
			t.Fatal("nil certificate reported the component policy")
		}
	})
}
