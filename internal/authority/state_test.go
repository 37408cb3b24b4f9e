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
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// fullState has every slot filled: current and next root, a retired root,
// current and next intermediate.
func fullState(t *testing.T) *authority.State {
	t.Helper()
	m := newMinter(testPolicy())
	s := bootstrap(t, m, t0)
	s = apply(t, m, s, authority.StepPrepareRoot, t0.Add(time.Hour))
	s = apply(t, m, s, authority.StepActivateRoot, t0.Add(2*time.Hour))
	s = apply(t, m, s, authority.StepPrepareRoot, t0.Add(3*time.Hour))
	s = apply(t, m, s, authority.StepPrepareIntermediate, t0.Add(4*time.Hour))
	if s.Root.Current == nil || s.Root.Next == nil || s.Intermediate.Current == nil || s.Intermediate.Next == nil || len(s.Root.Retired) != 1 {
		t.Fatalf("fixture is missing a slot: %+v", s)
	}
	return s
}

func encode(t *testing.T, s *authority.State) map[string][]byte {
	t.Helper()
	data, err := s.Encode()
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	return data
}

func TestStateRoundTrip(t *testing.T) {
	up := newFakeUpstream(t, func() time.Time { return t0 })
	upMinter := newMinter(testPolicy())
	upMinter.Upstream = up

	tests := []struct {
		name     string
		state    func(t *testing.T) *authority.State
		wantKeys []string
	}{
		{
			name:  "self-signed with next slots and a retired root",
			state: fullState,
			wantKeys: []string{
				authority.KeyRoot, authority.KeyRootKey, authority.KeyNextRoot, authority.KeyNextRootKey,
				authority.KeyIntermediate, authority.KeyIntermediateKey, authority.KeyNextIntermediate, authority.KeyNextIntermediateKey,
				authority.KeyJWT, authority.KeyMeta,
			},
		},
		{
			name:     "self-signed fresh",
			state:    func(t *testing.T) *authority.State { return bootstrap(t, newMinter(testPolicy()), t0) },
			wantKeys: []string{authority.KeyRoot, authority.KeyRootKey, authority.KeyIntermediate, authority.KeyIntermediateKey, authority.KeyJWT, authority.KeyMeta},
		},
		{
			name: "upstream mode with a next intermediate",
			state: func(t *testing.T) *authority.State {
				s := bootstrap(t, upMinter, t0)
				return apply(t, upMinter, s, authority.StepPrepareIntermediate, t0.Add(12*time.Hour))
			},
			wantKeys: []string{authority.KeyUpstreamRoots, authority.KeyIntermediate, authority.KeyIntermediateKey, authority.KeyNextIntermediate, authority.KeyNextIntermediateKey, authority.KeyJWT, authority.KeyMeta},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := tt.state(t)
			data := encode(t, s)
			if got := slices.Sorted(maps.Keys(data)); !reflect.DeepEqual(got, slices.Sorted(slices.Values(tt.wantKeys))) {
				t.Errorf("encoded keys = %v, want %v", got, slices.Sorted(slices.Values(tt.wantKeys)))
			}
			got, err := authority.Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if again := encode(t, got); !reflect.DeepEqual(again, data) {
				t.Error("Encode(Decode(data)) differs from data")
			}
			if got.Generation != s.Generation {
				t.Errorf("Generation = %d, want %d", got.Generation, s.Generation)
			}
			if !got.Root.NextPublishedAt.Equal(s.Root.NextPublishedAt) {
				t.Errorf("Root.NextPublishedAt = %s, want %s", got.Root.NextPublishedAt, s.Root.NextPublishedAt)
			}
			if len(got.Root.Retired) != len(s.Root.Retired) {
				t.Fatalf("%d retired roots, want %d", len(got.Root.Retired), len(s.Root.Retired))
			}
			for i := range s.Root.Retired {
				if !got.Root.Retired[i].Cert.Equal(s.Root.Retired[i].Cert) || !got.Root.Retired[i].Until.Equal(s.Root.Retired[i].Until) {
					t.Errorf("retired root %d differs", i)
				}
			}
			for _, pair := range []struct {
				name      string
				got, want *authority.Slot
			}{
				{"root", got.Root.Current, s.Root.Current}, {"next root", got.Root.Next, s.Root.Next},
				{"intermediate", got.Intermediate.Current, s.Intermediate.Current}, {"next intermediate", got.Intermediate.Next, s.Intermediate.Next},
			} {
				if (pair.got == nil) != (pair.want == nil) {
					t.Errorf("%s: got %v, want %v", pair.name, pair.got, pair.want)
					continue
				}
				if pair.want == nil {
					continue
				}
				if !pair.got.Cert().Equal(pair.want.Cert()) || len(pair.got.Chain) != len(pair.want.Chain) {
					t.Errorf("%s: certificate chain differs", pair.name)
				}
				if k, ok := pair.got.Key.(interface{ Equal(crypto.PrivateKey) bool }); !ok || !k.Equal(pair.want.Key) {
					t.Errorf("%s: private key differs", pair.name)
				}
			}
			if !reflect.DeepEqual(rawOf(got.Bundle(t0)), rawOf(s.Bundle(t0))) {
				t.Error("bundle differs after the round trip")
			}
			if _, err := got.SigningAuthority(); err != nil {
				t.Errorf("SigningAuthority: %v", err)
			}
		})
	}
}

