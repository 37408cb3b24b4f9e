package upstream

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/cloudflare/cfssl/api/client"
	"github.com/cloudflare/cfssl/auth"
	cferr "github.com/cloudflare/cfssl/errors"
	cflog "github.com/cloudflare/cfssl/log"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// DefaultCFSSLProfile is the cfssl signing profile asked for by default.
const DefaultCFSSLProfile = "intermediate"

// CFSSL asks a cfssl server to sign the intermediate through its
// authenticated sign API (/api/v1/cfssl/authsign, an HMAC of the request
// with the profile's auth_key), over TLS. The roots are upstream.cfssl's
// bundleFile, re-read at every request.
type CFSSL struct {
	cfg     CFSSLConfig
	now     func() time.Time
	timeout time.Duration
	remote  *client.AuthRemote
}

var quietCFSSL sync.Once

// NewCFSSL reads the key and the TLS trust, and checks the bundle.
func NewCFSSL(cfg CFSSLConfig, now func() time.Time) (*CFSSL, error) {
	// cfssl logs to stderr at INFO through a global logger; mayfly
	// reports its errors itself.
	quietCFSSL.Do(func() { cflog.Level = cflog.LevelFatal + 1 })
	if cfg.Profile == "" {
		cfg.Profile = DefaultCFSSLProfile
	}
	caPEM, err := readlimit.File(cfg.CAFile, pki.DefaultPEMMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("upstream.cfssl.caFile: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("upstream.cfssl.caFile %s: no PEM certificate", cfg.CAFile)
	}
	rawKey, err := readlimit.File(cfg.AuthKeyFile, pki.MaxKeyPEMSize)
	if err != nil {
		return nil, fmt.Errorf("upstream.cfssl.authKeyFile: %w", err)
	}
	hexKey := strings.TrimSpace(string(rawKey))
	clear(rawKey)
	if k, err := hex.DecodeString(hexKey); err != nil || len(k) < 16 {
		return nil, fmt.Errorf("upstream.cfssl.authKeyFile %s: must hold a hex key of at least 16 bytes (cfssl's auth_keys \"key\")", cfg.AuthKeyFile)
	}
	provider, err := auth.New(hexKey, nil)
	if err != nil {
		return nil, fmt.Errorf("upstream.cfssl.authKeyFile %s: %w", cfg.AuthKeyFile, err)
	}
	c := &CFSSL{cfg: cfg, now: now, timeout: timeoutOr(cfg.Timeout)}
	if _, err := c.roots(); err != nil {
		return nil, err
	}
	c.remote = client.NewAuthServer(cfg.URL, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}, provider)
	c.remote.SetRequestTimeout(c.timeout)
	return c, nil
}

// Name names the upstream.
func (c *CFSSL) Name() string { return "cfssl " + c.cfg.URL + " profile " + c.cfg.Profile }

// signRequest is cfssl's signer.SignRequest, the fields mayfly sets.
type signRequest struct {
	Request string `json:"certificate_request"`
	Profile string `json:"profile"`
}

