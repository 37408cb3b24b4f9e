package keystore_test

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/test/authoritytest"
	"github.com/mayfly-pki/mayfly/internal/test/softhsm"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// TestPKCS11RotationAndRestart walks the authority through an intermediate
// rotation and a root rotation on a fake clock with its keys in SoftHSM2,
// saving the state to a directory at every step: new keys are made in the
// token, replaced ones deleted after their grace, and a CA that reopens
// the token and the state (a restart) signs with the keys in force.
func TestPKCS11RotationAndRestart(t *testing.T) {
	tok := softhsm.NewToken(t, "mayfly-rotation")
	ctx := context.Background()
	k := open(t, config(tok))
	store, err := authority.NewDirStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := authority.Policy{RootTTL: 240 * time.Hour, IntermediateTTL: 24 * time.Hour, PrepareAt: 0.5, ActivateAt: 2.0 / 3.0, RootAckWait: time.Hour, JWTKeyTTL: 20 * 240 * time.Hour}
	m := &authority.Minter{TrustDomain: td, Policy: p, KeyType: pki.KeyTypeECDSAP256, Rand: rand.Reader, Keys: k}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	s, err := m.Bootstrap(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	version := ""
	save := func() {
		data, err := s.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if version, err = store.Save(ctx, data, version); err != nil {
			t.Fatal(err)
		}
	}
	save()
	walk := func(until time.Time) {
		for i := 0; i < 200 && now.Before(until); i++ {
			d := authority.Plan(s, now, p, func() bool { return true })
			for _, step := range d.Steps {
				if s, err = m.Apply(ctx, s, step, now); err != nil {
					t.Fatalf("Apply(%s): %v", step, err)
				}
			}
			save()
			if len(d.Steps) == 0 {
				now = d.Next
				if now.After(until) {
					now = until
				}
			}
		}
	}
	firstInter, firstRoot := s.Intermediate.Current.KeyURI, s.Root.Current.KeyURI
	walk(now.Add(24*time.Hour + 2*authority.KeyDeleteGrace))
	if s.Intermediate.Current.KeyURI == firstInter {
		t.Fatal("the intermediate did not rotate")
	}
	if _, err := k.LoadKey(ctx, firstInter); err == nil {
		t.Fatal("the replaced intermediate's key is still in the token after its grace")
	}
	s.Root.Requested = true
	walk(now.Add(48 * time.Hour))
	if s.Root.Current.KeyURI == firstRoot {
		t.Fatal("the root did not rotate")
	}
	if _, err := k.LoadKey(ctx, firstRoot); err == nil {
		t.Fatal("the replaced root's key is still in the token after its grace")
	}
	inUse := 0
	for _, sl := range []*authority.Slot{s.Root.Current, s.Root.Next, s.Intermediate.Current, s.Intermediate.Next} {
		if sl != nil {
			inUse++
		}
	}
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}

	// Restart: a new session on the token, the state from the directory.
	k2 := open(t, config(tok))
	back, _ := authoritytest.Stored(t, store)
	if err := back.LoadKeys(ctx, k2); err != nil {
		t.Fatalf("LoadKeys after the restart: %v", err)
	}
	auth, err := back.SigningAuthority()
	if err != nil {
		t.Fatal(err)
	}
	leafKey, _ := pki.GenerateKey(pki.KeyTypeECDSAP256, rand.Reader)
	id, _ := pki.WorkloadID(td, "default", "web")
	signer := &pki.Signer{Authority: auth, Now: func() time.Time { return now }, Rand: rand.Reader, Options: pki.DefaultWorkloadOptions()}
	leaf, _, err := signer.Sign(pki.SignRequest{Kind: pki.KindWorkload, PublicKey: leafKey.Public(), ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatalf("signing after the restart: %v", err)
	}
	roots := x509.NewCertPool()
	for _, r := range back.Bundle(now) {
		roots.AddCert(r)
	}
	inters := x509.NewCertPool()
	inters.AddCert(auth.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inters, CurrentTime: now.Add(time.Second), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("the leaf does not verify: %v", err)
	}

	// The token holds the keys in use and those waiting for their grace:
	// nothing leaks.
	_, pairs := tokenKeyPairs(t, tok)
	if want := inUse + len(back.KeyDeletions); len(pairs) != want {
		t.Fatalf("the token holds %d key pairs, want %d (%d in use, %d waiting for deletion)", len(pairs), want, inUse, len(back.KeyDeletions))
	}
}
