package authority

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// FileUpstream is an Upstream given as certificate and key files (the CA
// config's upstream.file, named so in errors); it signs the intermediates,
// and its root is the trust anchor.
type FileUpstream struct {
	cert  *x509.Certificate
	chain []*x509.Certificate // above cert, up to but excluding roots
	key   crypto.Signer
	roots []*x509.Certificate
	name  string
	now   func() time.Time
}

// LoadFileUpstream reads the CA files. bundleFile holds the roots above
// certFile; without it certFile must be a self-signed root. now is the
// clock the certificate is checked against and intermediates are dated by
// (nil: time.Now).
func LoadFileUpstream(certFile, keyFile, bundleFile string, now func() time.Time) (*FileUpstream, error) {
	if now == nil {
		now = time.Now
	}
	rawCert, err := readlimit.File(certFile, pki.DefaultPEMMaxBytes)
	if err != nil {
		return nil, fmt.Errorf("upstream.file.certFile: %w", err)
	}
	certs, err := pki.DecodeCertificates(rawCert, pki.PEMLimits{})
	if err != nil {
		return nil, fmt.Errorf("upstream.file.certFile %s: %w", certFile, err)
	}
	rawKey, err := readlimit.File(keyFile, pki.MaxKeyPEMSize)
	if err != nil {
		return nil, fmt.Errorf("upstream.file.keyFile: %w", err)
	}
	key, err := pki.ParsePrivateKeyPEM(rawKey)
	if err != nil {
		return nil, fmt.Errorf("upstream.file.keyFile %s: %w", keyFile, err)
	}
	u := &FileUpstream{cert: certs[0], chain: certs[1:], key: key, name: "file " + certFile, now: now}
	if !u.cert.IsCA || u.cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("upstream.file.certFile %s: not a CA certificate with keyCertSign", certFile)
	}
	if !pki.KeyMatches(u.cert, key) {
		return nil, fmt.Errorf("upstream.file.keyFile %s: does not match the certificate in %s", keyFile, certFile)
	}
	if bundleFile == "" {
		if err := u.cert.CheckSignatureFrom(u.cert); err != nil {
			return nil, fmt.Errorf("upstream.file.bundleFile: required, %s is not a self-signed root", certFile)
		}
		u.roots = []*x509.Certificate{u.cert}
		u.chain = nil
	} else {
		rawBundle, err := readlimit.File(bundleFile, pki.DefaultPEMMaxBytes)
		if err != nil {
			return nil, fmt.Errorf("upstream.file.bundleFile: %w", err)
		}
		if u.roots, err = pki.DecodeCertificates(rawBundle, pki.PEMLimits{}); err != nil {
			return nil, fmt.Errorf("upstream.file.bundleFile %s: %w", bundleFile, err)
		}
		u.chain = append([]*x509.Certificate{u.cert}, u.chain...)
	}
	if err := verifyUpstream(u, now()); err != nil {
		return nil, fmt.Errorf("upstream.file.certFile %s: %w", certFile, err)
	}
	return u, nil
}

// verifyUpstream checks at start-up what the first intermediate would
// otherwise find out: that the upstream certificate is valid now and chains
// to the bundle's roots through the intermediates that follow it.
func verifyUpstream(u *FileUpstream, now time.Time) error {
	if now.Before(u.cert.NotBefore) {
		return fmt.Errorf("not valid before %s", u.cert.NotBefore.UTC().Format(time.RFC3339))
	}
	if now.After(u.cert.NotAfter) {
		return fmt.Errorf("expired at %s", u.cert.NotAfter.UTC().Format(time.RFC3339))
	}
	roots, inters := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range u.roots {
		roots.AddCert(r)
	}
	for _, c := range u.chain {
		inters.AddCert(c)
	}
	if _, err := u.cert.Verify(x509.VerifyOptions{
		Roots:         roots,
		Intermediates: inters,
		CurrentTime:   now,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}); err != nil {
		return fmt.Errorf("does not chain to the roots of upstream.file.bundleFile (the intermediates between them go after it in certFile): %w", err)
	}
	return nil
}

// Name names the upstream.
func (u *FileUpstream) Name() string { return u.name }

// SignIntermediate signs the intermediate with the upstream CA key.
func (u *FileUpstream) SignIntermediate(_ context.Context, req IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate, error) {
	cert, err := SignIntermediate(u.cert, u.key, req.Key.Public(), req.TrustDomain, req.TTL, u.now(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	return append([]*x509.Certificate{cert}, u.chain...), u.roots, nil
}
