package issuer

import (
	"context"
	"net"
	"sync"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc/peer"
)

// maxAttestPeers bounds the per-peer limiters kept at once; when the table
// is full, idle ones (bucket full again) are dropped, and a new peer that
// still finds no room is refused (the global bucket alone would let it in).
const maxAttestPeers = 10000

// attestThrottle bounds unauthenticated AttestAgent calls: one token bucket
// for the whole server and one per peer IP address, so that one client
// cannot make the CA check (and, for join tokens, lock and read) credentials
// at will.
type attestThrottle struct {
	global    *rate.Limiter
	peerRate  rate.Limit
	peerBurst int
	mu        sync.Mutex
	peers     map[string]*rate.Limiter
}

func newAttestThrottle(globalRate rate.Limit, globalBurst int, peerRate rate.Limit, peerBurst int) *attestThrottle {
	return &attestThrottle{
		global:    rate.NewLimiter(globalRate, globalBurst),
		peerRate:  peerRate,
		peerBurst: peerBurst,
		peers:     map[string]*rate.Limiter{},
	}
}

// allow takes one token of ip's bucket and one of the global bucket; it
// returns "" when the call may go on, else the scope that refused it
// ("peer" or "global"). A call refused by its peer's bucket takes nothing
// from the global one.
func (t *attestThrottle) allow(ip string, now time.Time) string {
	t.mu.Lock()
	l, ok := t.peers[ip]
	if !ok {
		if len(t.peers) >= maxAttestPeers {
			for k, p := range t.peers {
				if p.TokensAt(now) >= float64(t.peerBurst) {
					delete(t.peers, k)
				}
			}
		}
		if len(t.peers) >= maxAttestPeers {
			t.mu.Unlock()
			return "peer"
		}
		l = rate.NewLimiter(t.peerRate, t.peerBurst)
		t.peers[ip] = l
	}
	t.mu.Unlock()
	if !l.AllowN(now, 1) {
		return "peer"
	}
	if !t.global.AllowN(now, 1) {
		return "global"
	}
	return ""
}

// peerIP returns the IP address of the caller, without its port.
func peerIP(ctx context.Context) string {
	p, ok := peer.FromContext(ctx)
	if !ok || p.Addr == nil {
		return "unknown"
	}
	host, _, err := net.SplitHostPort(p.Addr.String())
	if err != nil {
		return p.Addr.String()
	}
	return host
}
