package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"net/url"
	"slices"
	"time"
)

// leafView returns the *x509.Certificate that x509.ParseCertificate
// returns for der, a leaf the direct encoder just wrote from tmpl for pub
// and authority a, without parsing it: every field is what the encoder wrote
// (the raw parts are sub-slices of der, found by a walk of its outer
// structure). It returns nil when tmpl has something the parser
// interprets in a way not reproduced here (an extra extension the parser
// reads, a critical unknown one, policies other than OIDComponentPolicy, a
// URI that does not parse back to itself); Sign then parses der.
// TestDirectLeaf_matchesCreateCertificate, TestSign_directAndStandardPathsAgree
// and FuzzDirectLeaf compare it with x509.ParseCertificate.
func leafView(der []byte, tmpl *x509.Certificate, pub crypto.PublicKey, a Authority) *x509.Certificate {
	alg, ok := sigAlgFor(a.Key)
	if !ok || !viewShape(tmpl) {
		return nil
	}
	issuer := a.Cert
	_, body, _, ok := readDER(der, tagSequence)
	if !ok {
		return nil
	}
	tbs, tbsBody, body, ok := readDER(body, tagSequence)
	if !ok {
		return nil
	}
	_, sigBits, _, ok := readDER(skipDER(body), tagBitString)
	if !ok || len(sigBits) < 1 {
		return nil
	}
	// version, serial, signature algorithm, issuer, validity, subject
	rest := tbsBody
	for range 5 {
		rest = skipDER(rest)
	}
	subject, _, rest, ok := readDER(rest, tagSequence)
	if !ok {
		return nil
	}
	spki, _, rest, ok := readDER(rest, tagSequence)
	if !ok {
		return nil
	}
	_, exts, _, ok := readDER(rest, tagExtensions)
	if !ok {
		return nil
	}
	if _, exts, _, ok = readDER(exts, tagSequence); !ok {
		return nil
	}

	c := &x509.Certificate{
		Raw:                     der,
		RawTBSCertificate:       tbs,
		RawSubjectPublicKeyInfo: spki,
		RawSubject:              subject,
		RawIssuer:               issuer.RawSubject,
		Signature:               sigBits[1:],
		PublicKey:               pub,
		Version:                 3,
		SerialNumber:            tmpl.SerialNumber,
		Issuer:                  issuer.Subject,
		NotBefore:               time.Unix(tmpl.NotBefore.Unix(), 0).UTC(),
		NotAfter:                time.Unix(tmpl.NotAfter.Unix(), 0).UTC(),
		KeyUsage:                tmpl.KeyUsage,
		ExtKeyUsage:             cloneOrNil(tmpl.ExtKeyUsage),
		BasicConstraintsValid:   true,
		MaxPathLen:              -1,
		SubjectKeyId:            cloneOrNil(tmpl.SubjectKeyId),
		DNSNames:                cloneOrNil(tmpl.DNSNames),
	}
	switch pub.(type) {
	case *ecdsa.PublicKey:
		c.PublicKeyAlgorithm = x509.ECDSA
	case ed25519.PublicKey:
		c.PublicKeyAlgorithm = x509.Ed25519
	case *rsa.PublicKey:
		c.PublicKeyAlgorithm = x509.RSA
	default:
		return nil
	}
	c.SignatureAlgorithm = alg.alg
	if len(tmpl.Subject.Organization) != 0 {
		c.Subject = pkix.Name{
			Organization: []string{LeafOrganization},
			Names:        []pkix.AttributeTypeAndValue{{Type: oidOrganization, Value: LeafOrganization}},
		}
	}
	if akid := leafAKID(tmpl, issuer); len(akid) > 0 {
		c.AuthorityKeyId = slices.Clone(akid)
	}
	for _, u := range tmpl.URIs {
		text := u.String()
		p, err := url.Parse(text)
		if err != nil || p.String() != text || !plainHost(p.Host) {
			return nil
		}
		c.URIs = append(c.URIs, p)
	}
	if len(tmpl.Policies) > 0 {
		c.Policies = []x509.OID{OIDComponentPolicy}
		c.PolicyIdentifiers = []asn1.ObjectIdentifier{oidComponentPolicyASN1}
	}
	extra := tmpl.ExtraExtensions
	// A leaf has at most 7 standard extensions (standardLeafExtensions)
	// and its extra ones: one allocation instead of the slice growing.
	c.Extensions = make([]pkix.Extension, 0, len(standardLeafExtensions)+len(extra))
	for len(exts) > 0 {
		_, body, next, ok := readDER(exts, tagSequence)
		if !ok {
			return nil
		}
		oid, _, body, ok := readDER(body, tagOID)
		if !ok {
			return nil
		}
		e := pkix.Extension{Id: standardExtensionID(oid)}
		if bytes.HasPrefix(body, derTrue) {
			e.Critical, body = true, body[len(derTrue):]
		}
		if _, e.Value, _, ok = readDER(body, tagOctetString); !ok {
			return nil
		}
		if e.Id == nil {
			if len(extra) == 0 {
				return nil
			}
			e.Id, extra = slices.Clone(extra[0].Id), extra[1:]
		}
		c.Extensions = append(c.Extensions, e)
		exts = next
	}
	return c
}

