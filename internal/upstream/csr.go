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
func intermediateCSR(req authority.IntermediateRequest, cn string) (csr *x509.CertificateRequest, der []byte, err error) {
	id := req.TrustDomain.ID().URL()
	tmpl := &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: cn, Organization: []string{"mayfly"}},
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

// issuerCN names the issuing CA cfssl signs; it must differ from the
// intermediate's subject, or the intermediate would look self-issued and
// lack its authority key identifier.
func issuerCN(req authority.IntermediateRequest) string {
	return "mayfly issuing CA " + req.TrustDomain.Name()
}

func csrPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}
