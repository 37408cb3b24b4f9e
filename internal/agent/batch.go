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

	once sync.Once
	loop *batchLoop[*issuerv1.WorkloadRequest, *issuerv1.WorkloadResult]
}

func (b *Batcher) init() {
	b.once.Do(func() {
		b.loop = newBatchLoop(b.Window, b.MaxBatch, b.Clock, b.Signer.SignWorkloads,
			func(r *issuerv1.WorkloadRequest, id string) { r.RequestId = id })
	})
}

// Start runs the batching loop until ctx is done.
func (b *Batcher) Start(ctx context.Context) error {
	b.init()
	return b.loop.run(ctx)
}

// Sign submits one request and waits for its result.
func (b *Batcher) Sign(ctx context.Context, req *issuerv1.WorkloadRequest) (*issuerv1.WorkloadResult, error) {
	b.init()
	return b.loop.submit(ctx, req)
}

// JWTBatcher gathers the JWT-SVID requests of many workloads into few
// SignJWTs calls, as Batcher does for certificates. It is a JWTSigner, so
// a JWTCache asks the CA through it.
type JWTBatcher struct {
	Signer   JWTSigner
	Window   time.Duration
	MaxBatch int
	// Clock times the window; nil means the wall clock.
	Clock rotate.Clock

	once sync.Once
	loop *batchLoop[*issuerv1.JWTRequest, *issuerv1.JWTResult]
}

func (b *JWTBatcher) init() {
	b.once.Do(func() {
		b.loop = newBatchLoop(b.Window, b.MaxBatch, b.Clock, b.Signer.SignJWTs,
			func(r *issuerv1.JWTRequest, id string) { r.RequestId = id })
	})
}

// Start runs the batching loop until ctx is done.
func (b *JWTBatcher) Start(ctx context.Context) error {
	b.init()
	return b.loop.run(ctx)
}

// SignJWTs submits each request to the next batch and returns their
// results in order; the requests' IDs are the batcher's.
func (b *JWTBatcher) SignJWTs(ctx context.Context, reqs []*issuerv1.JWTRequest) ([]*issuerv1.JWTResult, error) {
	b.init()
	out := make([]*issuerv1.JWTResult, len(reqs))
	for i, req := range reqs {
		res, err := b.loop.submit(ctx, req)
		if err != nil {
			return nil, err
		}
		out[i] = res
	}
	return out, nil
}

// withID is a request or a result of a batch, matched by its request ID.
type withID interface{ GetRequestId() string }

// batchLoop is the gathering shared by Batcher and JWTBatcher: the first
// request waits at most window for others, up to max per call of send;
// each caller gets the result carrying its request's ID.
type batchLoop[Req, Res withID] struct {
	window  time.Duration
	max     int
	clock   rotate.Clock
	send    func(context.Context, []Req) ([]Res, error)
	setID   func(Req, string)
	in      chan *pending[Req, Res]
	counter atomic.Uint64
}

type pending[Req, Res any] struct {
	req  Req
	done chan batchResult[Res]
}

type batchResult[Res any] struct {
	res Res
	err error
}

func newBatchLoop[Req, Res withID](window time.Duration, limit int, clock rotate.Clock, send func(context.Context, []Req) ([]Res, error), setID func(Req, string)) *batchLoop[Req, Res] {
	return &batchLoop[Req, Res]{
		window: cmp.Or(window, 2*time.Millisecond),
		max:    cmp.Or(limit, 256),
		clock:  cmp.Or[rotate.Clock](clock, rotate.RealClock{}),
		send:   send,
		setID:  setID,
		in:     make(chan *pending[Req, Res]),
	}
}

func (l *batchLoop[Req, Res]) run(ctx context.Context) error {
	for {
		var first *pending[Req, Res]
		select {
		case <-ctx.Done():
			return nil
		case first = <-l.in:
		}
		batch := []*pending[Req, Res]{first}
		timer := l.clock.NewTimer(l.window)
	gather:
		for len(batch) < l.max {
			select {
			case p := <-l.in:
				batch = append(batch, p)
			case <-timer.C():
				break gather
			case <-ctx.Done():
				break gather
			}
		}
		timer.Stop()
		go l.sendBatch(ctx, batch)
	}
}

func (l *batchLoop[Req, Res]) sendBatch(ctx context.Context, batch []*pending[Req, Res]) {
	reqs := make([]Req, len(batch))
	for i, p := range batch {
		reqs[i] = p.req
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	results, err := l.send(cctx, reqs)
	byID := make(map[string]Res, len(results))
	for _, r := range results {
		byID[r.GetRequestId()] = r
	}
	for _, p := range batch {
		r := batchResult[Res]{err: err}
		if err == nil {
			var ok bool
			if r.res, ok = byID[p.req.GetRequestId()]; !ok {
				r.err = errMissingResult
			}
		}
		p.done <- r
	}
}

func (l *batchLoop[Req, Res]) submit(ctx context.Context, req Req) (Res, error) {
	var zero Res
	l.setID(req, strconv.FormatUint(l.counter.Add(1), 36))
	p := &pending[Req, Res]{req: req, done: make(chan batchResult[Res], 1)}
	select {
	case l.in <- p:
	case <-ctx.Done():
		return zero, ctx.Err()
	}
	select {
	case r := <-p.done:
		return r.res, r.err
	case <-ctx.Done():
		return zero, ctx.Err()
	}
}
