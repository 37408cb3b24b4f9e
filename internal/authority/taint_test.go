package authority_test

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

func taintedKeyIDs(l *authority.Loaded) [][]byte {
	var out [][]byte
	for _, t := range l.Taints {
		out = append(out, t.SubjectKeyID)
	}
	return out
}

func hasKeyID(ids [][]byte, id []byte) bool {
	for _, i := range ids {
		if bytes.Equal(i, id) {
			return true
		}
	}
	return false
}

// TestTaintIntermediate: a tainted intermediate is replaced on the next
// plan, the bundle announces it only once it no longer signs, and revoke
// refuses an untainted authority.
func TestTaintIntermediate(t *testing.T) {
	ctx := context.Background()
	store, err := authority.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	clock := rotate.NewFakeClock(t0)
	m := newManager(store, clock, &memMarker{})
	before := mustLoad(t, m)
	old := before.Authority.Cert

	if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleIntermediate}); !errors.Is(err, authority.ErrNotTainted) {
		t.Fatalf("revoke of an untainted intermediate: err = %v, want ErrNotTainted", err)
	}
	if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleIntermediate, Serial: old.SerialNumber.Text(16)}); !errors.Is(err, authority.ErrNotTainted) {
		t.Fatalf("revoke of an untainted intermediate by serial: err = %v, want ErrNotTainted", err)
	}
	if _, err := authority.TaintAuthority(ctx, store, authority.TaintRequest{Role: authority.RoleIntermediate, Serial: "abc"}, t0); !errors.Is(err, authority.ErrNoSuchAuthority) {
		t.Fatalf("taint of an unknown serial: err = %v, want ErrNoSuchAuthority", err)
	}
	if _, err := authority.TaintAuthority(ctx, store, authority.TaintRequest{Role: "leaf"}, t0); err == nil || !strings.Contains(err.Error(), "--authority") {
		t.Fatalf("taint of a bad role: err = %v, want one naming --authority", err)
	}

	taint, err := authority.TaintAuthority(ctx, store, authority.TaintRequest{Role: authority.RoleIntermediate}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(taint.SubjectKeyID, old.SubjectKeyId) {
		t.Fatal("taint does not name the current intermediate's key")
	}
	if err := m.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if l := mustCurrent(t, m); len(l.Taints) != 0 {
		t.Fatal("taint announced while the tainted intermediate still signs")
	}
	d := authority.Plan(mustCurrent(t, m).State, t0, testPolicy(), nil)
	if len(d.Steps) != 1 || d.Steps[0] != authority.StepReplaceIntermediate {
		t.Fatalf("plan = %v, want [ReplaceIntermediate]", d.Steps)
	}
	m.RotateOnce(ctx)
	l := mustCurrent(t, m)
	if l.Authority.Cert.Equal(old) {
		t.Fatal("tainted intermediate still signs after the rotation")
	}
	if !hasKeyID(taintedKeyIDs(l), old.SubjectKeyId) {
		t.Fatal("bundle does not announce the tainted intermediate")
	}
	if l.BundleVersion == before.BundleVersion {
		t.Fatal("bundle version unchanged although it now announces a taint")
	}
	if d := authority.Plan(l.State, t0, testPolicy(), nil); len(d.Steps) != 0 {
		t.Fatalf("plan after the replacement = %v, want nothing", d.Steps)
	}
	if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleIntermediate}); err != nil {
		t.Fatalf("revoke of the tainted intermediate: %v", err)
	}

	// The taint is forgotten once the key expired.
	after := old.NotAfter.Add(time.Second)
	clock.Set(after)
	if err := m.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := authoritytest.Stored(t, store)
	if d := authority.Plan(st, after, testPolicy(), nil); len(d.Steps) == 0 || d.Steps[0] != authority.StepDropRetired {
		t.Fatalf("plan after the tainted key expired = %v, want DropRetiredRoots first", d.Steps)
	}
	n, err := newMinter(testPolicy()).Apply(ctx, st, authority.StepDropRetired, after)
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Taints) != 0 {
		t.Fatal("expired taint kept")
	}
}

