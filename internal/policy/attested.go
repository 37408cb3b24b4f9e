package policy

import (
	"crypto/x509"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// RuleAttestedAt names the AttestedAt rule.
const RuleAttestedAt = "attested-at"

// AttestedAt records the time an agent first attested in its SVID
// (pki.OIDAttestedAt): the time of the attestation itself, or, on renewal,
// the time the presented SVID carries. Only the CA sets it; nothing is taken
// from the CSR. Other kinds are left alone.
type AttestedAt struct{ Time time.Time }

// Name implements Rule.
func (AttestedAt) Name() string { return RuleAttestedAt }

// Apply implements pki.SignOption.
func (a AttestedAt) Apply(req *pki.SignRequest, tmpl *x509.Certificate) error {
	if req.Kind != pki.KindAgent {
		return nil
	}
	ext, err := pki.AttestedAtExtension(a.Time)
	if err != nil {
		return Deny(RuleAttestedAt, ClassInternal, "%v", err)
	}
	tmpl.ExtraExtensions = append(tmpl.ExtraExtensions, ext)
	return nil
}
