package agent

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// signerFunc adapts a function to Signer.
type signerFunc func(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error)

func (f signerFunc) SignWorkloads(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
	return f(ctx, reqs)
}

// echo answers every request with its own SPIFFE ID, in reverse order, so
// that a caller only gets the right result by matching the request ID.
func echo(reqs []*issuerv1.WorkloadRequest) []*issuerv1.WorkloadResult {
	out := make([]*issuerv1.WorkloadResult, 0, len(reqs))
	for _, r := range slices.Backward(reqs) {
		out = append(out, &issuerv1.WorkloadResult{
			RequestId: r.GetRequestId(),
			Result:    &issuerv1.WorkloadResult_Issued{Issued: &issuerv1.Issued{SpiffeId: r.GetSpiffeId()}},
		})
	}
	return out
}

// batchRecorder is an echoing Signer that records the size of every batch.
type batchRecorder struct {
	mu    sync.Mutex
	sizes []int
}

func (r *batchRecorder) SignWorkloads(_ context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
	r.mu.Lock()
	r.sizes = append(r.sizes, len(reqs))
	r.mu.Unlock()
	return echo(reqs), nil
}

func (r *batchRecorder) batches() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.sizes)
}

type signOutcome struct {
	id  string // the SPIFFE ID the caller asked for
	req *issuerv1.WorkloadRequest
	res *issuerv1.WorkloadResult
	err error
}

// signConcurrently has n callers ask at once, with IDs spiffe://example.org/w/<i>
// (or what id returns), and returns their outcomes. The batching loop is
// started only once every caller is about to send, so that batches fill up.
func signConcurrently(t *testing.T, b *Batcher, n int, id func(i int) string) []signOutcome {
	t.Helper()
	if id == nil {
		id = func(i int) string { return fmt.Sprintf("spiffe://example.org/w/%d", i) }
	}
	out := make([]signOutcome, n)
	var arrived, done sync.WaitGroup
	arrived.Add(n)
	done.Add(n)
	for i := range n {
		go func() {
			defer done.Done()
			o := signOutcome{id: id(i), req: &issuerv1.WorkloadRequest{SpiffeId: id(i)}}
			arrived.Done()
			o.res, o.err = b.Sign(t.Context(), o.req)
			out[i] = o
		}()
	}
	arrived.Wait()
	run(t, "Batcher.Start", b.Start)
	done.Wait()
	return out
}

func TestBatcherCoalescesConcurrentRequests(t *testing.T) {
	const slack = 2 // callers that lose the race to a batch's window
	tests := []struct {
		name     string
		maxBatch int // 0: the default
		callers  int
		limit    int // the batch size the Batcher must respect
	}{
		{name: "fifty callers share one batch under the default limit", callers: 50, limit: 256},
		{name: "fifty callers are split by MaxBatch 16", maxBatch: 16, callers: 50, limit: 16},
		{name: "fifty callers are split by MaxBatch 7", maxBatch: 7, callers: 50, limit: 7},
		{name: "MaxBatch 1 sends every request alone", maxBatch: 1, callers: 10, limit: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &batchRecorder{}
			b := &Batcher{Signer: rec, MaxBatch: tt.maxBatch}
			outcomes := signConcurrently(t, b, tt.callers, nil)

			ids := map[string]bool{}
			for _, o := range outcomes {
				if o.err != nil {
					t.Fatalf("Sign(%s): %v", o.id, o.err)
				}
				if got := o.res.GetIssued().GetSpiffeId(); got != o.id {
					t.Errorf("caller of %s got the result of %s", o.id, got)
				}
				if o.res.GetRequestId() != o.req.GetRequestId() {
					t.Errorf("caller of %s got result %q for request %q", o.id, o.res.GetRequestId(), o.req.GetRequestId())
				}
				if ids[o.req.GetRequestId()] {
					t.Errorf("request ID %q given twice", o.req.GetRequestId())
				}
				ids[o.req.GetRequestId()] = true
			}

			sizes := rec.batches()
			total := 0
			for _, s := range sizes {
				total += s
				if s > tt.limit {
					t.Errorf("a batch of %d requests exceeds MaxBatch %d", s, tt.limit)
				}
			}
			if total != tt.callers {
				t.Errorf("the CA saw %d requests, want %d", total, tt.callers)
			}
			wantMax := (tt.callers+tt.limit-1)/tt.limit + slack
			if tt.limit == 1 {
				wantMax = tt.callers
			}
			if len(sizes) > wantMax {
				t.Errorf("%d callers cost %d SignWorkloads calls %v, want at most %d", tt.callers, len(sizes), sizes, wantMax)
			}
		})
	}
}

