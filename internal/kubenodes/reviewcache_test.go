package kubenodes

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// jwt returns a token shaped like a ServiceAccount token with claim exp
// (none when exp is zero) and a distinguishing subject.
func jwt(sub string, exp time.Time) string {
	claims := fmt.Sprintf(`{"sub":%q}`, sub)
	if !exp.IsZero() {
		claims = fmt.Sprintf(`{"sub":%q,"exp":%d}`, sub, exp.Unix())
	}
	enc := base64.RawURLEncoding.EncodeToString
	return enc([]byte(`{"alg":"RS256"}`)) + "." + enc([]byte(claims)) + ".c2ln"
}

// reviewing stands for the authorizer: it asks the cache, and on a miss
// counts a review and remembers the answer, as checkPodToken does.
type reviewing struct {
	c     *reviewCache
	calls int
}

func (r *reviewing) check(podUID, token string) {
	if r.c.admitted(podUID, token) {
		return
	}
	r.calls++
	r.c.remember(podUID, token)
}

func TestReviewCache(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	newCache := func(size int, ttl time.Duration) (*rotate.FakeClock, *reviewing) {
		clock := rotate.NewFakeClock(t0)
		return clock, &reviewing{c: newReviewCache(size, ttl, clock.Now)}
	}

	t.Run("a_token_is_reviewed_once_while_cached", func(t *testing.T) {
		_, r := newCache(10, 24*time.Hour)
		tok := jwt("a", t0.Add(time.Hour))
		for range 5 {
			r.check("uid-1", tok)
		}
		if r.calls != 1 {
			t.Errorf("reviews = %d, want 1", r.calls)
		}
	})
	t.Run("renewals_every_30_minutes_reuse_the_review_until_the_token_expires", func(t *testing.T) {
		// The steady state of a CSI pod: 1h certificates renewed at half
		// life, an 8h pod token the kubelet replaces at 80% of its life.
		clock, r := newCache(10, 24*time.Hour)
		const tokenLife = 8 * time.Hour
		issued := clock.Now()
		tok := jwt("gen-0", issued.Add(tokenLife))
		certs := 0
		for gen := 1; clock.Now().Before(t0.Add(48 * time.Hour)); clock.Advance(30 * time.Minute) {
			if clock.Now().Sub(issued) >= tokenLife*8/10 {
				issued = clock.Now()
				tok = jwt(fmt.Sprint("gen-", gen), issued.Add(tokenLife))
				gen++
			}
			r.check("uid-1", tok)
			certs++
		}
		if got, want := float64(r.calls)/float64(certs), 0.1; got > want {
			t.Errorf("%d reviews for %d certificates = %.3f per certificate, want <= %.1f", r.calls, certs, got, want)
		}
	})
	t.Run("reviewed_again_after_the_cache_ttl", func(t *testing.T) {
		clock, r := newCache(10, 5*time.Minute)
		tok := jwt("a", t0.Add(time.Hour))
		r.check("uid-1", tok)
		clock.Advance(5*time.Minute - time.Second)
		r.check("uid-1", tok)
		if r.calls != 1 {
			t.Fatalf("reviews before the ttl = %d, want 1", r.calls)
		}
		clock.Advance(time.Second)
		r.check("uid-1", tok)
		if r.calls != 2 {
			t.Errorf("reviews at the ttl = %d, want 2", r.calls)
		}
	})
	t.Run("never_past_the_token_expiry", func(t *testing.T) {
		clock, r := newCache(10, 24*time.Hour)
		tok := jwt("a", t0.Add(time.Minute))
		r.check("uid-1", tok)
		clock.Advance(time.Minute - time.Second)
		r.check("uid-1", tok)
		if r.calls != 1 {
			t.Fatalf("reviews before the token's exp = %d, want 1", r.calls)
		}
		clock.Advance(time.Second)
		if r.c.admitted("uid-1", tok) {
			t.Error("a token was admitted at its exp without a review")
		}
	})
	t.Run("never_across_pods", func(t *testing.T) {
		_, r := newCache(10, 24*time.Hour)
		tok := jwt("a", t0.Add(time.Hour))
		r.check("uid-1", tok)
		if r.c.admitted("uid-2", tok) {
			t.Error("the review of a token bound to pod uid-1 admitted it for pod uid-2")
		}
	})
	t.Run("another_token_of_the_same_pod_is_reviewed", func(t *testing.T) {
		_, r := newCache(10, 24*time.Hour)
		r.check("uid-1", jwt("a", t0.Add(time.Hour)))
		if r.c.admitted("uid-1", jwt("b", t0.Add(time.Hour))) {
			t.Error("a token never reviewed was admitted because another token of its pod was")
		}
	})
	t.Run("the_next_token_replaces_the_pods_entry", func(t *testing.T) {
		_, r := newCache(10, 24*time.Hour)
		old, next := jwt("a", t0.Add(time.Hour)), jwt("b", t0.Add(2*time.Hour))
		r.check("uid-1", old)
		r.check("uid-1", next)
		if r.c.len() != 1 || r.c.admitted("uid-1", old) || !r.c.admitted("uid-1", next) {
			t.Errorf("entries = %d, old admitted %v, next admitted %v; want one entry, the next token's", r.c.len(), r.c.admitted("uid-1", old), r.c.admitted("uid-1", next))
		}
	})
	t.Run("expired_and_unreadable_tokens_are_not_cached", func(t *testing.T) {
		_, r := newCache(10, 24*time.Hour)
		for _, tok := range []string{jwt("a", t0.Add(-time.Second)), jwt("b", time.Time{}), "not-a-jwt", "a.!!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":"soon"}`)) + ".c"} {
			r.check("uid-1", tok)
			r.check("uid-1", tok)
		}
		if r.calls != 10 || r.c.len() != 0 {
			t.Errorf("reviews = %d (want 10), cached = %d (want 0)", r.calls, r.c.len())
		}
	})
	t.Run("bounded_in_size", func(t *testing.T) {
		clock, r := newCache(3, 24*time.Hour)
		for i := range 10 {
			r.check(fmt.Sprint("uid-", i), jwt(fmt.Sprint(i), t0.Add(time.Hour)))
			if r.c.len() > 3 {
				t.Fatalf("cache holds %d entries, bound 3", r.c.len())
			}
		}
		// Expired entries go first once a minute has passed since the
		// last sweep.
		clock.Advance(2 * time.Hour)
		r.check("uid-new", jwt("new", t0.Add(3*time.Hour)))
		if r.c.len() != 1 {
			t.Errorf("after the others expired the cache holds %d entries, want 1", r.c.len())
		}
	})
	t.Run("disabled_by_a_negative_size", func(t *testing.T) {
		_, r := newCache(-1, 24*time.Hour)
		tok := jwt("a", t0.Add(time.Hour))
		r.check("uid-1", tok)
		r.check("uid-1", tok)
		if r.calls != 2 {
			t.Errorf("reviews = %d, want 2", r.calls)
		}
	})
}

func FuzzTokenExpiry(f *testing.F) {
	f.Add(jwt("a", time.Unix(1e9, 0)))
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, tok string) {
		if exp, ok := tokenExpiry(tok); ok && exp.Unix() <= 0 {
			t.Errorf("expiry %v accepted", exp)
		}
	})
}
