package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"fmt"
)

// The direct CSR parser reads the CSRs mayfly's agents send (CreateCSR:
// version 0, an empty subject, no attributes, a P-256, P-384 or Ed25519
// key, signed with the algorithm x509.CreateCertificateRequest picks for
// it) by comparing their fixed bytes instead of running
// x509.ParseCertificateRequest, whose reflection-driven encoding/asn1 costs
// more than a tenth of a CSR's signature check. It returns what
// x509.ParseCertificateRequest returns for the same bytes
// (TestParseCSRDirect_matchesStandard and FuzzParseCSRDirect compare the
// two); any other CSR (a subject, attributes, an RSA key, a length not
// written in its shortest form) is not read here and takes the standard
// parser. The signature is checked as CheckSignature checks it.

// csrShape is one fixed shape of a CSR's key and signature algorithm.
type csrShape struct {
	spkiPrefix []byte // the SubjectPublicKeyInfo up to the key bytes
	keyLen     int    // bytes of the key after spkiPrefix
	sigAlgDER  []byte // the CSR's signatureAlgorithm element
	sigAlg     x509.SignatureAlgorithm
	pubAlg     x509.PublicKeyAlgorithm
	curve      elliptic.Curve // nil for Ed25519
	hash       crypto.Hash
}

var csrShapes = []csrShape{
	{
		spkiPrefix: spkiPrefix(derAlgECDSAP256, 65), keyLen: 65,
		sigAlgDER: sequenceOf(derOIDECDSAWithSHA256), sigAlg: x509.ECDSAWithSHA256,
		pubAlg: x509.ECDSA, curve: elliptic.P256(), hash: crypto.SHA256,
	},
	{
		spkiPrefix: spkiPrefix(derAlgECDSAP384, 97), keyLen: 97,
		sigAlgDER: sequenceOf(derOIDECDSAWithSHA384), sigAlg: x509.ECDSAWithSHA384,
		pubAlg: x509.ECDSA, curve: elliptic.P384(), hash: crypto.SHA384,
	},
	{
		spkiPrefix: spkiPrefix(derAlgEd25519, ed25519.PublicKeySize), keyLen: ed25519.PublicKeySize,
		sigAlgDER: sequenceOf(derOIDEd25519), sigAlg: x509.PureEd25519, pubAlg: x509.Ed25519,
	},
}

var (
	// csrTBSHead is version 0 and the empty subject; csrTBSTail the empty
	// attributes [0].
	csrTBSHead = []byte{tagInteger, 0x01, 0x00, tagSequence, 0x00}
	csrTBSTail = []byte{0xa0, 0x00}
)

// spkiPrefix is the SubjectPublicKeyInfo of algorithm algID up to its key
// of keyLen bytes.
func spkiPrefix(algID []byte, keyLen int) []byte {
	d := derBuf{}
	spki := d.open(tagSequence)
	d.add(algID)
	d.addBitString(make([]byte, keyLen))
	d.close(spki)
	return d.b[:len(d.b)-keyLen]
}

// sequenceOf encodes a short SEQUENCE of already encoded elements.
func sequenceOf(elems ...[]byte) []byte {
	d := derBuf{}
	seq := d.open(tagSequence)
	for _, e := range elems {
		d.add(e)
	}
	d.close(seq)
	return d.b
}

// readDER reads the element of the given tag at the start of b, its length
// in the shortest form (at most two length bytes): full is the whole
// element, contents its contents. ok is false for anything else.
func readDER(b []byte, tag byte) (full, contents, rest []byte, ok bool) {
	if len(b) < 2 || b[0] != tag {
		return nil, nil, nil, false
	}
	n, hdr := int(b[1]), 2
	switch {
	case n < 0x80:
	case n == 0x81 && len(b) >= 3 && b[2] >= 0x80:
		n, hdr = int(b[2]), 3
	case n == 0x82 && len(b) >= 4 && b[2] != 0:
		n, hdr = int(b[2])<<8|int(b[3]), 4
	default:
		return nil, nil, nil, false
	}
	if len(b)-hdr < n {
		return nil, nil, nil, false
	}
	return b[:hdr+n], b[hdr : hdr+n], b[hdr+n:], true
}

// parseCSRDirect parses and checks der if it has one of the fixed shapes
// (direct is true), else returns direct false and leaves der to the
// standard parser. A key that is not a valid point also goes to the
// standard parser, for its error. The only error is a failed signature
// check, wrapping ErrCSRSignature.
func parseCSRDirect(der []byte) (csr *x509.CertificateRequest, direct bool, err error) {
	outer, body, rest, ok := readDER(der, tagSequence)
	if !ok || len(rest) != 0 {
		return nil, false, nil
	}
	tbs, tbsBody, body, ok := readDER(body, tagSequence)
	if !ok || !bytes.HasPrefix(tbsBody, csrTBSHead) {
		return nil, false, nil
	}
	spki, _, tail, ok := readDER(tbsBody[len(csrTBSHead):], tagSequence)
	if !ok || !bytes.Equal(tail, csrTBSTail) {
		return nil, false, nil
	}
	shape := shapeOfSPKI(spki)
	if shape == nil || !bytes.HasPrefix(body, shape.sigAlgDER) {
		return nil, false, nil
	}
	_, bits, rest, ok := readDER(body[len(shape.sigAlgDER):], tagBitString)
	if !ok || len(rest) != 0 || len(bits) < 2 || bits[0] != 0 {
		return nil, false, nil
	}
	sig, key := bits[1:], spki[len(shape.spkiPrefix):]

	var pub crypto.PublicKey
	if shape.curve != nil {
		k, err := ecdsa.ParseUncompressedPublicKey(shape.curve, key)
		if err != nil {
			return nil, false, nil
		}
		pub = k
	} else {
		pub = ed25519.PublicKey(key)
	}
	if !verifyCSR(shape, pub, tbs, sig) {
		return nil, true, fmt.Errorf("%w: x509: %s verification failure", ErrCSRSignature, shape.pubAlg)
	}
	return &x509.CertificateRequest{
		Raw:                      outer,
		RawTBSCertificateRequest: tbs,
		RawSubjectPublicKeyInfo:  spki,
		RawSubject:               tbsBody[3:5],
		Signature:                sig,
		SignatureAlgorithm:       shape.sigAlg,
		PublicKeyAlgorithm:       shape.pubAlg,
		PublicKey:                pub,
	}, true, nil
}

func shapeOfSPKI(spki []byte) *csrShape {
	for i := range csrShapes {
		s := &csrShapes[i]
		if len(spki) == len(s.spkiPrefix)+s.keyLen && bytes.HasPrefix(spki, s.spkiPrefix) {
			return s
		}
	}
	return nil
}

// verifyCSR checks sig over tbs as x509.CertificateRequest.CheckSignature
// does for the shape's algorithm.
func verifyCSR(shape *csrShape, pub crypto.PublicKey, tbs, sig []byte) bool {
	switch shape.hash {
	case crypto.SHA256:
		sum := sha256.Sum256(tbs)
		return ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), sum[:], sig)
	case crypto.SHA384:
		sum := sha512.Sum384(tbs)
		return ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), sum[:], sig)
	}
	return ed25519.Verify(pub.(ed25519.PublicKey), tbs, sig)
}