func TestDecodeRejectsCorruptState(t *testing.T) {
	full := encode(t, fullState(t))
	fresh := encode(t, bootstrap(t, newMinter(testPolicy()), t0))

	// A workload leaf and its key: a valid key pair that is not a CA.
	leafKey, err := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	freshState, err := authority.Decode(fresh)
	if err != nil {
		t.Fatal(err)
	}
	auth, err := freshState.SigningAuthority()
	if err != nil {
		t.Fatal(err)
	}
	id, err := pki.WorkloadID(td, "default", "web")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _, err := (&pki.Signer{Authority: auth, Now: func() time.Time { return t0 }, Rand: rand.Reader, Options: pki.DefaultWorkloadOptions()}).
		Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: leafKey.Public(), ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	leafKeyPEM, err := pki.MarshalPrivateKeyPEM(leafKey)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		base    map[string][]byte
		modify  func(d map[string][]byte)
		wantKey string // the data key the error must name
	}{
		{
			name: "intermediate key PEM cut in half",
			base: full,
			modify: func(d map[string][]byte) {
				d[authority.KeyIntermediateKey] = d[authority.KeyIntermediateKey][:len(d[authority.KeyIntermediateKey])/2]
			},
			wantKey: authority.KeyIntermediateKey,
		},
		{
			name:    "root key empty",
			base:    full,
			modify:  func(d map[string][]byte) { d[authority.KeyRootKey] = nil },
			wantKey: authority.KeyRootKey,
		},
		{
			name:    "root certificate PEM cut in half",
			base:    full,
			modify:  func(d map[string][]byte) { d[authority.KeyRoot] = d[authority.KeyRoot][:len(d[authority.KeyRoot])/2] },
			wantKey: authority.KeyRoot,
		},
		{
			name:    "next intermediate certificate without its key",
			base:    full,
			modify:  deleteKeys(authority.KeyNextIntermediateKey),
			wantKey: authority.KeyNextIntermediateKey,
		},
		{
			name:    "next root key without its certificate",
			base:    full,
			modify:  deleteKeys(authority.KeyNextRoot),
			wantKey: authority.KeyNextRoot,
		},
		{
			name:    "intermediate key does not match the certificate",
			base:    full,
			modify:  func(d map[string][]byte) { d[authority.KeyIntermediateKey] = d[authority.KeyNextIntermediateKey] },
			wantKey: authority.KeyIntermediate,
		},
		{
			name: "non-CA certificate in the next intermediate slot",
			base: full,
			modify: func(d map[string][]byte) {
				d[authority.KeyNextIntermediate] = pki.EncodeCertificates(leaf)
				d[authority.KeyNextIntermediateKey] = leafKeyPEM
			},
			wantKey: authority.KeyNextIntermediate,
		},
		{
			name: "root slot holds an intermediate (not self-signed)",
			base: full,
			modify: func(d map[string][]byte) {
				d[authority.KeyRoot], d[authority.KeyRootKey] = d[authority.KeyIntermediate], d[authority.KeyIntermediateKey]
			},
			wantKey: authority.KeyRoot,
		},
		{
			name:    "garbage meta.json",
			base:    full,
			modify:  func(d map[string][]byte) { d[authority.KeyMeta] = []byte("{not json") },
			wantKey: authority.KeyMeta,
		},
		{
			name: "retired root in meta.json is not a certificate",
			base: full,
			modify: func(d map[string][]byte) {
				d[authority.KeyMeta] = []byte(`{"retiredRoots":[{"cert":"garbage","until":"2030-01-02T00:00:00Z"}]}`)
			},
			wantKey: authority.KeyMeta,
		},
		{
			name:    "garbage upstream roots",
			base:    fresh,
			modify:  func(d map[string][]byte) { d[authority.KeyUpstreamRoots] = []byte("garbage") },
			wantKey: authority.KeyUpstreamRoots,
		},
		{
			name:    "missing intermediate",
			base:    fresh,
			modify:  deleteKeys(authority.KeyIntermediate, authority.KeyIntermediateKey),
			wantKey: authority.KeyIntermediate,
		},
		{
			name:    "neither root nor upstream roots",
			base:    fresh,
			modify:  deleteKeys(authority.KeyRoot, authority.KeyRootKey),
			wantKey: authority.KeyUpstreamRoots,
		},
		{
			name:    "empty data",
			base:    map[string][]byte{},
			modify:  func(map[string][]byte) {},
			wantKey: authority.KeyIntermediate,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := maps.Clone(tt.base)
			tt.modify(data)
			s, err := authority.Decode(data)
			if err == nil {
				t.Fatalf("Decode succeeded (%+v), want an error", s)
			}
			if !errors.Is(err, authority.ErrCorrupt) {
				t.Errorf("error %q does not wrap ErrCorrupt", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.wantKey) {
				t.Errorf("error %q does not name %s", msg, tt.wantKey)
			}
			assertNoKeyMaterial(t, msg, tt.base, data)
		})
	}
}

