package kubenodes

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"strings"
	"sync"
	"time"
)

// reviewCache remembers, for each pod, the pod token whose TokenReview
// bound it to that pod and to the pod's ServiceAccount, so that the
// renewals of a pod's certificates do not review the same token again.
//
// An entry is keyed by the pod's UID and holds the SHA-256 of the token
// (the token itself is never kept): a hit needs the same pod and the same
// token, so an answer never serves another pod, nor another token of the
// same pod. It lives at most ttl and never past the token's own expiry
// (its exp claim; a token without one is not cached). A pod has one entry:
// the kubelet's next token replaces it. The cache holds at most size
// entries (about 100 bytes each). A cache serves one audience (its
// authorizer's).
//
// Why an answer may live as long as its token: whoever holds the token
// could present it, and have it reviewed again, until its exp anyway. What
// else ends a pod token early is checked on every request from the pod
// cache instead: the pod's deletion (the UID leaves the cache, and a new
// pod of the same name has a new UID) and its node. The deletion of its
// ServiceAccount is not seen before the token's exp, as for a request
// without a token, which no TokenReview checks at all.
type reviewCache struct {
	size int
	ttl  time.Duration
	now  func() time.Time

	mu        sync.Mutex
	entries   map[string]cachedReview // by pod UID
	lastSweep time.Time
}

type cachedReview struct {
	token   [sha256.Size]byte
	expires int64 // unix nanoseconds
}

// sweepEvery bounds how often a full cache is swept of expired entries.
const sweepEvery = time.Minute

func newReviewCache(size int, ttl time.Duration, now func() time.Time) *reviewCache {
	return &reviewCache{size: size, ttl: ttl, now: now, entries: map[string]cachedReview{}}
}

func (c *reviewCache) off() bool { return c == nil || c.size <= 0 || c.ttl <= 0 }

// admitted reports whether token's review bound it to the pod podUID
// (remember) and that answer may still be used.
func (c *reviewCache) admitted(podUID, token string) bool {
	if c.off() {
		return false
	}
	sum := sha256.Sum256([]byte(token))
	now := c.now().UnixNano()
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[podUID]
	if !ok || e.token != sum {
		return false
	}
	if now >= e.expires {
		delete(c.entries, podUID)
		return false
	}
	return true
}

// remember records that token's review bound it to the pod podUID and to
// its ServiceAccount: until the token's exp (at most ttl) the same token
// for the same pod is admitted without a review.
func (c *reviewCache) remember(podUID, token string) {
	if c.off() {
		return
	}
	exp, ok := tokenExpiry(token)
	if !ok {
		return
	}
	now := c.now()
	expires := now.Add(c.ttl)
	if exp.Before(expires) {
		expires = exp
	}
	if !now.Before(expires) {
		return
	}
	e := cachedReview{token: sha256.Sum256([]byte(token)), expires: expires.UnixNano()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.entries[podUID]; !ok && len(c.entries) >= c.size {
		c.evictLocked(now)
	}
	c.entries[podUID] = e
}

// evictLocked makes room for one entry: it drops the expired entries (at
// most once per sweepEvery, so a full cache of live entries is not swept
// on every insert), then, if still full, an arbitrary one.
func (c *reviewCache) evictLocked(now time.Time) {
	if now.Sub(c.lastSweep) >= sweepEvery {
		c.lastSweep = now
		ns := now.UnixNano()
		for k, e := range c.entries {
			if ns >= e.expires {
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
	if err != nil || secs <= 0 || secs > 1<<40 {
		return time.Time{}, false
	}
	return time.Unix(secs, 0), true
}
