package workloadapi

import (
	"bytes"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// x509Response is the X509SVIDResponse of one version of an identity set,
// built once (PKCS#8 encoding, DER concatenation, wire encoding) and shared
// by every stream that serves that version.
type x509Response struct {
	// ids and bundles are the source's snapshots the response was built
	// from, compared by pointer to recognise the version.
	ids     []Identity
	bundles map[spiffeid.TrustDomain][]*x509.Certificate
	msg     *workload.X509SVIDResponse
	// wire is the deterministic encoding of msg; two versions with the same
	// wire are the same content and a stream does not resend it.
	wire []byte
	// encoded is what streams send: an empty message whose unknown fields
	// are wire. Protobuf encodes unknown fields verbatim, so gRPC's codec
	// copies wire instead of encoding msg again, and the client decodes
	// msg's fields; concurrent sends only read it.
	encoded *workload.X509SVIDResponse
	// notAfter is the earliest leaf expiry; the entry is dropped after it.
	notAfter time.Time
}

// sameContent reports whether r carries what prev carried.
func (r *x509Response) sameContent(prev *x509Response) bool {
	return prev != nil && (r == prev || bytes.Equal(r.wire, prev.wire))
}

// builtFrom reports whether r was built from exactly these snapshots. Keys
// are not compared: a key is checked against its leaf when built, so the
// same leaf means the same key.
func (r *x509Response) builtFrom(ids []Identity, bundles map[spiffeid.TrustDomain][]*x509.Certificate) bool {
	if len(ids) != len(r.ids) || len(bundles) != len(r.bundles) {
		return false
	}
	for i := range ids {
		a, b := &ids[i], &r.ids[i]
		if a.ID != b.ID || a.Hint != b.Hint || !sameCerts(a.Chain, b.Chain) {
			return false
		}
	}
	for td, roots := range bundles {
		if !sameCerts(roots, r.bundles[td]) {
			return false
		}
	}
	return true
}

func sameCerts(a, b []*x509.Certificate) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// responseCache holds the built responses by the leaf of their first
// identity, so that a new stream of an unchanged identity costs a lookup.
// An entry lives until its leaf expires; a rotated identity gets a new
// entry under its new leaf.
type responseCache struct {
	now     func() time.Time
	entries sync.Map // *x509.Certificate -> *x509Response
	size    atomic.Int64
	// sweepAt is the size at which the next insertion drops expired entries.
	sweepAt atomic.Int64
}

const minSweepSize = 256

func newResponseCache(now func() time.Time) *responseCache {
	c := &responseCache{now: now}
	c.sweepAt.Store(minSweepSize)
	return c
}

// get returns the response for ids (not empty) and bundles, building it if
// this version was not seen yet.
func (c *responseCache) get(ids []Identity, bundles map[spiffeid.TrustDomain][]*x509.Certificate) (*x509Response, error) {
	if len(ids[0].Chain) == 0 {
		return nil, fmt.Errorf("identity %s has no certificate", ids[0].ID)
	}
	leaf := ids[0].Chain[0]
	if v, ok := c.entries.Load(leaf); ok {
		if r := v.(*x509Response); r.builtFrom(ids, bundles) {
			return r, nil
		}
	}
	r, err := buildX509Response(ids, bundles)
	if err != nil {
		return nil, err
	}
	if _, replaced := c.entries.Swap(leaf, r); !replaced {
		if n := c.size.Add(1); n >= c.sweepAt.Load() {
			c.sweep(n)
		}
	}
	return r, nil
}

// sweep drops the entries whose leaf expired and sets the next sweep at
// twice the remaining size.
func (c *responseCache) sweep(n int64) {
	if !c.sweepAt.CompareAndSwap(c.sweepAt.Load(), 1<<62) { // one sweeper at a time
		return
	}
	now := c.now()
	c.entries.Range(func(k, v any) bool {
		if now.After(v.(*x509Response).notAfter) {
			if _, ok := c.entries.LoadAndDelete(k); ok {
				n = c.size.Add(-1)
			}
		}
		return true
	})
	c.sweepAt.Store(max(2*n, minSweepSize))
}

// buildX509Response encodes ids the way go-spiffe and SPIRE expect: each
// SVID with its chain, its PKCS#8 key and the bundle of its own trust
// domain; the bundles of other trust domains as federated bundles, keyed by
// trust domain SPIFFE ID.
func buildX509Response(ids []Identity, bundles map[spiffeid.TrustDomain][]*x509.Certificate) (*x509Response, error) {
	msg := &workload.X509SVIDResponse{Svids: make([]*workload.X509SVID, 0, len(ids))}
	own := make(map[spiffeid.TrustDomain]bool, 1)
	var notAfter time.Time
	for i := range ids {
		id := &ids[i]
		if id.ID.IsZero() {
			return nil, errors.New("identity without SPIFFE ID")
		}
		if len(id.Chain) == 0 || id.Key == nil {
			return nil, fmt.Errorf("identity %s has no certificate or no key", id.ID)
		}
		leaf := id.Chain[0]
		if !pki.KeyMatches(leaf, id.Key) {
			return nil, fmt.Errorf("identity %s: key does not match certificate serial %s", id.ID, leaf.SerialNumber)
		}
		key, err := x509.MarshalPKCS8PrivateKey(id.Key)
		if err != nil {
			return nil, fmt.Errorf("identity %s: key cannot be exported as PKCS#8: %w", id.ID, err)
		}
		td := id.ID.TrustDomain()
		roots := bundles[td]
		if len(roots) == 0 {
			return nil, fmt.Errorf("identity %s: no trust bundle for trust domain %s", id.ID, td)
		}
		own[td] = true
		if notAfter.IsZero() || leaf.NotAfter.Before(notAfter) {
			notAfter = leaf.NotAfter
		}
		msg.Svids = append(msg.Svids, &workload.X509SVID{
			SpiffeId:    id.ID.String(),
			X509Svid:    concatDER(id.Chain),
			X509SvidKey: key,
			Bundle:      concatDER(roots),
			Hint:        id.Hint,
		})
	}
	for td, roots := range bundles {
		if own[td] || len(roots) == 0 {
			continue
		}
		if msg.FederatedBundles == nil {
			msg.FederatedBundles = make(map[string][]byte, len(bundles))
		}
		msg.FederatedBundles[td.IDString()] = concatDER(roots)
	}
	wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, fmt.Errorf("encoding X509SVIDResponse: %w", err)
	}
	encoded := &workload.X509SVIDResponse{}
	encoded.ProtoReflect().SetUnknown(wire)
	return &x509Response{
		ids:      ids,
		bundles:  bundles,
		msg:      msg,
		wire:     wire,
		encoded:  encoded,
		notAfter: notAfter,
	}, nil
}

// bundlesResponse encodes bundles as an X509BundlesResponse, keyed by trust
// domain SPIFFE ID as SPIRE does, with its deterministic wire encoding.
func bundlesResponse(bundles map[spiffeid.TrustDomain][]*x509.Certificate) (*workload.X509BundlesResponse, []byte, error) {
	msg := &workload.X509BundlesResponse{Bundles: make(map[string][]byte, len(bundles))}
	for td, roots := range bundles {
		if len(roots) > 0 {
			msg.Bundles[td.IDString()] = concatDER(roots)
		}
	}
	wire, err := proto.MarshalOptions{Deterministic: true}.Marshal(msg)
	if err != nil {
		return nil, nil, fmt.Errorf("encoding X509BundlesResponse: %w", err)
	}
	return msg, wire, nil
}

// concatDER concatenates the DER encodings of certs, the Workload API's
// encoding of chains and bundles.
func concatDER(certs []*x509.Certificate) []byte {
	n := 0
	for _, c := range certs {
		n += len(c.Raw)
	}
	out := make([]byte, 0, n)
	for _, c := range certs {
		out = append(out, c.Raw...)
	}
	return out
}