// assertNoKeyMaterial fails if msg contains a PEM header of a private key or
// any line of the base64 body of a key in the data sets.
func assertNoKeyMaterial(t *testing.T, msg string, datas ...map[string][]byte) {
	t.Helper()
	if strings.Contains(msg, "PRIVATE KEY") || strings.Contains(msg, "-----BEGIN") {
		t.Errorf("error quotes PEM: %q", msg)
	}
	for _, d := range datas {
		for k, v := range d {
			if !strings.HasSuffix(k, ".key") {
				continue
			}
			for _, line := range bytes.Split(v, []byte("\n")) {
				if len(line) >= 16 && !bytes.HasPrefix(line, []byte("-----")) && strings.Contains(msg, string(line[:16])) {
					t.Errorf("error quotes bytes of %s: %q", k, msg)
				}
			}
		}
	}
}

func TestBundle(t *testing.T) {
	s := fullState(t)
	until := s.Root.Retired[0].Until
	tests := []struct {
		name string
		now  time.Time
		want int
	}{
		{"current, next and retired root while the retired one may still be in use", until.Add(-time.Second), 3},
		{"retired root left out once its Until passed", until, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := s.Bundle(tt.now)
			if len(b) != tt.want {
				t.Fatalf("bundle has %d roots, want %d", len(b), tt.want)
			}
			if !containsCert(b, s.Root.Current.Cert()) || !containsCert(b, s.Root.Next.Cert()) {
				t.Error("bundle lacks the current or the next root")
			}
		})
	}
}

func rawOf(certs []*x509.Certificate) [][]byte {
	out := make([][]byte, len(certs))
	for i, c := range certs {
		out[i] = c.Raw
	}
	return out
}