// SignIntermediate has cfssl sign an issuing CA for a key made for this
// one request, signs the intermediate with it, and returns the
// intermediate, the issuing CA and the bundle's intermediates, and the
// bundle's roots.
//
// Why two certificates: cfssl drops every SAN from a CA certificate, and
// relying parties need a CA in the chain that names the trust domain
// (spiffe://<trust domain>). The issuing CA (path length 1, from the
// profile) signs one intermediate (path length 0, with the SAN) and its
// key is then dropped: it is never stored and never signs again.
func (c *CFSSL) SignIntermediate(ctx context.Context, req authority.IntermediateRequest) (chain, roots []*x509.Certificate, err error) {
	bundle, err := c.roots()
	if err != nil {
		return nil, nil, err
	}
	issuerKey, err := pki.GenerateKey(pki.DefaultKeyType, rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	issuer, err := c.signIssuer(ctx, authority.IntermediateRequest{TrustDomain: req.TrustDomain, Key: issuerKey, TTL: req.TTL})
	if err != nil {
		return nil, nil, err
	}
	if err := c.checkIssuer(issuer, issuerKey); err != nil {
		return nil, nil, err
	}
	inter, err := authority.SignIntermediate(issuer, issuerKey, req.Key.Public(), req.TrustDomain, req.TTL, c.now(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("signing the intermediate with cfssl's issuing CA: %w", err)
	}
	chain = append([]*x509.Certificate{inter, issuer}, bundle.intermediates...)
	return chain, bundle.roots, nil
}

// signIssuer sends the issuing CA's request to the profile.
func (c *CFSSL) signIssuer(ctx context.Context, req authority.IntermediateRequest) (*x509.Certificate, error) {
	_, der, err := intermediateCSR(req, issuerCN(req))
	if err != nil {
		return nil, err
	}
	body, err := json.Marshal(signRequest{Request: string(csrPEM(der)), Profile: c.cfg.Profile})
	if err != nil {
		return nil, err
	}
	type result struct {
		pem []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		pem, err := c.remote.Sign(body)
		done <- result{pem, err}
	}()
	var r result
	select {
	case <-ctx.Done():
		return nil, fmt.Errorf("cancelled waiting for cfssl: %w", ctx.Err())
	case r = <-done:
	}
	if r.err != nil {
		return nil, c.explain(r.err)
	}
	certs, err := pki.DecodeCertificates(r.pem, pki.PEMLimits{})
	if err != nil {
		return nil, fmt.Errorf("cfssl answered with no usable certificate: %w", err)
	}
	return certs[0], nil
}

// checkIssuer checks what cfssl signed before its key signs anything:
// a CA for our key with path length 1 (it signs the intermediate, which
// signs leaves).
func (c *CFSSL) checkIssuer(cert *x509.Certificate, key crypto.Signer) error {
	switch {
	case !cert.BasicConstraintsValid || !cert.IsCA:
		return fmt.Errorf("cfssl returned a leaf certificate, not a CA: profile %q must have ca_constraint.is_ca (cfssl signs with its default profile when the name is unknown)", c.cfg.Profile)
	case cert.KeyUsage&x509.KeyUsageCertSign == 0:
		return fmt.Errorf("cfssl returned a CA without keyCertSign: profile %q must have the usage \"cert sign\"", c.cfg.Profile)
	case cert.MaxPathLen != 1:
		pl := "unlimited"
		if cert.MaxPathLen == 0 {
			pl = "0"
		} else if cert.MaxPathLen > 0 {
			pl = fmt.Sprint(cert.MaxPathLen)
		}
		return fmt.Errorf("cfssl returned a CA with path length %s, want 1: profile %q must have ca_constraint max_path_len 1", pl, c.cfg.Profile)
	case !pki.KeyMatches(cert, key):
		return errors.New("cfssl returned a certificate for another key than the one in the request")
	}
	return nil
}

type cfsslBundle struct{ intermediates, roots []*x509.Certificate }

// roots reads bundleFile: the self-signed certificates are the roots, the
// others the intermediates between them and cfssl's signing CA.
func (c *CFSSL) roots() (cfsslBundle, error) {
	raw, err := readlimit.File(c.cfg.BundleFile, pki.DefaultPEMMaxBytes)
	if err != nil {
		return cfsslBundle{}, fmt.Errorf("upstream.cfssl.bundleFile: %w", err)
	}
	certs, err := pki.DecodeCertificates(raw, pki.PEMLimits{})
	if err != nil {
		return cfsslBundle{}, fmt.Errorf("upstream.cfssl.bundleFile %s: %w", c.cfg.BundleFile, err)
	}
	var b cfsslBundle
	for _, cert := range certs {
		if cert.CheckSignatureFrom(cert) == nil {
			b.roots = append(b.roots, cert)
		} else {
			b.intermediates = append(b.intermediates, cert)
		}
	}
	if len(b.roots) == 0 {
		return cfsslBundle{}, fmt.Errorf("upstream.cfssl.bundleFile %s: no self-signed root", c.cfg.BundleFile)
	}
	return b, nil
}

// cfsslResponse is the error part of cfssl's API response.
type cfsslResponse struct {
	Errors []struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errors"`
}

// explain turns a cfssl client error into what the operator should check.
// The client wraps the server's answer as an *errors.Error whose message
// is the server's JSON response.
func (c *CFSSL) explain(err error) error {
	var ce *cferr.Error
	if !errors.As(err, &ce) {
		return fmt.Errorf("cfssl: %w", err)
	}
	var resp cfsslResponse
	if json.Unmarshal([]byte(ce.Message), &resp) != nil || len(resp.Errors) == 0 {
		msg := ce.Message
		if strings.Contains(msg, "Client.Timeout") || strings.Contains(msg, "deadline exceeded") {
			return fmt.Errorf("cfssl gave no answer within %s: %s", c.timeout, msg)
		}
		if strings.Contains(msg, "failed POST") {
			return fmt.Errorf("cfssl is unreachable: %s", msg)
		}
		return fmt.Errorf("cfssl failed (code %d): %s", ce.ErrorCode, msg)
	}
	e := resp.Errors[0]
	return fmt.Errorf("%s (cfssl code %d: %s)", cfsslReason(e.Code, e.Message, c.cfg.Profile), e.Code, e.Message)
}

// cfsslReason says in words what a cfssl error code and message mean.
func cfsslReason(code int, msg, profile string) string {
	switch {
	case msg == "invalid token":
		return "cfssl refused the request's token: upstream.cfssl.authKeyFile does not hold the auth_key of profile " + profile
	case msg == "no authentication provider" || msg == "authentication required":
		return "cfssl profile " + profile + " has no auth_key, or does not exist (cfssl then uses its default profile): configure the profile with an auth_key"
	case code == 400 && strings.Contains(msg, "parse"):
		return "cfssl could not parse the request"
	case code/1000 == int(cferr.PolicyError/1000):
		switch cferr.Reason(code % 1000) {
		case cferr.UnknownProfile:
			return "cfssl has no profile " + profile
		case cferr.InvalidPolicy:
			return "cfssl's signing policy is invalid"
		case cferr.NoKeyUsages:
			return "cfssl profile " + profile + " allows no key usages"
		case cferr.UnmatchedWhitelist:
			return "cfssl profile " + profile + " does not allow the request's fields (whitelist)"
		default:
			return "cfssl's policy refuses the request (profile " + profile + ")"
		}
	case code/1000 == int(cferr.CSRError/1000):
		return "cfssl could not decode or verify the certificate request"
	case code/1000 == int(cferr.CertificateError/1000) || code/1000 == int(cferr.PrivateKeyError/1000):
		return "cfssl's own signing CA is unusable"
	}
	return "cfssl refused the request"
}
