package authority_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// memKeys is a KeyStore in memory: what a PKCS#11 token does for the
// authority (internal/keystore tests the real one against SoftHSM2).
type memKeys struct {
	mu      sync.Mutex
	keys    map[string]crypto.Signer
	n       int
	deleted []string
}

func newMemKeys() *memKeys { return &memKeys{keys: map[string]crypto.Signer{}} }

func (k *memKeys) CreateKey(_ context.Context, role string, kt pki.KeyType) (string, crypto.Signer, error) {
	key, err := pki.GenerateKey(kt, rand.Reader)
	if err != nil {
		return "", nil, err
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	k.n++
	uri := fmt.Sprintf("pkcs11:id=%%%02x;object=mayfly-%s-%d", k.n, role, k.n)
	k.keys[uri] = key
	return uri, key, nil
}

func (k *memKeys) LoadKey(_ context.Context, uri string) (crypto.Signer, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	key, ok := k.keys[uri]
	if !ok {
		return nil, fmt.Errorf("the key %s is not in the token", uri)
	}
	return key, nil
}

func (k *memKeys) DeleteKey(_ context.Context, uri string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.keys, uri)
	k.deleted = append(k.deleted, uri)
	return nil
}

func (k *memKeys) Describe() string { return "memory token" }

func (k *memKeys) uris() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Sorted(maps.Keys(k.keys))
}

// TestKeyStoreStateHoldsURIsOnly: with a key store, the state holds the
// keys' URIs and the certificates, is stamped format 2, and a decoded
// state signs only once its keys are loaded from the store.
func TestKeyStoreStateHoldsURIsOnly(t *testing.T) {
	keys := newMemKeys()
	m := newMinter(testPolicy())
	m.Keys = keys
	s := bootstrap(t, m, t0)
	data := encode(t, s)
	for _, k := range []string{authority.KeyRootKey, authority.KeyIntermediateKey} {
		if !bytes.HasPrefix(data[k], []byte(authority.KeyURIPrefix)) {
			t.Errorf("%s = %q, want a pkcs11: URI", k, data[k])
		}
	}
	for k, v := range data {
		if bytes.Contains(v, []byte("PRIVATE KEY")) && k != "jwt.key" && !strings.HasPrefix(k, "jwt") {
			t.Errorf("%s holds a private key", k)
		}
	}
	var meta struct{ Format int }
	if err := json.Unmarshal(data[authority.KeyMeta], &meta); err != nil || meta.Format != authority.StateFormatKeyURIs {
		t.Errorf("format = %d (%v), want %d", meta.Format, err, authority.StateFormatKeyURIs)
	}
	if got := len(keys.uris()); got != 2 {
		t.Errorf("the token holds %d keys, want 2 (root, intermediate)", got)
	}

	back, err := authority.Decode(data)
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if back.Intermediate.Current.Key != nil {
		t.Fatal("a decoded key URI has a key before LoadKeys")
	}
	if err := back.LoadKeys(context.Background(), nil); !errors.Is(err, authority.ErrKeyStore) || !strings.Contains(err.Error(), "no keys.pkcs11 configured") {
		t.Fatalf("LoadKeys without a key store = %v, want ErrKeyStore naming keys.pkcs11", err)
	}
	if err := back.LoadKeys(context.Background(), keys); err != nil {
		t.Fatalf("LoadKeys: %v", err)
	}
	auth, err := back.SigningAuthority()
	if err != nil {
		t.Fatal(err)
	}
	leaf := signLeaf(t, auth, t0.Add(time.Minute))
	if err := leaf.CheckSignatureFrom(back.Intermediate.Current.Cert()); err != nil {
		t.Fatalf("a leaf signed by the reloaded token key does not verify: %v", err)
	}
	if again := encode(t, back); !maps.EqualFunc(again, data, bytes.Equal) {
		t.Error("Encode(Decode(data)) differs")
	}

	// A token that holds another key under the URI is refused.
	other := newMemKeys()
	for _, u := range keys.uris() {
		other.keys[u], _ = pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	}
	again, err := authority.Decode(data)
	if err != nil {
		t.Fatal(err)
	}
	if err := again.LoadKeys(context.Background(), other); !errors.Is(err, authority.ErrKeyStore) || !strings.Contains(err.Error(), "does not match the certificate") {
		t.Fatalf("LoadKeys with mismatched keys = %v", err)
	}
}

// TestKeyStoreBadKeyURIs: a key entry that is a URI must be one, and
// never carries a PIN.
func TestKeyStoreBadKeyURIs(t *testing.T) {
	m := newMinter(testPolicy())
	m.Keys = newMemKeys()
	data := encode(t, bootstrap(t, m, t0))
	for name, uri := range map[string]string{
		"pin_value":  "pkcs11:id=%01;object=x?pin-value=1234",
		"pin_source": "pkcs11:id=%01;object=x?pin-source=/etc/pin",
		"two_lines":  "pkcs11:id=%01\npkcs11:id=%02",
	} {
		t.Run(name, func(t *testing.T) {
			d := maps.Clone(data)
			d[authority.KeyIntermediateKey] = []byte(uri)
			_, err := authority.Decode(d)
			if !errors.Is(err, authority.ErrCorrupt) || !strings.Contains(err.Error(), authority.KeyIntermediateKey) {
				t.Fatalf("Decode = %v, want ErrCorrupt naming %s", err, authority.KeyIntermediateKey)
			}
			if strings.Contains(err.Error(), "1234") {
				t.Errorf("the error shows the PIN: %v", err)
			}
		})
	}
}