// TestDecodeStateOfEarlierVersion loads states that the CA wrote before
// the keys were modelled as Rotations and before the state had a format
// version (testdata/legacy, format 0, written through a DirStore by that
// version's Minter): they must load unchanged, and encode back to the same
// bytes but for the format now stamped in meta.json (the migration 0 -> 1).
func TestDecodeStateOfEarlierVersion(t *testing.T) {
	type slot struct{ role, slot string }
	tests := []struct {
		dir            string
		wantSlots      []slot
		wantGeneration int64
		wantPublished  time.Time
		wantRequested  bool
		wantUpstream   int
	}{
		{
			dir: "selfsigned",
			wantSlots: []slot{
				{"root", "current"}, {"root", "next"}, {"root", "retired"},
				{"intermediate", "current"}, {"intermediate", "next"},
			},
			wantGeneration: 4,
			wantPublished:  time.Date(2030, 1, 1, 3, 0, 0, 0, time.UTC),
			wantRequested:  true,
		},
		{
			dir:            "upstream",
			wantSlots:      []slot{{"root", "current"}, {"intermediate", "current"}, {"intermediate", "next"}},
			wantGeneration: 1,
			wantUpstream:   1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.dir, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join("testdata", "legacy", tt.dir, authority.StateFileName))
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, authority.StateFileName), raw, 0o600); err != nil {
				t.Fatal(err)
			}
			store, err := authority.NewDirStore(dir)
			if err != nil {
				t.Fatal(err)
			}
			snap, err := store.Load(context.Background())
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			s, err := authority.Decode(snap.Data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			var got []slot
			s.EachSlot(func(role, name string, _ *x509.Certificate) { got = append(got, slot{role, name}) })
			if !slices.Equal(got, tt.wantSlots) {
				t.Errorf("slots = %v, want %v", got, tt.wantSlots)
			}
			if s.Generation != tt.wantGeneration || !s.Root.NextPublishedAt.Equal(tt.wantPublished) || s.Root.Requested != tt.wantRequested || len(s.UpstreamRoots) != tt.wantUpstream {
				t.Errorf("Generation, Root.NextPublishedAt, Root.Requested, upstream roots = %d, %s, %v, %d; want %d, %s, %v, %d",
					s.Generation, s.Root.NextPublishedAt, s.Root.Requested, len(s.UpstreamRoots), tt.wantGeneration, tt.wantPublished, tt.wantRequested, tt.wantUpstream)
			}
			for name, inter := range map[string]*authority.Slot{"current": s.Intermediate.Current, "next": s.Intermediate.Next} {
				issuer := s.Roots()[0]
				if err := inter.Cert().CheckSignatureFrom(issuer); err != nil {
					t.Errorf("%s intermediate is not signed by the current root: %v", name, err)
				}
			}
			if _, ok := snap.Data[authority.KeyMeta]; !ok {
				t.Fatal("the legacy state has no meta.json")
			}
			if bytes.Contains(snap.Data[authority.KeyMeta], []byte(`"format"`)) {
				t.Fatal("the legacy state is not of format 0")
			}
			again := encode(t, s)
			var m map[string]any
			if err := json.Unmarshal(again[authority.KeyMeta], &m); err != nil || m["format"] != float64(authority.StateFormat) {
				t.Errorf("re-encoded meta.json = %s, want format %d", again[authority.KeyMeta], authority.StateFormat)
			}
			var old map[string]any
			if err := json.Unmarshal(snap.Data[authority.KeyMeta], &old); err != nil {
				t.Fatal(err)
			}
			old["format"] = float64(authority.StateFormat)
			if !reflect.DeepEqual(m, old) {
				t.Errorf("meta.json after the migration = %v, want the earlier one plus the format: %v", m, old)
			}
			delete(again, authority.KeyMeta)
			delete(snap.Data, authority.KeyMeta)
			if !reflect.DeepEqual(again, snap.Data) {
				t.Error("Encode(Decode(data)) differs from the data the earlier version wrote")
			}
			// Decoding the migrated state again changes nothing.
			s2, err := authority.Decode(encode(t, s))
			if err != nil {
				t.Fatalf("Decode of the migrated state: %v", err)
			}
			if s2.Generation != s.Generation {
				t.Errorf("generation %d after a second decode, want %d", s2.Generation, s.Generation)
			}
			if _, err := s.SigningAuthority(); err != nil {
				t.Errorf("SigningAuthority: %v", err)
			}
		})
	}
}

