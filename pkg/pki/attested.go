package pki

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"time"
)

// OIDAttestedAt is a private, non-critical extension of agent SVIDs: the
// time the agent first attested (AttestAgent), as a DER GeneralizedTime. The
// CA sets it on attestation and copies it on every renewal, so that it can
// refuse certificates attested before an eviction of their node and renewals
// past a maximum age since attestation. Only the CA sets it: the CA takes
// nothing from a CSR's extensions. It lives under the same placeholder arc as
// OIDComponentPolicy (see there).
var OIDAttestedAt = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1, 2}

// AttestedAtExtension returns the extension that records attestation time t
// (to the second, UTC).
func AttestedAtExtension(t time.Time) (pkix.Extension, error) {
	if t.IsZero() {
		return pkix.Extension{}, errors.New("attested-at extension: time is zero")
	}
	v, err := asn1.MarshalWithParams(t.UTC().Truncate(time.Second), "generalized")
	if err != nil {
		return pkix.Extension{}, fmt.Errorf("attested-at extension: %w", err)
	}
	return pkix.Extension{Id: OIDAttestedAt, Value: v}, nil
}

// AttestedAt returns the attestation time recorded in cert's OIDAttestedAt
// extension; ok is false when cert has none. A malformed or critical
// extension is an error.
func AttestedAt(cert *x509.Certificate) (t time.Time, ok bool, err error) {
	if cert == nil {
		return time.Time{}, false, nil
	}
	for _, ext := range cert.Extensions {
		if !ext.Id.Equal(OIDAttestedAt) {
			continue
		}
		if ext.Critical {
			return time.Time{}, false, errors.New("attested-at extension must not be critical")
		}
		rest, err := asn1.UnmarshalWithParams(ext.Value, &t, "generalized")
		switch {
		case err != nil:
			return time.Time{}, false, fmt.Errorf("attested-at extension is malformed: %w", err)
		case len(rest) != 0:
			return time.Time{}, false, errors.New("attested-at extension is malformed: trailing data")
		}
		return t.UTC(), true, nil
	}
	return time.Time{}, false, nil
}
