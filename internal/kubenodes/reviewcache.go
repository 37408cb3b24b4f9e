package kubenodes

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// reviewCache remembers successful TokenReviews of pod tokens, so that the
// renewals of a pod's certificates do not review the same token again and
// again. An entry is keyed by the SHA-256 of the token and the audience (the
// token itself is never kept), lives at most ttl and never past the
// token's own expiry (its exp claim; a token without one is not cached),
// and the cache holds at most size entries. Only the review is cached: the
// caller still checks the pod the review names against the pod cache, so a
// deleted pod's token stops working as soon as the cache sees the deletion.
type reviewCache struct {
	size int
	ttl  time.Duration
	now  func() time.Time

	mu        sync.Mutex
	entries   map[reviewKey]cachedReview
	lastSweep time.Time
}

type reviewKey struct {
	token    [sha256.Size]byte
	audience string
}

type cachedReview struct {
	r       reviewed
	expires time.Time
}

func newReviewCache(size int, ttl time.Duration, now func() time.Time) *reviewCache {
	return &reviewCache{size: size, ttl: ttl, now: now, entries: map[reviewKey]cachedReview{}}
}

// review returns the cached review of token for audience, or asks do and
// caches its successful answer.
func (c *reviewCache) review(ctx context.Context, audience, token string, do func(context.Context) (reviewed, error)) (reviewed, error) {
	if c == nil || c.size <= 0 || c.ttl <= 0 {
		return do(ctx)
	}
	k := reviewKey{token: sha256.Sum256([]byte(token)), audience: audience}
	now := c.now()
	c.mu.Lock()
	e, ok := c.entries[k]
	if ok && now.Before(e.expires) {
		c.mu.Unlock()
		return e.r, nil
	}
	if ok {
		delete(c.entries, k)
	}
	c.mu.Unlock()

	r, err := do(ctx)
	if err != nil {
		return r, err
	}
	exp, ok := tokenExpiry(token)
	if !ok {
		return r, nil
	}
	expires := now.Add(c.ttl)
	if exp.Before(expires) {
		expires = exp
	}
	if !now.Before(expires) {
		return r, nil
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.size {
		c.evictLocked(now)
	}
	c.entries[k] = cachedReview{r: r, expires: expires}
	return r, nil
}

// evictLocked makes room for one entry: it drops the expired entries (at
// most once per ttl/4, so a full cache of live entries is not swept on every
// insert), then, if still full, an arbitrary one.
func (c *reviewCache) evictLocked(now time.Time) {
	if now.Sub(c.lastSweep) >= c.ttl/4 {
		c.lastSweep = now
		for k, e := range c.entries {
			if !now.Before(e.expires) {
				delete(c.entries, k)
			}
		}
	}
	for k := range c.entries {
		if len(c.entries) < c.size {
			return
		}
		delete(c.entries, k)
	}
}

// len returns the number of cached reviews.
func (c *reviewCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.entries)
}

// tokenExpiry reads the exp claim of a JWT without verifying it: the
// TokenReview did that; the claim only bounds how long its answer is
// reused. ok is false when the token has no readable exp.
func tokenExpiry(token string) (time.Time, bool) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 || len(parts[1]) > 16<<10 {
		return time.Time{}, false
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}, false
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if err := json.Unmarshal(payload, &claims); err != nil || claims.Exp == nil {
		return time.Time{}, false
	}
	secs, err := claims.Exp.Int64()
	if err != nil || secs <= 0 {
		return time.Time{}, false
	}
	return time.Unix(secs, 0), true
}
