package upstream

import (
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/url"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// intermediateCSR is the request an upstream signs: the new key, the
// trust domain's SPIFFE ID as its only SAN (leaves verify against an
// intermediate that names their trust domain), and a subject the
// upstream's token names. It asks for a CA, but the upstream's profile or
// template decides: the answer is checked either way.
func intermediateCSR(req authority.IntermediateRequest) (csr *x509.CertificateRequest, der []byte, err error) {
	id := req.TrustDomain.ID().URL()
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: subjectCN(req), Organization: []string{"mayfly"}},
		URIs:    []*url.URL{id},
	}
	der, err = x509.CreateCertificateRequest(rand.Reader, tmpl, req.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request: %w", err)
	}
	csr, err = x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, nil, fmt.Errorf("certificate request: %w", err)
	}
	return csr, der, nil
}

func subjectCN(req authority.IntermediateRequest) string {
	return "mayfly intermediate " + req.TrustDomain.Name()
}

func csrPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
