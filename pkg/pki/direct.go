package pki

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"math/big"
	"reflect"
	"slices"
	"time"
)

// The direct encoder builds the DER of the leaves mayfly issues (workload
// and agent X.509-SVIDs) without x509.CreateCertificate: the template of a
// leaf has a fixed shape, so its TBSCertificate is written field by field
// by a small DER appender (der.go) that allocates nothing per element, byte
// for byte what CreateCertificate writes for the same
// template (the differential tests and FuzzDirectLeaf compare the two), and
// signed once. What it leaves out is what CreateCertificate repeats on every
// call: reflection-driven encoding/asn1, the checks of a free-form template,
// and the verification of its own signature. The last one guards against a
// faulty signer; the standard library's own keys need no such guard (RSA
// checks its CRT result itself), so a signature is verified here only when
// the authority's key is another crypto.Signer (a PKCS#11 or KMS key).
//
// A template that leaves the fixed shape (an option set a field the encoder
// does not write, a subject other than empty or O=mayfly, an extra extension
// that replaces a standard one, a time CreateCertificate would encode
// differently) is not encoded here: directLeaf reports errNotDirect and Sign
// takes the standard path for it.

// errNotDirect: the template is not one the direct encoder writes; Sign
// falls back to x509.CreateCertificate.
var errNotDirect = errors.New("template outside the direct encoder's shape")

var (
	oidSubjectKeyID        = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidKeyUsage            = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidSubjectAltName      = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidBasicConstraints    = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidCertificatePolicies = asn1.ObjectIdentifier{2, 5, 29, 32}
	oidAuthorityKeyID      = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidExtendedKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidEKUServerAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 1}
	oidEKUClientAuth       = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 3, 2}

	oidPublicKeyRSA     = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 1}
	oidPublicKeyECDSA   = asn1.ObjectIdentifier{1, 2, 840, 10045, 2, 1}
	oidPublicKeyEd25519 = asn1.ObjectIdentifier{1, 3, 101, 112}
	oidCurveP256        = asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}
	oidCurveP384        = asn1.ObjectIdentifier{1, 3, 132, 0, 34}

	oidSHA256WithRSA   = asn1.ObjectIdentifier{1, 2, 840, 113549, 1, 1, 11}
	oidECDSAWithSHA256 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 2}
	oidECDSAWithSHA384 = asn1.ObjectIdentifier{1, 2, 840, 10045, 4, 3, 3}
)

// leafSubjectDER is the encoded subject O=mayfly, as CreateCertificate
// encodes it (asn1.Marshal of the RDN sequence); an empty subject is the
// empty SEQUENCE.
var (
	leafSubjectDER  = mustMarshal(pkix.Name{Organization: []string{LeafOrganization}}.ToRDNSequence())
	emptySubjectDER = []byte{0x30, 0x00}
)

func mustMarshal(v any) []byte {
	der, err := asn1.Marshal(v)
	if err != nil {
		panic(err)
	}
	return der
}

// issuerSigAlg is how the direct encoder signs with an authority key: the
// x509 algorithm (what CreateCertificate picks by default for the key), its
// hash, and whether the key is one of the standard library's.
type issuerSigAlg struct {
	alg      x509.SignatureAlgorithm
	oid      []byte // encoded OBJECT IDENTIFIER
	nullArgs bool   // RSA: AlgorithmIdentifier parameters NULL
	hash     crypto.Hash
	stdlib   bool
}

// sigAlgFor returns the default signature algorithm of key, the one
// CreateCertificate chooses; ok is false for keys the direct encoder does
// not sign with (they take the standard path).
func sigAlgFor(key crypto.Signer) (issuerSigAlg, bool) {
	var a issuerSigAlg
	switch pub := key.Public().(type) {
	case *ecdsa.PublicKey:
		switch pub.Curve {
		case elliptic.P256():
			a = issuerSigAlg{alg: x509.ECDSAWithSHA256, oid: derOIDECDSAWithSHA256, hash: crypto.SHA256}
		case elliptic.P384():
			a = issuerSigAlg{alg: x509.ECDSAWithSHA384, oid: derOIDECDSAWithSHA384, hash: crypto.SHA384}
		default:
			return a, false
		}
	case ed25519.PublicKey:
		a = issuerSigAlg{alg: x509.PureEd25519, oid: derOIDEd25519}
	case *rsa.PublicKey:
		a = issuerSigAlg{alg: x509.SHA256WithRSA, oid: derOIDSHA256WithRSA, nullArgs: true, hash: crypto.SHA256}
	default:
		return a, false
	}
	switch key.(type) {
	case *ecdsa.PrivateKey, ed25519.PrivateKey, *rsa.PrivateKey:
		a.stdlib = true
	}
	return a, true
}

