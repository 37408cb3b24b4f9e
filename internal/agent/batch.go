package agent

import (
	"cmp"
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// Signer sends a batch of workload requests to the CA (CAConn).
type Signer interface {
	SignWorkloads(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error)
}

// Batcher gathers the requests of many identities into few SignWorkloads
// calls: the first request of a batch waits at most Window for others (so
// a node's many new pods cost one round trip), up to MaxBatch per call.
type Batcher struct {
	Signer   Signer
	Window   time.Duration
	MaxBatch int
	// Clock times the window; nil means the wall clock.
	Clock rotate.Clock

	once    sync.Once
	in      chan *pending
	counter atomic.Uint64
}

type pending struct {
	req  *issuerv1.WorkloadRequest
	done chan batchResult
}

type batchResult struct {
	res *issuerv1.WorkloadResult
	err error
}

func (b *Batcher) init() {
	b.once.Do(func() {
		b.Window = cmp.Or(b.Window, 2*time.Millisecond)
		b.MaxBatch = cmp.Or(b.MaxBatch, 256)
		if b.Clock == nil {
			b.Clock = rotate.RealClock{}
		}
		b.in = make(chan *pending)
	})
}

// Start runs the batching loop until ctx is done.
func (b *Batcher) Start(ctx context.Context) error {
	b.init()
	for {
		var first *pending
		select {
		case <-ctx.Done():
			return nil
		case first = <-b.in:
		}
		batch := []*pending{first}
		timer := b.Clock.NewTimer(b.Window)
	gather:
		for len(batch) < b.MaxBatch {
			select {
			case p := <-b.in:
				batch = append(batch, p)
			case <-timer.C():
				break gather
			case <-ctx.Done():
				break gather
			}
		}
		timer.Stop()
		go b.send(ctx, batch)
	}
}

func (b *Batcher) send(ctx context.Context, batch []*pending) {
	reqs := make([]*issuerv1.WorkloadRequest, len(batch))
	for i, p := range batch {
		reqs[i] = p.req
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	results, err := b.Signer.SignWorkloads(cctx, reqs)
	byID := make(map[string]*issuerv1.WorkloadResult, len(results))
	for _, r := range results {
		byID[r.GetRequestId()] = r
	}
	for _, p := range batch {
		r := batchResult{err: err}
		if err == nil {
			r.res = byID[p.req.GetRequestId()]
			if r.res == nil {
				r.err = errMissingResult
			}
		}
		p.done <- r
	}
}

// Sign submits one request and waits for its result.
func (b *Batcher) Sign(ctx context.Context, req *issuerv1.WorkloadRequest) (*issuerv1.WorkloadResult, error) {
	b.init()
	req.RequestId = strconv.FormatUint(b.counter.Add(1), 36)
	p := &pending{req: req, done: make(chan batchResult, 1)}
	select {
	case b.in <- p:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