// viewShape reports whether leafView reproduces what the parser makes of
// tmpl's certificate: the parser reads no extra extension into a field or
// refuses it, and the policies are none or OIDComponentPolicy.
func viewShape(tmpl *x509.Certificate) bool {
	switch {
	case len(tmpl.Policies) > 1,
		len(tmpl.Policies) == 1 && !tmpl.Policies[0].Equal(OIDComponentPolicy):
		return false
	}
	for i, e := range tmpl.ExtraExtensions {
		// The parser reads 2.5.29.* and authorityInfoAccess, lists an
		// unknown critical one as unhandled and refuses a duplicate.
		if e.Critical || len(e.Id) < 3 || (e.Id[0] == 2 && e.Id[1] == 5 && e.Id[2] == 29) || e.Id.Equal(oidAuthorityInfoAccess) ||
			slices.ContainsFunc(tmpl.ExtraExtensions[:i], func(o pkix.Extension) bool { return o.Id.Equal(e.Id) }) {
			return false
		}
	}
	return true
}

var (
	oidOrganization        = asn1.ObjectIdentifier{2, 5, 4, 10}
	oidAuthorityInfoAccess = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 1}
	oidComponentPolicyASN1 = asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1, 1}
)

// standardExtensionID returns the OID of an extension the encoder writes
// from template fields, nil for an extra extension.
func standardExtensionID(der []byte) asn1.ObjectIdentifier {
	for _, s := range []struct {
		der []byte
		id  asn1.ObjectIdentifier
	}{
		{derOIDKeyUsage, oidKeyUsage}, {derOIDExtendedKeyUsage, oidExtendedKeyUsage},
		{derOIDBasicConstraints, oidBasicConstraints}, {derOIDSubjectKeyID, oidSubjectKeyID},
		{derOIDAuthorityKeyID, oidAuthorityKeyID}, {derOIDSubjectAltName, oidSubjectAltName},
		{derOIDCertificatePolicies, oidCertificatePolicies},
	} {
		if bytes.Equal(der, s.der) {
			return slices.Clone(s.id)
		}
	}
	return nil
}

// skipDER returns b after its first element (nil if there is none).
func skipDER(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	_, _, rest, ok := readDER(b, b[0])
	if !ok {
		return nil
	}
	return rest
}

// plainHost reports whether host is one or more labels of letters, digits,
// '-' and '_' joined by single dots: a subset of the names the parser
// accepts in a URI, which refuses an empty label or a trailing dot.
func plainHost(host string) bool {
	label := 0
	for i := 0; i < len(host); i++ {
		switch c := host[i]; {
		case c == '.':
			if label == 0 {
				return false
			}
			label = 0
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
			label++
		default:
			return false
		}
	}
	return label > 0
}

// cloneOrNil copies s; an empty s is nil, as the parser leaves a field
// the certificate does not carry.
func cloneOrNil[T any](s []T) []T {
	if len(s) == 0 {
		return nil
	}
	return slices.Clone(s)
}