func (a issuerSigAlg) addIdentifier(d *derBuf) {
	seq := d.open(tagSequence)
	d.add(a.oid)
	if a.nullArgs {
		d.add(derNull)
	}
	d.close(seq)
}

// directLeaf encodes and signs the leaf described by tmpl (built by
// leafTemplate, changed by the options, with serial and validity set) for
// pub, issued by a. It returns errNotDirect for a template outside the
// fixed shape, and no certificate.
func directLeaf(tmpl *x509.Certificate, pub crypto.PublicKey, a Authority, rand io.Reader) ([]byte, error) {
	alg, ok := sigAlgFor(a.Key)
	if !ok || !directShape(tmpl) {
		return nil, errNotDirect
	}
	// The certificate is written in one buffer: the TBSCertificate inside
	// its outer SEQUENCE, then the algorithm and the signature (no second
	// buffer for the whole, no copy of the TBS).
	d := derBuf{b: make([]byte, 0, 768)}
	cert := d.open(tagSequence)
	if err := d.addLeafTBS(tmpl, pub, a.Cert, alg); err != nil {
		return nil, err
	}
	tbs := d.b[cert:len(d.b):len(d.b)] // the signer may not append into d
	signed := tbs
	switch alg.hash {
	case crypto.SHA256:
		sum := sha256.Sum256(tbs)
		signed = sum[:]
	case crypto.SHA384:
		sum := sha512.Sum384(tbs)
		signed = sum[:]
	}
	sig, err := a.Key.Sign(rand, signed, alg.hash)
	if err != nil {
		return nil, fmt.Errorf("sign certificate: %w", err)
	}
	if !alg.stdlib {
		// A key outside the process (HSM, KMS) may misbehave; check its
		// signature as CreateCertificate would.
		if err := a.Cert.CheckSignature(alg.alg, tbs, sig); err != nil {
			return nil, fmt.Errorf("signature returned by signer is invalid: %w", err)
		}
	}
	alg.addIdentifier(&d)
	d.addBitString(sig)
	d.close(cert)
	return d.b, nil
}

// directShape reports whether the direct encoder writes tmpl exactly as
// CreateCertificate would: only the fields of a leaf template are set
// (checked by clearing them in a copy, so a field added to x509.Certificate
// later also sends a template to the standard path), with the values
// leafTemplate and the options produce.
func directShape(tmpl *x509.Certificate) bool {
	if tmpl.SerialNumber == nil || tmpl.SerialNumber.Sign() <= 0 ||
		!tmpl.BasicConstraintsValid || tmpl.IsCA || tmpl.MaxPathLen != 0 || tmpl.MaxPathLenZero ||
		len(tmpl.RawSubject) != 0 || subjectDER(tmpl.Subject) == nil ||
		len(tmpl.SubjectKeyId) == 0 || !directTime(tmpl.NotBefore) || !directTime(tmpl.NotAfter) ||
		tmpl.KeyUsage < 0 || tmpl.KeyUsage > x509.KeyUsageDecipherOnly<<1-1 {
		return false
	}
	for _, u := range tmpl.ExtKeyUsage {
		if u != x509.ExtKeyUsageServerAuth && u != x509.ExtKeyUsageClientAuth {
			return false
		}
	}
	for _, p := range tmpl.Policies {
		if der, err := p.MarshalBinary(); err != nil || len(der) == 0 {
			return false
		}
	}
	for _, e := range tmpl.ExtraExtensions {
		if slices.ContainsFunc(standardLeafExtensions, e.Id.Equal) {
			return false
		}
	}
	for _, u := range tmpl.URIs {
		if u == nil {
			return false
		}
	}
	c := *tmpl
	c.SerialNumber, c.NotBefore, c.NotAfter = nil, time.Time{}, time.Time{}
	c.Subject = pkix.Name{}
	c.URIs, c.DNSNames, c.Policies, c.ExtraExtensions = nil, nil, nil, nil
	c.KeyUsage, c.ExtKeyUsage = 0, nil
	c.BasicConstraintsValid, c.SubjectKeyId = false, nil
	return reflect.ValueOf(&c).Elem().IsZero()
}

