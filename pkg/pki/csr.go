package pki

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
)

// MaxCSRSize is the maximum size in bytes of a DER-encoded CSR that ParseCSR
// accepts. ParseCSRPEM accepts PEM of up to twice this size.
const MaxCSRSize = 16 << 10

// Errors of ParseCSR and ParseCSRPEM.
var (
	// ErrCSRTooLarge: the CSR exceeds MaxCSRSize.
	ErrCSRTooLarge = errors.New("CSR too large")
	// ErrCSRMalformed: the CSR cannot be decoded or parsed.
	ErrCSRMalformed = errors.New("malformed CSR")
	// ErrCSRSignature: the CSR's self-signature does not verify, i.e. the
	// requester did not prove possession of the private key.
	ErrCSRSignature = errors.New("invalid CSR signature")
)

// CreateCSR creates a DER-encoded PKCS#10 certificate request for key, with
// an empty subject and no names: mayfly's CA takes names from attestation,
// never from the CSR.
func CreateCSR(key crypto.Signer, rand io.Reader) ([]byte, error) {
	if key == nil {
		return nil, errors.New("create CSR: key is nil")
	}
	if err := CheckPublicKey(key.Public()); err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	der, err := x509.CreateCertificateRequest(rand, &x509.CertificateRequest{}, key)
	if err != nil {
		return nil, fmt.Errorf("create CSR: %w", err)
	}
	return der, nil
}

// ParseCSR parses a DER-encoded CSR from an untrusted requester: it enforces
// MaxCSRSize, checks the public key with CheckPublicKey (before the more
// expensive signature check) and verifies the self-signature. Errors wrap
// ErrCSRTooLarge, ErrCSRMalformed, ErrCSRSignature, or ErrWeakKey /
// ErrUnsupportedKey. The CSRs CreateCSR makes are read by a direct parser
// (csrdirect.go) with the same result. The names in the CSR are returned
// as parsed but mean nothing to mayfly: Sign never reads them.
func ParseCSR(der []byte) (*x509.CertificateRequest, error) {
	if len(der) > MaxCSRSize {
		return nil, fmt.Errorf("%w: %d bytes exceed %d", ErrCSRTooLarge, len(der), MaxCSRSize)
	}
	if len(der) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrCSRMalformed)
	}
	if csr, direct, err := parseCSRDirect(der); direct {
		if err != nil {
			return nil, err
		}
		return csr, nil
	}
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSRMalformed, err)
	}
	if err := CheckPublicKey(csr.PublicKey); err != nil {
		return nil, fmt.Errorf("CSR public key: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCSRSignature, err)
	}
	return csr, nil
}

// ParseCSRPEM decodes exactly one "CERTIFICATE REQUEST" (or legacy "NEW
// CERTIFICATE REQUEST") PEM block, surrounded by whitespace only, and parses
// it with ParseCSR. PEM-level errors wrap ErrCSRMalformed and the PEM
// sentinel (ErrPEMTruncated, ErrPEMWrongType, ...), or ErrCSRTooLarge.
func ParseCSRPEM(data []byte) (*x509.CertificateRequest, error) {
	lim := PEMLimits{MaxBlocks: 1, MaxBytes: 2 * MaxCSRSize}
	blocks, err := decodePEMBlocks(data, lim, "CERTIFICATE REQUEST", "NEW CERTIFICATE REQUEST")
	switch {
	case errors.Is(err, ErrPEMTooLarge):
		return nil, fmt.Errorf("%w: %w", ErrCSRTooLarge, err)
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrCSRMalformed, err)
	}
	return ParseCSR(blocks[0].Bytes)
}