// TestKeyStoreRotationDeletesReplacedKeys: rotation makes new keys in the
// store, and deletes the replaced ones only KeyDeleteGrace after they
// left the state (replicas may still sign with them until they re-read
// it), through the plan's DropRetiredRoots step; the state saved between
// remembers the pending deletions.
func TestKeyStoreRotationDeletesReplacedKeys(t *testing.T) {
	keys := newMemKeys()
	p := testPolicy()
	m := newMinter(p)
	m.Keys = keys
	s := bootstrap(t, m, t0)
	oldInter := s.Intermediate.Current.KeyURI

	now := t0
	walk := func(until time.Time) {
		for i := 0; i < 200 && now.Before(until); i++ {
			d := authority.Plan(s, now, p, func() bool { return true })
			for _, step := range d.Steps {
				s = apply(t, m, s, step, now)
			}
			s = roundTrip(t, s, keys)
			if len(d.Steps) == 0 {
				now = minTime(d.Next, until)
			}
		}
	}
	// Through the first intermediate's activation.
	activate := point(s.Intermediate.Current.Cert(), p.ActivateAt)
	walk(activate.Add(time.Second))
	if s.Intermediate.Current.KeyURI == oldInter {
		t.Fatal("the intermediate did not rotate")
	}
	if !slices.Contains(keys.uris(), oldInter) {
		t.Fatal("the replaced intermediate's key was deleted before its grace")
	}
	if len(s.KeyDeletions) != 1 || s.KeyDeletions[0].URI != oldInter {
		t.Fatalf("KeyDeletions = %v, want the replaced intermediate's key", s.KeyDeletions)
	}
	walk(s.KeyDeletions[0].After.Add(time.Second))
	if slices.Contains(keys.uris(), oldInter) {
		t.Fatal("the replaced intermediate's key is still in the token after its grace")
	}

	// A root rotation: the old root's key goes the same way.
	oldRoot := s.Root.Current.KeyURI
	if err := requestRoot(s); err != nil {
		t.Fatal(err)
	}
	walk(s.Root.Current.NotAfter())
	if s.Root.Current.KeyURI == oldRoot {
		t.Fatal("the root did not rotate")
	}
	if slices.Contains(keys.uris(), oldRoot) {
		t.Fatal("the retired root's key is still in the token")
	}
	// What the token holds is exactly what the state refers to, and what
	// waits for its grace.
	want := []string{s.Root.Current.KeyURI, s.Intermediate.Current.KeyURI}
	for _, sl := range []*authority.Slot{s.Root.Next, s.Intermediate.Next} {
		if sl != nil {
			want = append(want, sl.KeyURI)
		}
	}
	for _, d := range s.KeyDeletions {
		want = append(want, d.URI)
	}
	slices.Sort(want)
	if got := keys.uris(); !slices.Equal(got, want) {
		t.Errorf("token keys = %v, want %v", got, want)
	}
}

// requestRoot asks for a root rotation the way ca rotate-root does.
func requestRoot(s *authority.State) error {
	if s.Root.Current == nil {
		return errors.New("no root")
	}
	s.Root.Requested = true
	return nil
}

// roundTrip saves and re-reads s, as a restarted CA would.
func roundTrip(t *testing.T, s *authority.State, keys authority.KeyStore) *authority.State {
	t.Helper()
	back, err := authority.Decode(encode(t, s))
	if err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if err := back.LoadKeys(context.Background(), keys); err != nil {
		t.Fatalf("LoadKeys: %v", err)
	}
	return back
}

// failingUpstream refuses every request.
type failingUpstream struct{}

func (failingUpstream) SignIntermediate(context.Context, authority.IntermediateRequest) ([]*x509.Certificate, []*x509.Certificate, error) {
	return nil, nil, errors.New("upstream is down")
}
func (failingUpstream) Name() string { return "down" }

// TestKeyStoreDropsKeysNoStateTook: a key made for an intermediate the
// upstream did not sign is deleted at once.
func TestKeyStoreDropsKeysNoStateTook(t *testing.T) {
	keys := newMemKeys()
	m := newMinter(testPolicy())
	m.Keys = keys
	m.Upstream = failingUpstream{}
	if _, err := m.Bootstrap(context.Background(), t0); err == nil {
		t.Fatal("Bootstrap succeeded with a failing upstream")
	}
	if got := keys.uris(); len(got) != 0 {
		t.Fatalf("the token keeps %v after a refused request", got)
	}
	if len(keys.deleted) != 1 {
		t.Fatalf("deleted %v, want the one key made for the request", keys.deleted)
	}
}