// standardLeafExtensions are the extensions the encoder writes from
// template fields; an extra extension with one of these OIDs makes
// CreateCertificate drop its own, so such a template takes that path.
var standardLeafExtensions = []asn1.ObjectIdentifier{
	oidKeyUsage, oidExtendedKeyUsage, oidBasicConstraints, oidSubjectKeyID,
	oidAuthorityKeyID, oidSubjectAltName, oidCertificatePolicies,
}

// subjectDER returns the encoding of a leaf subject (empty or exactly
// O=mayfly), nil for any other subject.
func subjectDER(n pkix.Name) []byte {
	if len(n.Country)+len(n.OrganizationalUnit)+len(n.Locality)+len(n.Province)+len(n.StreetAddress)+len(n.PostalCode)+
		len(n.Names)+len(n.ExtraNames) != 0 || n.SerialNumber != "" || n.CommonName != "" {
		return nil
	}
	switch {
	case len(n.Organization) == 0:
		return emptySubjectDER
	case len(n.Organization) == 1 && n.Organization[0] == LeafOrganization:
		return leafSubjectDER
	}
	return nil
}

// addLeafTBS writes the TBSCertificate of tmpl, which directShape accepted.
// The order and encoding of every field follow CreateCertificate and its
// buildCertExtensions: key usage, extended key usage, basic constraints,
// subject key ID, authority key ID, subject alternative names, certificate
// policies, then the extra extensions in their order.
func (d *derBuf) addLeafTBS(tmpl *x509.Certificate, pub crypto.PublicKey, issuer *x509.Certificate, alg issuerSigAlg) error {
	subject := subjectDER(tmpl.Subject)
	issuerDER := issuer.RawSubject
	if len(issuerDER) == 0 {
		return errNotDirect
	}
	akid := leafAKID(tmpl, issuer)
	tbs := d.open(tagSequence)
	d.add(derVersion3)
	d.addUnsigned(tagInteger, tmpl.SerialNumber.Bytes())
	alg.addIdentifier(d)
	d.add(issuerDER)
	validity := d.open(tagSequence)
	d.addTime(tmpl.NotBefore)
	d.addTime(tmpl.NotAfter)
	d.close(validity)
	d.add(subject)
	if err := d.addPublicKeyInfo(pub); err != nil {
		return err
	}
	exts := d.open(tagExtensions)
	list := d.open(tagSequence)
	if err := d.addLeafExtensions(tmpl, akid, len(tmpl.Subject.Organization) == 0); err != nil {
		return err
	}
	d.close(list)
	d.close(exts)
	d.close(tbs)
	return nil
}

// leafAKID is the authority key ID of tmpl's certificate: as
// CreateCertificate does, the issuer's key ID unless issuer and subject
// names are equal (a self-issued certificate).
func leafAKID(tmpl *x509.Certificate, issuer *x509.Certificate) []byte {
	if string(issuer.RawSubject) != string(subjectDER(tmpl.Subject)) && len(issuer.SubjectKeyId) > 0 {
		return issuer.SubjectKeyId
	}
	return tmpl.AuthorityKeyId
}

