package background

import (
	"context"
	"errors"
	"testing"
)

// recorder is a testing.TB that keeps the test's cleanups and errors.
type recorder struct {
	testing.TB
	cleanups []func()
	errs     []string
}

func (r *recorder) Helper()                   {}
func (r *recorder) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *recorder) Errorf(f string, a ...any) { r.errs = append(r.errs, f) }

func TestRunStopsAtCleanup(t *testing.T) {
	for _, tc := range []struct {
		name     string
		ret      error
		wantErrs int
	}{
		{name: "clean_stop", ret: nil, wantErrs: 0},
		{name: "error_reported", ret: errors.New("boom"), wantErrs: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &recorder{TB: t}
			started := make(chan struct{})
			ctx := Run(r, "loop", func(ctx context.Context) error {
				close(started)
				<-ctx.Done()
				return tc.ret
			})
			<-started
			if ctx.Err() != nil {
				t.Fatal("the context is done before the test ends")
			}
			for _, f := range r.cleanups {
				f()
			}
			if ctx.Err() == nil {
				t.Error("the context is not done after cleanup")
			}
			if len(r.errs) != tc.wantErrs {
				t.Errorf("errors %q, want %d", r.errs, tc.wantErrs)
			}
		})
	}
}
