package demo

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"strings"
)

// Fingerprint names a certificate in the demo's output: the first 4 bytes
// of the SHA-256 of its DER, in hex.
func Fingerprint(c *x509.Certificate) string {
	sum := sha256.Sum256(c.Raw)
	return hex.EncodeToString(sum[:4])
}

// Fingerprints is Fingerprint of each certificate, space-separated.
func Fingerprints(cs []*x509.Certificate) string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = Fingerprint(c)
	}
	return strings.Join(out, " ")
}

// RootOf names the root among roots that issued the top of chain (or is
// it), "unknown" when none did.
func RootOf(chain, roots []*x509.Certificate) string {
	top := chain[len(chain)-1]
	for _, r := range roots {
		if top.CheckSignatureFrom(r) == nil || top.Equal(r) {
			return Fingerprint(r)
		}
	}
	return "unknown"
}
