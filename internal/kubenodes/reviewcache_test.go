package kubenodes

import (
	"context"
	"encoding/base64"
	"errors"
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

// countingReview answers every review with r and counts the calls.
type countingReview struct {
	calls int
	err   error
}

func (c *countingReview) do(context.Context) (reviewed, error) {
	c.calls++
	return reviewed{podUID: "uid-1"}, c.err
}

func TestReviewCache(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ctx := context.Background()

	t.Run("a_token_is_reviewed_once_while_cached", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(10, 5*time.Minute, clock.Now), &countingReview{}
		tok := jwt("a", t0.Add(time.Hour))
		for range 5 {
			if _, err := c.review(ctx, "mayfly-ca", tok, api.do); err != nil {
				t.Fatal(err)
			}
		}
		if api.calls != 1 {
			t.Errorf("reviews = %d, want 1", api.calls)
		}
	})
	t.Run("reviewed_again_after_the_cache_ttl", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(10, 5*time.Minute, clock.Now), &countingReview{}
		tok := jwt("a", t0.Add(time.Hour))
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		clock.Advance(5*time.Minute - time.Second)
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		if api.calls != 1 {
			t.Fatalf("reviews before the ttl = %d, want 1", api.calls)
		}
		clock.Advance(time.Second)
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		if api.calls != 2 {
			t.Errorf("reviews at the ttl = %d, want 2", api.calls)
		}
	})
	t.Run("never_past_the_token_expiry", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(10, 5*time.Minute, clock.Now), &countingReview{}
		tok := jwt("a", t0.Add(time.Minute))
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		clock.Advance(time.Minute)
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		if api.calls != 2 {
			t.Errorf("reviews once the token expired = %d, want 2 (no cached answer past exp)", api.calls)
		}
	})
	t.Run("expired_and_unreadable_tokens_are_not_cached", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(10, 5*time.Minute, clock.Now), &countingReview{}
		for _, tok := range []string{jwt("a", t0.Add(-time.Second)), jwt("b", time.Time{}), "not-a-jwt", "a.!!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":"soon"}`)) + ".c"} {
			_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
			_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		}
		if api.calls != 10 || c.len() != 0 {
			t.Errorf("reviews = %d (want 10), cached = %d (want 0)", api.calls, c.len())
		}
	})
	t.Run("refusals_are_not_cached", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(10, 5*time.Minute, clock.Now), &countingReview{err: errors.New("token rejected")}
		tok := jwt("a", t0.Add(time.Hour))
		for range 2 {
			if _, err := c.review(ctx, "mayfly-ca", tok, api.do); err == nil {
				t.Fatal("a refused review passed")
			}
		}
		if api.calls != 2 {
			t.Errorf("reviews = %d, want 2", api.calls)
		}
	})
	t.Run("keyed_by_audience", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(10, 5*time.Minute, clock.Now), &countingReview{}
		tok := jwt("a", t0.Add(time.Hour))
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		_, _ = c.review(ctx, "other", tok, api.do)
		if api.calls != 2 {
			t.Errorf("reviews = %d, want 2 (one per audience)", api.calls)
		}
	})
	t.Run("bounded_in_size", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(3, 5*time.Minute, clock.Now), &countingReview{}
		for i := range 10 {
			_, _ = c.review(ctx, "mayfly-ca", jwt(fmt.Sprint(i), t0.Add(time.Hour)), api.do)
			if c.len() > 3 {
				t.Fatalf("cache holds %d entries, bound 3", c.len())
			}
		}
	})
	t.Run("disabled_by_a_negative_size", func(t *testing.T) {
		clock := rotate.NewFakeClock(t0)
		c, api := newReviewCache(-1, 5*time.Minute, clock.Now), &countingReview{}
		tok := jwt("a", t0.Add(time.Hour))
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		_, _ = c.review(ctx, "mayfly-ca", tok, api.do)
		if api.calls != 2 {
			t.Errorf("reviews = %d, want 2", api.calls)
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
