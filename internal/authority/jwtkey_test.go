package authority_test

import (
	"crypto"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
)

func jwtPolicy() authority.Policy {
	p := testPolicy()
	p.JWTKeyTTL = 24 * time.Hour
	p.JWTMaxTokenTTL = time.Hour
	p.RootAckWait = 6 * time.Hour // after the activation point (16h), before the forced one (20h)
	return p
}

// jwtSteps are the JWT steps of d (the X.509 kinds rotate beside them).
func jwtSteps(d authority.Decision) []authority.Step {
	var out []authority.Step
	for _, s := range d.Steps {
		if strings.Contains(string(s), "JWT") || s == authority.StepDropRetired {
			out = append(out, s)
		}
	}
	return out
}

func TestJWTKeyPlan(t *testing.T) {
	p := jwtPolicy()
	m := newMinter(p)
	fresh := bootstrap(t, m, t0)
	if fresh.JWT.Current == nil {
		t.Fatal("Bootstrap minted no JWT key")
	}
	never := func() bool { return false }
	always := func() bool { return true }
	prepareAt := t0.Add(12 * time.Hour)
	activateAt := t0.Add(16 * time.Hour)
	prepared := apply(t, m, fresh, authority.StepPrepareJWTKey, prepareAt)
	activated := apply(t, m, prepared, authority.StepActivateJWTKey, activateAt)
	legacy := *fresh
	legacy.JWT = authority.Rotation{}

	for _, tc := range []struct {
		name  string
		state *authority.State
		now   time.Time
		acks  authority.BundleAcks
		want  []authority.Step
	}{
		{"before half life: nothing", fresh, prepareAt.Add(-time.Second), always, nil},
		{"at half life: prepares the next key", fresh, prepareAt, never, []authority.Step{authority.StepPrepareJWTKey}},
		{"published, before two thirds: waits", prepared, activateAt.Add(-time.Second), always, nil},
		{"at two thirds, agents hold it: activates", prepared, activateAt, always, []authority.Step{authority.StepActivateJWTKey}},
		{"at two thirds, agents lag: waits", prepared, activateAt, never, nil},
		{"ack wait over: activates without acks", prepared, prepareAt.Add(p.RootAckWait), never, []authority.Step{authority.StepActivateJWTKey}},
		{"retired key before its last token expired: kept", activated, activateAt.Add(time.Hour), always, nil},
		{"retired key after its last token expired: dropped", activated, activateAt.Add(time.Hour + jwtsvid.Skew), always, []authority.Step{authority.StepDropRetired}},
		{"state from before JWT-SVIDs: mints a key", &legacy, t0, never, []authority.Step{authority.StepMintJWTKey}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := jwtSteps(authority.Plan(tc.state, tc.now, p, tc.acks)); !slices.Equal(got, tc.want) {
				t.Fatalf("JWT steps %v, want %v", got, tc.want)
			}
		})
	}

	old, next := fresh.JWT.Current.KeyID, prepared.JWT.Next.KeyID
	if keys := prepared.JWTKeys(prepareAt); len(keys) != 2 || keys[old] == nil || keys[next] == nil {
		t.Errorf("published after prepare: %v, want the current and the next key", slices.Collect(mapKeys(keys)))
	}
	if activated.JWT.Current.KeyID != next {
		t.Errorf("signing key after activation %s, want %s", activated.JWT.Current.KeyID, next)
	}
	if keys := activated.JWTKeys(activateAt.Add(time.Hour)); keys[old] == nil {
		t.Error("the old key is not published while its tokens live")
	}
	if keys := activated.JWTKeys(activateAt.Add(time.Hour + jwtsvid.Skew)); keys[old] != nil {
		t.Error("the old key is still published after its last token expired")
	}
}

func mapKeys(m map[string]crypto.PublicKey) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

