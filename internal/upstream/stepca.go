package upstream

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"github.com/smallstep/certificates/api"
	"github.com/smallstep/certificates/authority/provisioner"
	"github.com/smallstep/certificates/ca"
	"github.com/smallstep/certificates/errs"
	"go.step.sm/crypto/jose"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// StepCA asks a step-ca to sign the intermediate: a CSR with a one-time
// token of the provisioner (JWK: signed with the provisioner's key; X5C:
// with a certificate that chains to the provisioner's roots). The roots it
// returns are the step-ca's /roots, so a root the step-ca adds reaches
// mayfly's bundle at the next renewal.
type StepCA struct {
	cfg     StepCAConfig
	now     func() time.Time
	timeout time.Duration
	client  *ca.Client
	aud     string
	sign    func(claims jose.Claims, sans []string) (string, error)
}

// NewStepCA reads the provisioner credential and the step-ca's root.
func NewStepCA(cfg StepCAConfig, now func() time.Time) (*StepCA, error) {
	rootPEM, err := readlimit.File(cfg.RootFile, pki.DefaultPEMMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.rootFile: %w", err)
	}
	if _, err := pki.DecodeCertificates(rootPEM, pki.PEMLimits{}); err != nil {
		return nil, fmt.Errorf("upstream.stepCA.rootFile %s: %w", cfg.RootFile, err)
	}
	s := &StepCA{cfg: cfg, now: now, timeout: timeoutOr(cfg.Timeout)}
	// Retries are ours (authority's backoff), not the client's.
	s.client, err = ca.NewClient(cfg.URL, ca.WithCABundle(rootPEM), ca.WithTimeout(s.timeout), ca.WithRetryFunc(func(int) bool { return false }))
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.url: %w", err)
	}
	u, _ := url.Parse(cfg.URL)
	s.aud = u.ResolveReference(&url.URL{Path: "/1.0/sign"}).String()
	switch {
	case cfg.JWK != nil:
		s.sign, err = jwkSigner(cfg)
	default:
		s.sign, err = x5cSigner(cfg)
		// step-ca finds an X5C provisioner by the audience's fragment
		// (a JWK one by issuer and key ID).
		s.aud += "#x5c/" + cfg.Provisioner
	}
	if err != nil {
		return nil, err
	}
	return s, nil
}

// Name names the upstream.
func (s *StepCA) Name() string { return "step-ca " + s.cfg.URL }

// SignIntermediate sends the CSR with a fresh token and returns the chain
// and the step-ca's roots.
func (s *StepCA) SignIntermediate(ctx context.Context, req authority.IntermediateRequest) (chain, roots []*x509.Certificate, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	csr, _, err := intermediateCSR(req, subjectCN(req))
	if err != nil {
		return nil, nil, err
	}
	now := s.now()
	// The token is checked by the step-ca against its own clock: date it
	// by the wall clock. The CA's clock (now) dates the intermediate.
	wall := time.Now()
	jti := make([]byte, 16)
	if _, err := rand.Read(jti); err != nil {
		return nil, nil, err
	}
	tok, err := s.sign(jose.Claims{
		Issuer:    s.cfg.Provisioner,
		Subject:   csr.Subject.CommonName,
		Audience:  jose.Audience{s.aud},
		NotBefore: jose.NewNumericDate(wall.Add(-time.Minute)),
		IssuedAt:  jose.NewNumericDate(wall),
		Expiry:    jose.NewNumericDate(wall.Add(5 * time.Minute)),
		ID:        hex.EncodeToString(jti),
	}, []string{req.TrustDomain.ID().String()})
	if err != nil {
		return nil, nil, fmt.Errorf("provisioner token: %w", err)
	}
	resp, err := s.client.SignWithContext(ctx, &api.SignRequest{
		CsrPEM:   api.CertificateRequest{CertificateRequest: csr},
		OTT:      tok,
		NotAfter: provisioner.NewTimeDuration(now.Add(req.TTL)),
	})
	if err != nil {
		return nil, nil, s.explain(err)
	}
	for _, c := range resp.CertChainPEM {
		chain = append(chain, c.Certificate)
	}
	if len(chain) == 0 && resp.ServerPEM.Certificate != nil {
		chain = append(chain, resp.ServerPEM.Certificate)
		if resp.CaPEM.Certificate != nil {
			chain = append(chain, resp.CaPEM.Certificate)
		}
	}
	rs, err := s.client.RootsWithContext(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("reading the roots: %w", s.explain(err))
	}
	for _, c := range rs.Certificates {
		roots = append(roots, c.Certificate)
	}
	return chain, roots, nil
}