func TestBatcherDeliversEachCallerItsOutcome(t *testing.T) {
	errCA := errors.New("CA unavailable")
	tests := []struct {
		name    string
		signer  signerFunc
		wantErr func(id string) error // nil: success
	}{
		{
			name: "a Signer error reaches every caller of the batch",
			signer: func(context.Context, []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
				return nil, errCA
			},
			wantErr: func(string) error { return errCA },
		},
		{
			name: "a result missing from the answer fails only its caller",
			signer: func(_ context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
				return slices.DeleteFunc(echo(reqs), func(r *issuerv1.WorkloadResult) bool {
					return strings.HasSuffix(r.GetIssued().GetSpiffeId(), "/drop")
				}), nil
			},
			wantErr: func(id string) error {
				if strings.HasSuffix(id, "/drop") {
					return errMissingResult
				}
				return nil
			},
		},
		{
			name: "a result with another request's ID does not reach the caller",
			signer: func(_ context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
				out := echo(reqs)
				for _, r := range out {
					if strings.HasSuffix(r.GetIssued().GetSpiffeId(), "/drop") {
						r.RequestId = "not-" + r.GetRequestId()
					}
				}
				return out, nil
			},
			wantErr: func(id string) error {
				if strings.HasSuffix(id, "/drop") {
					return errMissingResult
				}
				return nil
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &Batcher{Signer: tt.signer}
			outcomes := signConcurrently(t, b, 8, func(i int) string {
				if i%3 == 0 {
					return fmt.Sprintf("spiffe://example.org/w/%d/drop", i)
				}
				return fmt.Sprintf("spiffe://example.org/w/%d", i)
			})
			for _, o := range outcomes {
				want := tt.wantErr(o.id)
				switch {
				case want == nil && o.err != nil:
					t.Errorf("Sign(%s): %v, want success", o.id, o.err)
				case want == nil && o.res.GetIssued().GetSpiffeId() != o.id:
					t.Errorf("caller of %s got the result of %s", o.id, o.res.GetIssued().GetSpiffeId())
				case want != nil && !errors.Is(o.err, want):
					t.Errorf("Sign(%s) = %v, want %v", o.id, o.err, want)
				case want != nil && o.res != nil:
					t.Errorf("Sign(%s) returned a result with its error", o.id)
				}
			}
		})
	}
}

func TestBatcherCallerCancelReturnsWithoutBlockingTheLoop(t *testing.T) {
	var mu sync.Mutex
	calls := 0
	gate := make(chan struct{})
	received := make(chan []*issuerv1.WorkloadRequest, 8)
	b := &Batcher{Signer: signerFunc(func(ctx context.Context, reqs []*issuerv1.WorkloadRequest) ([]*issuerv1.WorkloadResult, error) {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		received <- reqs
		if first { // the CA is slow to answer the first batch
			select {
			case <-gate:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		return echo(reqs), nil
	})}
	run(t, "Batcher.Start", b.Start)

	ctx, cancel := context.WithCancel(t.Context())
	slow := make(chan error, 1)
	go func() {
		_, err := b.Sign(ctx, &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/slow"})
		slow <- err
	}()
	recv(t, received, "the first batch at the CA")
	cancel()
	if err := recv(t, slow, "Sign to return after its context was cancelled"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Sign with a cancelled context = %v, want %v", err, context.Canceled)
	}

	// The loop keeps batching while the CA still holds the first batch.
	res, err := b.Sign(t.Context(), &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/next"})
	if err != nil || res.GetIssued().GetSpiffeId() != "spiffe://example.org/next" {
		t.Fatalf("Sign after a cancelled caller = %v, %v; want its own result", res, err)
	}
	// The late answer to the cancelled caller goes nowhere and blocks nothing.
	close(gate)
	res, err = b.Sign(t.Context(), &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/after"})
	if err != nil || res.GetIssued().GetSpiffeId() != "spiffe://example.org/after" {
		t.Fatalf("Sign after the late answer = %v, %v; want its own result", res, err)
	}
}

func TestBatcherSignReturnsContextErrorWhenNoLoopRuns(t *testing.T) {
	tests := []struct {
		name string
		ctx  func(t *testing.T) context.Context
		want error
	}{
		{name: "cancelled context", want: context.Canceled, ctx: func(t *testing.T) context.Context {
			ctx, cancel := context.WithCancel(t.Context())
			cancel()
			return ctx
		}},
		{name: "expired deadline", want: context.DeadlineExceeded, ctx: func(t *testing.T) context.Context {
			ctx, cancel := context.WithTimeout(t.Context(), 0)
			t.Cleanup(cancel)
			return ctx
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := &batchRecorder{}
			b := &Batcher{Signer: rec}
			if _, err := b.Sign(tt.ctx(t), &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/w"}); !errors.Is(err, tt.want) {
				t.Fatalf("Sign = %v, want %v", err, tt.want)
			}
			// The abandoned request never reaches the CA once a loop runs.
			run(t, "Batcher.Start", b.Start)
			if _, err := b.Sign(t.Context(), &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/w"}); err != nil {
				t.Fatalf("Sign with a live context: %v", err)
			}
			if got := rec.batches(); !slices.Equal(got, []int{1}) {
				t.Errorf("the CA saw batches %v, want only the live request [1]", got)
			}
		})
	}
}

func TestBatcherWindowRunsOnTheInjectedClock(t *testing.T) {
	clk := rotate.NewFakeClock(epoch)
	rec := &batchRecorder{}
	b := &Batcher{Signer: rec, Window: time.Second, Clock: clk}
	run(t, "Batcher.Start", b.Start)
	done := make(chan error, 1)
	go func() {
		_, err := b.Sign(t.Context(), &issuerv1.WorkloadRequest{SpiffeId: "spiffe://example.org/w"})
		done <- err
	}()
	ctx, cancel := context.WithTimeout(t.Context(), waitTimeout)
	defer cancel()
	if err := clk.BlockUntilContext(ctx, 1); err != nil {
		t.Fatalf("the batch window never started on the fake clock: %v", err)
	}
	clk.Advance(time.Second - time.Nanosecond)
	if got := rec.batches(); len(got) != 0 {
		t.Fatalf("batches %v sent before the window ended", got)
	}
	clk.Advance(time.Nanosecond)
	if err := recv(t, done, "Sign to return once the window ended"); err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if got := rec.batches(); !slices.Equal(got, []int{1}) {
		t.Errorf("batches %v, want [1]", got)
	}
}
