// Package authoritytest reads what an authority store holds, for tests
// that check the state a CA saved. Only tests import it.
package authoritytest

import (
	"context"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/authority"
)

// Stored loads and decodes the state store holds now, and returns it with
// its version; a store that cannot be read or a state that does not
// decode fails the test.
func Stored(t testing.TB, store authority.Store) (*authority.State, string) {
	t.Helper()
	snap, err := store.Load(context.Background())
	if err != nil {
		t.Fatalf("%s: load: %v", store.Describe(), err)
	}
	s, err := authority.Decode(snap.Data)
	if err != nil {
		t.Fatalf("%s: decode the stored state: %v", store.Describe(), err)
	}
	return s, snap.Version
}
