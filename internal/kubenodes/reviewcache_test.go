package kubenodes

import (
	"cmp"
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

// TestReviewCache runs each case's reviews in order, advancing the clock
// before each by its after, and checks after each how many reviews reached
// the API (calls) and that the cache holds at most maxLen entries.
func TestReviewCache(t *testing.T) {
	t0 := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	ctx := context.Background()
	type review struct {
		after    time.Duration // the clock advances this much first
		audience string        // default mayfly-ca
		token    string
		calls    int // reviews the API has seen once this one is done
	}
	tok := jwt("a", t0.Add(time.Hour))
	var bounded []review
	for i := range 10 {
		bounded = append(bounded, review{token: jwt(fmt.Sprint(i), t0.Add(time.Hour)), calls: i + 1})
	}
	var uncached []review
	for i, tok := range []string{jwt("a", t0.Add(-time.Second)), jwt("b", time.Time{}), "not-a-jwt", "a.!!!.c", "a." + base64.RawURLEncoding.EncodeToString([]byte(`{"exp":"soon"}`)) + ".c"} {
		uncached = append(uncached, review{token: tok, calls: 2*i + 1}, review{token: tok, calls: 2*i + 2})
	}
	for _, tc := range []struct {
		name    string
		size    int
		refuse  bool // the API refuses every token
		reviews []review
		maxLen  int
	}{
		{name: "a_token_is_reviewed_once_while_cached", size: 10, maxLen: 1, reviews: []review{
			{token: tok, calls: 1}, {token: tok, calls: 1}, {token: tok, calls: 1}, {token: tok, calls: 1}, {token: tok, calls: 1},
		}},
		{name: "reviewed_again_after_the_cache_ttl", size: 10, maxLen: 1, reviews: []review{
			{token: tok, calls: 1},
			{after: 5*time.Minute - time.Second, token: tok, calls: 1},
			{after: time.Second, token: tok, calls: 2},
		}},
		{name: "never_past_the_token_expiry", size: 10, maxLen: 1, reviews: []review{
			{token: jwt("a", t0.Add(time.Minute)), calls: 1},
			{after: time.Minute, token: jwt("a", t0.Add(time.Minute)), calls: 2},
		}},
		{name: "expired_and_unreadable_tokens_are_not_cached", size: 10, maxLen: 0, reviews: uncached},
		{name: "refusals_are_not_cached", size: 10, refuse: true, maxLen: 0, reviews: []review{
			{token: tok, calls: 1}, {token: tok, calls: 2},
		}},
		{name: "keyed_by_audience", size: 10, maxLen: 2, reviews: []review{
			{token: tok, calls: 1}, {audience: "other", token: tok, calls: 2},
		}},
		{name: "bounded_in_size", size: 3, maxLen: 3, reviews: bounded},
		{name: "disabled_by_a_negative_size", size: -1, maxLen: 0, reviews: []review{
			{token: tok, calls: 1}, {token: tok, calls: 2},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			clock := rotate.NewFakeClock(t0)
			c, api := newReviewCache(tc.size, 5*time.Minute, clock.Now), &countingReview{}
			if tc.refuse {
				api.err = errors.New("token rejected")
			}
			for i, r := range tc.reviews {
				clock.Advance(r.after)
				_, err := c.review(ctx, cmp.Or(r.audience, "mayfly-ca"), r.token, api.do)
				if tc.refuse != (err != nil) {
					t.Fatalf("review %d: error = %v, want one: %t", i, err, tc.refuse)
				}
				if api.calls != r.calls {
					t.Fatalf("after review %d: the API saw %d reviews, want %d", i, api.calls, r.calls)
				}
				if c.len() > tc.maxLen {
					t.Fatalf("after review %d: cache holds %d entries, want at most %d", i, c.len(), tc.maxLen)
				}
			}
		})
	}
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