// explain turns a step-ca error into what the operator should check.
func (s *StepCA) explain(err error) error {
	var se *errs.Error
	if !errors.As(err, &se) {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no answer within %s: %w", s.timeout, err)
		}
		return fmt.Errorf("unreachable: %w", err)
	}
	msg := se.Msg
	if msg == "" && se.Err != nil {
		msg = se.Err.Error()
	}
	switch se.Status {
	case http.StatusUnauthorized:
		return fmt.Errorf("the step-ca refused the token of provisioner %q (HTTP 401: %s): check that the provisioner exists and its key (jwk.keyFile) or roots (x5c) match the step-ca's configuration", s.cfg.Provisioner, msg)
	case http.StatusForbidden:
		return fmt.Errorf("the step-ca's policy forbids the request (HTTP 403: %s): check the provisioner's claims (maxTLSCertDuration at least rotation.intermediateTTL) and policies", msg)
	case http.StatusBadRequest:
		return fmt.Errorf("the step-ca refused the request (HTTP 400: %s)", msg)
	default:
		return fmt.Errorf("the step-ca failed (HTTP %d: %s)", se.Status, msg)
	}
}

func jwkSigner(cfg StepCAConfig) (func(jose.Claims, []string) (string, error), error) {
	raw, err := readlimit.File(cfg.JWK.KeyFile, pki.MaxKeyPEMSize)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.jwk.keyFile: %w", err)
	}
	var opts []jose.Option
	if cfg.JWK.PasswordFile != "" {
		opts = append(opts, jose.WithPasswordFile(cfg.JWK.PasswordFile))
	}
	jwk, err := jose.ParseKey(raw, opts...)
	clear(raw)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.jwk.keyFile %s: %w", cfg.JWK.KeyFile, err)
	}
	if jwk.IsPublic() {
		return nil, fmt.Errorf("upstream.stepCA.jwk.keyFile %s: holds a public key; the provisioner's private key is needed", cfg.JWK.KeyFile)
	}
	so := new(jose.SignerOptions).WithType("JWT").WithHeader("kid", jwk.KeyID)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: jose.SignatureAlgorithm(jwk.Algorithm), Key: jwk.Key}, so)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.jwk.keyFile %s: %w", cfg.JWK.KeyFile, err)
	}
	return tokenFunc(signer), nil
}

func x5cSigner(cfg StepCAConfig) (func(jose.Claims, []string) (string, error), error) {
	rawCert, err := readlimit.File(cfg.X5C.CertFile, pki.DefaultPEMMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.x5c.certFile: %w", err)
	}
	certs, err := pki.DecodeCertificates(rawCert, pki.PEMLimits{})
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.x5c.certFile %s: %w", cfg.X5C.CertFile, err)
	}
	rawKey, err := readlimit.File(cfg.X5C.KeyFile, pki.MaxKeyPEMSize)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.x5c.keyFile: %w", err)
	}
	key, err := pki.ParsePrivateKeyPEM(rawKey)
	clear(rawKey)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.x5c.keyFile %s: %w", cfg.X5C.KeyFile, err)
	}
	if !pki.KeyMatches(certs[0], key) {
		return nil, fmt.Errorf("upstream.stepCA.x5c.keyFile %s: does not match the certificate in %s", cfg.X5C.KeyFile, cfg.X5C.CertFile)
	}
	alg, err := algorithmOf(key)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.x5c.keyFile %s: %w", cfg.X5C.KeyFile, err)
	}
	x5c := make([]string, len(certs))
	for i, c := range certs {
		x5c[i] = base64.StdEncoding.EncodeToString(c.Raw)
	}
	so := new(jose.SignerOptions).WithType("JWT").WithHeader("x5c", x5c)
	signer, err := jose.NewSigner(jose.SigningKey{Algorithm: alg, Key: key}, so)
	if err != nil {
		return nil, fmt.Errorf("upstream.stepCA.x5c.keyFile %s: %w", cfg.X5C.KeyFile, err)
	}
	return tokenFunc(signer), nil
}

func tokenFunc(signer jose.Signer) func(jose.Claims, []string) (string, error) {
	return func(c jose.Claims, sans []string) (string, error) {
		return jose.Signed(signer).Claims(c).Claims(map[string]any{"sans": sans}).CompactSerialize()
	}
}

func algorithmOf(key crypto.Signer) (jose.SignatureAlgorithm, error) {
	switch k := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			return jose.ES256, nil
		case elliptic.P384():
			return jose.ES384, nil
		case elliptic.P521():
			return jose.ES512, nil
		}
	case ed25519.PublicKey:
		return jose.EdDSA, nil
	case *rsa.PublicKey:
		return jose.RS256, nil
	}
	return "", fmt.Errorf("unsupported key type %T", key.Public())
}