// TestEncodeRefusesWhatTheFormatCannotHold: the stored format keeps
// retirement and rotation requests for the root only, and publication for
// a next key only (a next intermediate under a new upstream root); Encode
// fails rather than drop them for the intermediate.
func TestEncodeRefusesWhatTheFormatCannotHold(t *testing.T) {
	s := fullState(t)
	tests := []struct {
		name   string
		modify func(r *authority.Rotation)
	}{
		{"published intermediate without a next one", func(r *authority.Rotation) { r.Next, r.NextPublishedAt = nil, t0 }},
		{"retired intermediate", func(r *authority.Rotation) {
			r.Retired = []authority.Retired{{Cert: r.Current.Cert(), Until: t0}}
		}},
		{"requested intermediate rotation", func(r *authority.Rotation) { r.Requested = true }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := *s
			tt.modify(&n.Intermediate)
			if _, err := n.Encode(); err == nil || !strings.Contains(err.Error(), "intermediate") {
				t.Fatalf("Encode() error = %v, want one naming the intermediate", err)
			}
		})
	}
}

// deleteKeys returns a modification that removes keys from the stored data.
func deleteKeys(keys ...string) func(map[string][]byte) {
	return func(d map[string][]byte) {
		for _, k := range keys {
			delete(d, k)
		}
	}
}

// TestStateFormat: the format is stamped on every write, and a state of a
// format this CA does not know is refused with a message that says what to
// do, never rewritten.
func TestStateFormat(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("testdata", "legacy", "selfsigned", authority.StateFileName))
	if err != nil {
		t.Fatal(err)
	}
	var data map[string][]byte
	if err := json.Unmarshal(raw, &data); err != nil {
		t.Fatal(err)
	}
	withFormat := func(format string) map[string][]byte {
		var m map[string]any
		if err := json.Unmarshal(data[authority.KeyMeta], &m); err != nil {
			t.Fatal(err)
		}
		var f any
		if err := json.Unmarshal([]byte(format), &f); err != nil {
			t.Fatal(err)
		}
		m["format"] = f
		mj, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		out := maps.Clone(data)
		out[authority.KeyMeta] = mj
		return out
	}
	t.Run("current_format_loads", func(t *testing.T) {
		if _, err := authority.Decode(withFormat(strconv.Itoa(authority.StateFormat))); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("newer_format_is_refused", func(t *testing.T) {
		in := withFormat(strconv.Itoa(authority.StateFormatKeyURIs + 1))
		before := maps.Clone(in)
		_, err := authority.Decode(in)
		if !errors.Is(err, authority.ErrFormatTooNew) {
			t.Fatalf("Decode = %v, want ErrFormatTooNew", err)
		}
		if errors.Is(err, authority.ErrCorrupt) {
			t.Error("a newer format is reported as corrupt state")
		}
		if !strings.Contains(err.Error(), "docs/upgrade.md") || !strings.Contains(err.Error(), fmt.Sprintf("format %d", authority.StateFormatKeyURIs+1)) {
			t.Errorf("the error does not say what to do: %v", err)
		}
		if !reflect.DeepEqual(in, before) {
			t.Error("Decode changed its input")
		}
	})
	for name, format := range map[string]string{"negative": "-1", "not_a_number": `"one"`, "fraction": "1.5"} {
		t.Run("bad_format_"+name, func(t *testing.T) {
			if _, err := authority.Decode(withFormat(format)); !errors.Is(err, authority.ErrCorrupt) {
				t.Fatalf("Decode = %v, want ErrCorrupt", err)
			}
		})
	}
}
