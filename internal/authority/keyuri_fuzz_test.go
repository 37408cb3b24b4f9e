package authority_test

import (
	"context"
	"maps"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// FuzzStateKeyEntry: whatever the intermediate's key entry of a state
// holds (a PEM key, a key URI, garbage), Decode does not panic, and a key
// URI it accepts carries no PIN.
func FuzzStateKeyEntry(f *testing.F) {
	m := newMinter(testPolicy())
	m.Keys = newMemKeys()
	s, err := m.Bootstrap(context.Background(), t0)
	if err != nil {
		f.Fatal(err)
	}
	data, err := s.Encode()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(data[authority.KeyIntermediateKey])
	f.Add([]byte("pkcs11:id=%01;object=mayfly-intermediate-1"))
	f.Add([]byte("pkcs11:id=%01;object=x?pin-value=1234"))
	f.Add([]byte("pkcs11:"))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"))
	f.Fuzz(func(t *testing.T, entry []byte) {
		d := maps.Clone(data)
		d[authority.KeyIntermediateKey] = entry
		got, err := authority.Decode(d)
		if err != nil {
			return
		}
		if u := got.Intermediate.Current.KeyURI; u != "" && (strings.Contains(u, "pin-") || strings.ContainsAny(u, "?\n\r")) {
			t.Fatalf("accepted key URI %q", u)
		}
	})
}
