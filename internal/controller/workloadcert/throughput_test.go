package workloadcert_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mayflyv1alpha1 "github.com/mayfly-pki/mayfly/api/mayfly/v1alpha1"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// TestThroughput measures how fast the controller brings new
// WorkloadCertificates to Ready against envtest: MAYFLY_PERF_N objects
// (default 1000) are created by 16 writers, reconciled by
// MAYFLY_PERF_WORKERS workers (default: the controller's default), and the clock runs from the
// first create until every object is Ready. It reports objects/s. The API
// server, etcd and the controller share this machine, so the figure is a
// lower bound for the controller alone.
//
//	MAYFLY_PERF=1 KUBEBUILDER_ASSETS=... go test -run TestThroughput -v ./internal/controller/workloadcert/
func TestThroughput(t *testing.T) {
	if os.Getenv("MAYFLY_PERF") != "1" {
		t.Skip("throughput measurement: set MAYFLY_PERF=1 to run it (about 30s)")
	}
	n := 1000
	if s := os.Getenv("MAYFLY_PERF_N"); s != "" {
		var err error
		if n, err = strconv.Atoi(s); err != nil || n <= 0 {
			t.Fatalf("MAYFLY_PERF_N=%q: want a positive integer", s)
		}
	}
	// The CA's own client settings are its wiring's business; here the
	// client-side rate limit is lifted so that the measurement shows the
	// controller and the API server, not client-go's default 5 QPS.
	workers := 0 // the controller's default
	if s := os.Getenv("MAYFLY_PERF_WORKERS"); s != "" {
		var err error
		if workers, err = strconv.Atoi(s); err != nil || workers <= 0 {
			t.Fatalf("MAYFLY_PERF_WORKERS=%q: want a positive integer", s)
		}
	}
	e := start(t, nil, func(c *rest.Config) { c.QPS, c.Burst = 1000, 2000 }, workers)
	ctx := context.Background()
	e.create(t, namespace("perf"), serviceAccount("perf", "web"))

	begin := time.Now()
	var (
		wg      sync.WaitGroup
		next    atomic.Int64
		errOnce sync.Once
		werr    error
	)
	for range 16 {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				wc := workloadCert("perf", fmt.Sprintf("wc-%04d", i), "web", fmt.Sprintf("wc-%04d-tls", i))
				if err := e.cl.Create(ctx, wc); err != nil {
					errOnce.Do(func() { werr = err })
					return
				}
			}
		})
	}
	wg.Wait()
	if werr != nil {
		t.Fatalf("create: %v", werr)
	}
	created := time.Since(begin)

	wait.Until(t, fmt.Sprintf("all %d WorkloadCertificates are Ready", n), 5*time.Minute, 100*time.Millisecond, func(context.Context) (bool, string) {
		var list mayflyv1alpha1.WorkloadCertificateList
		if err := e.cl.List(ctx, &list, client.InNamespace("perf")); err != nil {
			return false, err.Error()
		}
		ready := 0
		for i := range list.Items {
			if meta.IsStatusConditionTrue(list.Items[i].Status.Conditions, mayflyv1alpha1.ConditionReady) {
				ready++
			}
		}
		return ready == n, fmt.Sprintf("%d Ready", ready)
	})
	total := time.Since(begin)
	rate := float64(n) / total.Seconds()
	t.Logf("%d WorkloadCertificates: created in %s, all Ready after %s: %.0f objects/s (issued counter %v)",
		n, created.Round(time.Millisecond), total.Round(time.Millisecond), rate, e.counter(t, "issued"))
	if got := e.counter(t, "issued"); got < float64(n) {
		t.Errorf("issued counter %v, want at least %d", got, n)
	}
}