// TestTaintRoot: a tainted root gets a successor at once; it activates
// when the agents hold it (the adoption gate) or at once with Force; the
// bundle then announces the old root, and revoke drops it from the bundle.
func TestTaintRoot(t *testing.T) {
	for _, force := range []bool{false, true} {
		name := "gate"
		if force {
			name = "force"
		}
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			store, m, acked := gatedManager(t)
			oldRoot := mustLoad(t, m).State.Root.Current.Cert()
			if _, err := authority.TaintAuthority(ctx, store, authority.TaintRequest{Role: authority.RoleRoot, Force: force}, t0); err != nil {
				t.Fatal(err)
			}
			if err := m.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			m.RotateOnce(ctx) // PrepareRoot
			if force {
				m.RotateOnce(ctx) // ActivateRoot, without waiting
			}
			l := mustCurrent(t, m)
			if !force {
				if !l.State.Root.Current.Cert().Equal(oldRoot) || l.State.Root.Next == nil {
					t.Fatal("want the next root published and the tainted one still signing until the agents hold it")
				}
				if len(l.Taints) != 0 {
					t.Fatal("taint announced while the tainted root still signs")
				}
				if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleRoot}); !errors.Is(err, authority.ErrNotTainted) {
					t.Fatalf("revoke while the root signs: err = %v, want ErrNotTainted", err)
				}
				if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleRoot, Serial: oldRoot.SerialNumber.Text(16)}); !errors.Is(err, authority.ErrStillSigning) {
					t.Fatalf("revoke by serial while the root signs: err = %v, want ErrStillSigning", err)
				}
				*acked = true
				m.RotateOnce(ctx)
				l = mustCurrent(t, m)
			}
			if l.State.Root.Current.Cert().Equal(oldRoot) {
				t.Fatal("tainted root still signs")
			}
			if err := l.Authority.Cert.CheckSignatureFrom(l.State.Root.Current.Cert()); err != nil {
				t.Fatalf("intermediate not re-issued under the new root: %v", err)
			}
			if !hasKeyID(taintedKeyIDs(l), oldRoot.SubjectKeyId) || !containsCert(l.Bundle, oldRoot) {
				t.Fatal("want the old root in the bundle and announced as tainted")
			}
			refuse := errors.New("live leaves")
			if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleRoot, Check: func(authority.Taint) error { return refuse }}); !errors.Is(err, refuse) {
				t.Fatalf("revoke refused by its check: err = %v", err)
			}
			if _, err := authority.RevokeAuthority(ctx, store, authority.RevokeRequest{Role: authority.RoleRoot}); err != nil {
				t.Fatalf("revoke: %v", err)
			}
			if err := m.Reload(ctx); err != nil {
				t.Fatal(err)
			}
			l = mustCurrent(t, m)
			if containsCert(l.Bundle, oldRoot) {
				t.Fatal("revoked root still in the bundle")
			}
		})
	}
}

// TestTaintRoundTrip: taints survive Encode/Decode, and bad taint entries
// in meta.json are refused naming the field.
func TestTaintRoundTrip(t *testing.T) {
	s := fullState(t)
	c := s.Intermediate.Current.Cert()
	s.Taints = []authority.Taint{{Role: authority.RoleIntermediate, SubjectKeyID: c.SubjectKeyId, Serial: c.SerialNumber.Text(16), NotAfter: c.NotAfter, At: t0, Force: true, Revoked: true}}
	got, err := authority.Decode(encode(t, s))
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Taints) != 1 || !bytes.Equal(got.Taints[0].SubjectKeyID, c.SubjectKeyId) || !got.Taints[0].Force || !got.Taints[0].Revoked || !got.Taints[0].NotAfter.Equal(c.NotAfter) || !got.Tainted(c) {
		t.Fatalf("taints after a round trip = %+v", got.Taints)
	}
	for name, bad := range map[string]string{
		"subjectKeyId": `{"generation":1,"taints":[{"role":"root","subjectKeyId":"zz"}]}`,
		"role":         `{"generation":1,"taints":[{"role":"leaf","subjectKeyId":"01"}]}`,
	} {
		data := encode(t, s)
		data[authority.KeyMeta] = []byte(bad)
		if _, err := authority.Decode(data); !errors.Is(err, authority.ErrCorrupt) || !strings.Contains(err.Error(), "taints[0]."+name) {
			t.Errorf("%s: Decode error = %v, want ErrCorrupt naming taints[0].%s", name, err, name)
		}
	}
}

// TestTaintNextKeys: a tainted successor (found by its serial, in any case
// and with leading zeros or 0x) never signed: it is dropped, and the plan
// prepares another rather than activate it.
func TestTaintNextKeys(t *testing.T) {
	for _, role := range []string{authority.RoleRoot, authority.RoleIntermediate} {
		t.Run(role, func(t *testing.T) {
			ctx := context.Background()
			store, err := authority.NewDirStore(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			m := newMinter(testPolicy())
			s := bootstrap(t, m, t0)
			s = apply(t, m, s, authority.StepPrepareRoot, t0)
			s = apply(t, m, s, authority.StepPrepareIntermediate, t0)
			if _, err := store.Save(ctx, encode(t, s), ""); err != nil {
				t.Fatal(err)
			}
			next := s.Intermediate.Next.Cert()
			if role == authority.RoleRoot {
				next = s.Root.Next.Cert()
			}
			if _, err := authority.TaintAuthority(ctx, store, authority.TaintRequest{Role: role, Serial: "0x00" + strings.ToUpper(next.SerialNumber.Text(16))}, t0); err != nil {
				t.Fatal(err)
			}
			got, _ := authoritytest.Stored(t, store)
			r := got.Intermediate
			if role == authority.RoleRoot {
				r = got.Root
				if containsCert(got.Bundle(t0), next) {
					t.Fatal("the tainted next root is still in the bundle")
				}
			}
			if r.Next != nil {
				t.Fatal("the tainted next key was kept")
			}
			if !got.Tainted(next) {
				t.Fatal("the taint was not recorded")
			}
		})
	}
}
