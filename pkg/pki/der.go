package pki

import (
	"encoding/asn1"
	"time"
)

// derBuf appends DER without allocating per element: open writes a tag and
// a one-byte length, close fixes the length once the contents are known,
// moving them when the length takes more than one byte. Elements close in
// the reverse order of their opening.
type derBuf struct{ b []byte }

// DER tags the direct encoder writes.
const (
	tagInteger     = 0x02
	tagBitString   = 0x03
	tagOctetString = 0x04
	tagOID         = 0x06
	tagSequence    = 0x30
	tagUTCTime     = 0x17
	tagGeneralized = 0x18
	tagExtensions  = 0xa3 // [3] EXPLICIT, constructed
)

// open starts an element and returns the offset of its contents.
func (d *derBuf) open(tag byte) int {
	d.b = append(d.b, tag, 0)
	return len(d.b)
}

// close writes the length of the element whose contents start at start.
func (d *derBuf) close(start int) {
	n := len(d.b) - start
	if n < 0x80 {
		d.b[start-1] = byte(n & 0x7f)
		return
	}
	l := 0
	for x := n; x > 0; x >>= 8 {
		l++
	}
	for range l {
		d.b = append(d.b, 0)
	}
	copy(d.b[start+l:], d.b[start:start+n])
	d.b[start-1] = 0x80 | byte(l)
	for i := l - 1; i >= 0; i-- {
		d.b[start+i] = byte(n & 0xff)
		n >>= 8
	}
}

// add appends an encoded element.
func (d *derBuf) add(der []byte) { d.b = append(d.b, der...) }

// addTLV appends an element of the given tag and contents.
func (d *derBuf) addTLV(tag byte, contents []byte) {
	start := d.open(tag)
	d.b = append(d.b, contents...)
	d.close(start)
}

// addUnsigned appends a non-negative INTEGER from its big-endian bytes
// (big.Int.Bytes): minimal, with a leading zero when the top bit is set.
func (d *derBuf) addUnsigned(tag byte, be []byte) {
	for len(be) > 1 && be[0] == 0 {
		be = be[1:]
	}
	start := d.open(tag)
	if len(be) == 0 || be[0]&0x80 != 0 {
		d.b = append(d.b, 0)
	}
	d.b = append(d.b, be...)
	d.close(start)
}

// addBitString appends a BIT STRING of whole bytes.
func (d *derBuf) addBitString(bits []byte) {
	start := d.open(tagBitString)
	d.b = append(d.b, 0)
	d.b = append(d.b, bits...)
	d.close(start)
}

// openExtension starts Extension ::= SEQUENCE { extnID, critical BOOLEAN
// DEFAULT FALSE, extnValue OCTET STRING } up to the contents of extnValue;
// closeExtension ends it.
func (d *derBuf) openExtension(oid []byte, critical bool) [2]int {
	seq := d.open(tagSequence)
	d.add(oid)
	if critical {
		d.add(derTrue)
	}
	return [2]int{seq, d.open(tagOctetString)}
}

func (d *derBuf) closeExtension(ext [2]int) {
	d.close(ext[1])
	d.close(ext[0])
}

// addTime appends t in UTC as encoding/asn1 writes a time.Time:
// UTCTime YYMMDDhhmmssZ for 1950 to 2049, else GeneralizedTime
// YYYYMMDDhhmmssZ (directTime keeps the year within 1950 to 9999).
func (d *derBuf) addTime(t time.Time) {
	t = t.UTC()
	year, month, day := t.Date()
	hour, minute, sec := t.Clock()
	var start int
	if year < 2050 {
		start = d.open(tagUTCTime)
		d.digits(year%100, 2)
	} else {
		start = d.open(tagGeneralized)
		d.digits(year, 4)
	}
	d.digits(int(month), 2)
	d.digits(day, 2)
	d.digits(hour, 2)
	d.digits(minute, 2)
	d.digits(sec, 2)
	d.b = append(d.b, 'Z')
	d.close(start)
}

// digits appends v in decimal with exactly n digits.
func (d *derBuf) digits(v, n int) {
	for i := n - 1; i >= 0; i-- {
		p := 1
		for range i {
			p *= 10
		}
		d.b = append(d.b, byte('0'+v/p%10))
	}
}

// Fixed encodings of the direct encoder, made once by encoding/asn1.
var (
	derTrue          = mustMarshal(true)
	derNull          = asn1.NullBytes
	derEmptySequence = []byte{tagSequence, 0}
	// derVersion3 is [0] EXPLICIT INTEGER 2.
	derVersion3 = []byte{0xa0, 3, tagInteger, 1, 2}

	derOIDKeyUsage            = mustMarshal(oidKeyUsage)
	derOIDExtendedKeyUsage    = mustMarshal(oidExtendedKeyUsage)
	derOIDBasicConstraints    = mustMarshal(oidBasicConstraints)
	derOIDSubjectKeyID        = mustMarshal(oidSubjectKeyID)
	derOIDAuthorityKeyID      = mustMarshal(oidAuthorityKeyID)
	derOIDSubjectAltName      = mustMarshal(oidSubjectAltName)
	derOIDCertificatePolicies = mustMarshal(oidCertificatePolicies)
	derOIDEKUServerAuth       = mustMarshal(oidEKUServerAuth)
	derOIDEKUClientAuth       = mustMarshal(oidEKUClientAuth)

	derOIDECDSAWithSHA256 = mustMarshal(oidECDSAWithSHA256)
	derOIDECDSAWithSHA384 = mustMarshal(oidECDSAWithSHA384)
	derOIDSHA256WithRSA   = mustMarshal(oidSHA256WithRSA)
	derOIDEd25519         = mustMarshal(oidPublicKeyEd25519)

	derAlgECDSAP256 = mustMarshal([]asn1.ObjectIdentifier{oidPublicKeyECDSA, oidCurveP256})
	derAlgECDSAP384 = mustMarshal([]asn1.ObjectIdentifier{oidPublicKeyECDSA, oidCurveP384})
	derAlgEd25519   = mustMarshal([]asn1.ObjectIdentifier{oidPublicKeyEd25519})
	derAlgRSA       = mustMarshal(struct {
		OID  asn1.ObjectIdentifier
		Null asn1.RawValue
	}{oidPublicKeyRSA, asn1.NullRawValue})
)
