package agent

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// ErrBadSVID is wrapped by every refusal of a certificate the CA returned:
// one that does not chain to the trust bundle, names another identity
// than the one asked for, or certifies another key than the CSR's. Such a
// certificate is never used or served; the attempt counts as failed.
var ErrBadSVID = errors.New("the CA returned a certificate the agent refuses")

// checkIssued checks what the CA returned for a request of want with key:
// the leaf chains to roots for eku at now (pki.VerifyX509SVID), its URI SAN
// is want, and its public key is key's.
func checkIssued(chain []*x509.Certificate, key crypto.Signer, want spiffeid.ID, roots []*x509.Certificate, now time.Time, eku x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: empty certificate chain", ErrBadSVID)
	}
	id, err := pki.VerifyX509SVID(chain[0], chain[1:], roots, now, eku)
	if err != nil {
		return fmt.Errorf("%w: it does not verify against the trust bundle: %w", ErrBadSVID, err)
	}
	if id != want {
		return fmt.Errorf("%w: it names %s, not the requested %s", ErrBadSVID, id, want)
	}
	if !pki.KeyMatches(chain[0], key) {
		return fmt.Errorf("%w: it certifies another key than the one of the request (serial %s)", ErrBadSVID, chain[0].SerialNumber.Text(16))
	}
	return nil
}

// requestedID is the SPIFFE ID spec asks for: its SpiffeID (standalone),
// else the ServiceAccount ID of its "ns/sa" key (Kubernetes; a "#..."
// suffix tells volume variants apart).
func requestedID(td spiffeid.TrustDomain, spec Spec) (spiffeid.ID, error) {
	if spec.SpiffeID != "" {
		return pki.ParseID(spec.SpiffeID)
	}
	key, _, _ := strings.Cut(spec.Key, "#")
	ns, sa, ok := strings.Cut(key, "/")
	if !ok {
		return spiffeid.ID{}, fmt.Errorf("identity %q names no SPIFFE ID and no ns/sa", spec.Key)
	}
	return pki.WorkloadID(td, ns, sa)
}