// TestJWTRotationNeverUnknownKey walks three JWT key lifetimes in 5-minute
// steps: the rotation loop (Plan + Apply, agents acking a while after each
// bundle change) beside a verifier that refreshes its cached JWKS only every
// 10 minutes and never on an unknown kid (stricter than go-oidc, which
// refetches on one). Every token signed with the signing
// key of the moment validates at every step of its life.
func TestJWTRotationNeverUnknownKey(t *testing.T) {
	p := jwtPolicy()
	m := newMinter(p)
	s := bootstrap(t, m, t0)
	td := spiffeid.RequireTrustDomainFromString("example.org")
	sub := spiffeid.RequireFromPath(td, "/web")

	type token struct {
		raw string
		exp time.Time
	}
	var (
		live       []token
		cached     *jwtbundle.Bundle
		cachedAt   time.Time
		ackedAt    = map[string]time.Time{} // bundle content -> when agents acked
		rotations  int
		validated  int
		lastSigner string
	)
	publishedKey := func(s *authority.State, now time.Time) string {
		return strings.Join(slices.Sorted(mapKeys(s.JWTKeys(now))), ",")
	}
	for now := t0; now.Before(t0.Add(3 * p.JWTKeyTTL)); now = now.Add(5 * time.Minute) {
		content := publishedKey(s, now)
		if _, ok := ackedAt[content]; !ok {
			ackedAt[content] = now.Add(10 * time.Minute) // agents take 10 minutes
		}
		acks := func() bool { return !now.Before(ackedAt[publishedKey(s, now)]) }
		d := authority.Plan(s, now, p, acks)
		for _, step := range d.Steps {
			s = apply(t, m, s, step, now)
			if step == authority.StepActivateJWTKey {
				rotations++
			}
		}
		if cached == nil || now.Sub(cachedAt) >= 10*time.Minute {
			cached = jwtbundle.New(td)
			for kid, pub := range s.JWTKeys(now) {
				cached.AddJWTAuthority(kid, pub)
			}
			cachedAt = now
		}
		signer, err := jwtsvid.NewSigner(s.JWT.Current.Key, s.JWT.Current.KeyID)
		if err != nil {
			t.Fatal(err)
		}
		lastSigner = s.JWT.Current.KeyID
		raw, err := signer.Sign(jwtsvid.Claims{Subject: sub, Audience: []string{"api"}, IssuedAt: now, Expiry: now.Add(p.JWTMaxTokenTTL)})
		if err != nil {
			t.Fatal(err)
		}
		live = append(live, token{raw, now.Add(p.JWTMaxTokenTTL)})
		kept := live[:0]
		for _, tok := range live {
			if now.After(tok.exp) {
				continue
			}
			kept = append(kept, tok)
			if _, err := jwtsvid.Validate(tok.raw, "api", cached, now); err != nil {
				t.Fatalf("at %s (+%s): %v", now, now.Sub(t0), err)
			}
			validated++
		}
		live = kept
	}
	if rotations < 2 {
		t.Fatalf("%d JWT key rotations in 3 key lifetimes, want at least 2", rotations)
	}
	t.Logf("%d rotations, %d validations, last signer %s", rotations, validated, lastSigner)
}

func TestJWTStateRoundTrip(t *testing.T) {
	for _, kt := range authority.JWTKeyTypes {
		t.Run(kt, func(t *testing.T) {
			p := jwtPolicy()
			p.JWTKeyType = kt
			m := newMinter(p)
			s := bootstrap(t, m, t0)
			s = apply(t, m, s, authority.StepPrepareJWTKey, t0.Add(12*time.Hour))
			s = apply(t, m, s, authority.StepActivateJWTKey, t0.Add(16*time.Hour))
			s = apply(t, m, s, authority.StepPrepareJWTKey, t0.Add(28*time.Hour))
			alg, err := jwtsvid.Algorithm(s.JWT.Current.Key.Public())
			if err != nil || string(alg) != kt {
				t.Fatalf("key algorithm %s (%v), want %s", alg, err, kt)
			}
			data := encode(t, s)
			got, err := authority.Decode(data)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !reflect.DeepEqual(got.JWTKeys(t0.Add(28*time.Hour)), s.JWTKeys(t0.Add(28*time.Hour))) {
				t.Error("published JWT keys differ after a round trip")
			}
			if got.JWT.Current.KeyID != s.JWT.Current.KeyID || !got.JWT.Current.NotAfter().Equal(s.JWT.Current.NotAfter()) ||
				!got.JWT.NextPublishedAt.Equal(s.JWT.NextPublishedAt) || len(got.JWT.Retired) != 1 {
				t.Errorf("JWT rotation differs after a round trip: %+v", got.JWT)
			}
		})
	}
}

func TestJWTStateCorrupt(t *testing.T) {
	m := newMinter(jwtPolicy())
	good := encode(t, bootstrap(t, m, t0))
	for _, tc := range []struct {
		name string
		mod  func(map[string][]byte)
		want string
	}{
		{"key without validity", func(d map[string][]byte) {
			d[authority.KeyMeta] = []byte(`{"generation":0}`)
		}, "jwt.key and its validity"},
		{"validity without key", func(d map[string][]byte) { delete(d, authority.KeyJWT) }, "jwt.key and its validity"},
		{"key not PEM", func(d map[string][]byte) { d[authority.KeyJWT] = []byte("nope") }, "jwt.key"},
		{"retired key not PEM", func(d map[string][]byte) {
			d[authority.KeyMeta] = []byte(strings.Replace(string(d[authority.KeyMeta]), `"jwt":{`, `"jwt":{"retired":[{"publicKey":"x","until":"2030-01-01T00:00:00Z"}],`, 1))
		}, "jwt.retired[0].publicKey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := map[string][]byte{}
			for k, v := range good {
				d[k] = slices.Clone(v)
			}
			tc.mod(d)
			_, err := authority.Decode(d)
			if !errors.Is(err, authority.ErrCorrupt) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode: %v, want ErrCorrupt naming %q", err, tc.want)
			}
		})
	}
}

func TestJWTPolicyValidate(t *testing.T) {
	for _, tc := range []struct {
		mod  func(*authority.Policy)
		want string
	}{
		{func(p *authority.Policy) { p.JWTKeyType = "HS256" }, "rotation.jwtKeyType"},
		{func(p *authority.Policy) { p.JWTKeyTTL = 2 * time.Hour }, "rotation.jwtKeyTTL"},
		{func(p *authority.Policy) { p.JWTMaxTokenTTL = time.Second }, "rotation.jwtMaxTokenTTL"},
	} {
		p := authority.DefaultPolicy()
		tc.mod(&p)
		if err := p.Validate(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate: %v, want an error naming %s", err, tc.want)
		}
	}
	if err := authority.DefaultPolicy().Validate(); err != nil {
		t.Fatalf("default policy: %v", err)
	}
}