func (d *derBuf) addLeafExtensions(tmpl *x509.Certificate, akid []byte, subjectEmpty bool) error {
	if tmpl.KeyUsage != 0 {
		// The bits as encoding/asn1 writes x509's KeyUsage: bit 0 first,
		// one or two bytes, the unused trailing bits counted.
		a0, a1 := reverseBits(byte(tmpl.KeyUsage&0xff)), reverseBits(byte(tmpl.KeyUsage>>8&0xff))
		bits, last := []byte{a0, a1}, a1
		if a1 == 0 {
			bits, last = bits[:1], a0
		}
		ext := d.openExtension(derOIDKeyUsage, true)
		bs := d.open(tagBitString)
		d.b = append(d.b, unusedBits(last))
		d.b = append(d.b, bits...)
		d.close(bs)
		d.closeExtension(ext)
	}
	if len(tmpl.ExtKeyUsage) > 0 {
		ext := d.openExtension(derOIDExtendedKeyUsage, false)
		seq := d.open(tagSequence)
		for _, u := range tmpl.ExtKeyUsage {
			if u == x509.ExtKeyUsageServerAuth {
				d.add(derOIDEKUServerAuth)
			} else {
				d.add(derOIDEKUClientAuth)
			}
		}
		d.close(seq)
		d.closeExtension(ext)
	}
	// cA=false and no path length: the empty SEQUENCE.
	ext := d.openExtension(derOIDBasicConstraints, true)
	d.add(derEmptySequence)
	d.closeExtension(ext)

	ext = d.openExtension(derOIDSubjectKeyID, false)
	d.addTLV(tagOctetString, tmpl.SubjectKeyId)
	d.closeExtension(ext)

	if len(akid) > 0 {
		ext := d.openExtension(derOIDAuthorityKeyID, false)
		seq := d.open(tagSequence)
		d.addTLV(0x80, akid) // [0] IMPLICIT keyIdentifier
		d.close(seq)
		d.closeExtension(ext)
	}
	if len(tmpl.DNSNames) > 0 || len(tmpl.URIs) > 0 {
		// RFC 5280 4.2.1.6: critical when the subject is empty.
		ext := d.openExtension(derOIDSubjectAltName, subjectEmpty)
		seq := d.open(tagSequence)
		for _, name := range tmpl.DNSNames {
			if err := d.addIA5(0x82, name); err != nil { // [2] dNSName
				return err
			}
		}
		for _, u := range tmpl.URIs {
			if err := d.addIA5(0x86, u.String()); err != nil { // [6] uniformResourceIdentifier
				return err
			}
		}
		d.close(seq)
		d.closeExtension(ext)
	}
	if len(tmpl.Policies) > 0 {
		ext := d.openExtension(derOIDCertificatePolicies, false)
		seq := d.open(tagSequence)
		for _, p := range tmpl.Policies {
			info := d.open(tagSequence)
			oid := d.open(tagOID)
			var err error
			if d.b, err = p.AppendBinary(d.b); err != nil {
				return fmt.Errorf("certificate policy: %w", err)
			}
			d.close(oid)
			d.close(info)
		}
		d.close(seq)
		d.closeExtension(ext)
	}
	for _, e := range tmpl.ExtraExtensions {
		oid, err := asn1.Marshal(e.Id)
		if err != nil {
			return fmt.Errorf("extension %v: %w", e.Id, err)
		}
		ext := d.openExtension(oid, e.Critical)
		d.b = append(d.b, e.Value...)
		d.closeExtension(ext)
	}
	return nil
}

// addPublicKeyInfo writes the SubjectPublicKeyInfo of pub as
// x509.MarshalPKIXPublicKey does. pub passed CheckPublicKey.
func (d *derBuf) addPublicKeyInfo(pub crypto.PublicKey) error {
	spki := d.open(tagSequence)
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		point, err := k.Bytes()
		if err != nil {
			return fmt.Errorf("%w: encode public key: %w", ErrUnsupportedKey, err)
		}
		if k.Curve == elliptic.P384() {
			d.add(derAlgECDSAP384)
		} else {
			d.add(derAlgECDSAP256)
		}
		d.addBitString(point)
	case ed25519.PublicKey:
		d.add(derAlgEd25519)
		d.addBitString(k)
	case *rsa.PublicKey:
		d.add(derAlgRSA)
		bs := d.open(tagBitString)
		d.b = append(d.b, 0)
		seq := d.open(tagSequence)
		d.addUnsigned(tagInteger, k.N.Bytes())
		d.addUnsigned(tagInteger, big.NewInt(int64(k.E)).Bytes())
		d.close(seq)
		d.close(bs)
	default:
		return fmt.Errorf("%w: key type %T", ErrUnsupportedKey, pub)
	}
	d.close(spki)
	return nil
}

// addIA5 writes a GeneralName of an IA5String kind with the context tag
// given; a character outside IA5 fails, as CreateCertificate fails.
func (d *derBuf) addIA5(tag byte, s string) error {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return fmt.Errorf("%w: %q cannot be encoded as an IA5String", ErrInvalidRequest, truncateForError(s))
		}
	}
	start := d.open(tag)
	d.b = append(d.b, s...)
	d.close(start)
	return nil
}

// directTime reports whether t is in the range the encoder writes as
// CreateCertificate does: UTCTime for 1950 to 2049, GeneralizedTime up to
// 9999 (encoding/asn1 refuses later years, earlier ones take the standard
// path).
func directTime(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 1950 && y <= 9999
}

func reverseBits(in byte) byte {
	b1 := in>>4 | in<<4
	b2 := b1>>2&0x33 | b1<<2&0xcc
	return b2>>1&0x55 | b2<<1&0xaa
}

// unusedBits is the number of unused bits at the end of a BIT STRING whose
// last byte is last: its trailing zero bits (0 for the zero byte, which the
// key usage encoding never ends in).
func unusedBits(last byte) uint8 {
	var n uint8
	for n < 7 && last&(1<<n) == 0 {
		n++
	}
	return n
}
