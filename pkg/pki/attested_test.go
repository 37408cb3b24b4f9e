package pki_test

import (
	"crypto/x509"
	"crypto/x509/pkix"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

func TestAttestedAt(t *testing.T) {
	at := time.Date(2030, 1, 2, 3, 4, 5, 600, time.UTC)
	ext, err := pki.AttestedAtExtension(at)
	if err != nil {
		t.Fatal(err)
	}
	if ext.Critical {
		t.Fatal("extension is critical")
	}
	got, ok, err := pki.AttestedAt(&x509.Certificate{Extensions: []pkix.Extension{ext}})
	if err != nil || !ok || !got.Equal(at.Truncate(time.Second)) {
		t.Fatalf("AttestedAt = %v, %v, %v; want %v", got, ok, err, at.Truncate(time.Second))
	}
	if _, ok, err := pki.AttestedAt(&x509.Certificate{}); ok || err != nil {
		t.Fatalf("no extension: ok=%v err=%v", ok, err)
	}
	if _, ok, err := pki.AttestedAt(nil); ok || err != nil {
		t.Fatalf("nil certificate: ok=%v err=%v", ok, err)
	}
	if _, err := pki.AttestedAtExtension(time.Time{}); err == nil {
		t.Fatal("zero time accepted")
	}
	for name, e := range map[string]pkix.Extension{
		"critical":       {Id: pki.OIDAttestedAt, Critical: true, Value: ext.Value},
		"not_a_time":     {Id: pki.OIDAttestedAt, Value: []byte{0x02, 0x01, 0x01}},
		"trailing_bytes": {Id: pki.OIDAttestedAt, Value: append(append([]byte{}, ext.Value...), 0)},
		"truncated":      {Id: pki.OIDAttestedAt, Value: ext.Value[:4]},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := pki.AttestedAt(&x509.Certificate{Extensions: []pkix.Extension{e}})
			if err == nil || !strings.Contains(err.Error(), "attested-at") {
				t.Fatalf("err = %v, want an attested-at error", err)
			}
		})
	}
}
