package pki

import (
	"crypto/x509"
	"slices"
)

// OIDComponentPolicy marks the certificates the CA issues to mayfly's own
// components: agent SVIDs and the CA's serving certificate carry it in their
// certificate policies extension, and workload certificates never do. Agents
// require it of the CA's serving certificate, and the CA of agents' client
// certificates, so a certificate issued to a workload cannot pose as either
// even if it named spiffe://<td>/mayfly/... (which the CA's policy refuses
// to issue to workloads in the first place).
//
// The arc 1.3.6.1.4.1.99999.1 is a placeholder that mayfly owns by
// convention only: 99999 is not an IANA Private Enterprise Number assigned to
// mayfly. Replacing it with a registered arc changes what agents and the CA
// accept, so it needs the same upgrade path as introducing it (see
// docs/security.md, "Reserved identities").
var OIDComponentPolicy = mustOID(1, 3, 6, 1, 4, 1, 99999, 1, 1)

// HasComponentPolicy reports whether cert carries OIDComponentPolicy.
func HasComponentPolicy(cert *x509.Certificate) bool {
	return cert != nil && slices.ContainsFunc(cert.Policies, OIDComponentPolicy.Equal)
}

func mustOID(arcs ...uint64) x509.OID {
	oid, err := x509.OIDFromInts(arcs)
	if err != nil {
		panic(err)
	}
	return oid
}
