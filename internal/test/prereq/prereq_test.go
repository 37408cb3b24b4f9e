package prereq_test

import (
	"runtime"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/test/prereq"
)

// recorder is a testing.TB that records how a test ended and, as testing
// does, ends the goroutine that called Fatalf or Skipf.
type recorder struct {
	testing.TB
	fatal, skip string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) {
	r.fatal = format
	runtime.Goexit()
}

func (r *recorder) Skipf(format string, args ...any) {
	r.skip = format
	runtime.Goexit()
}

func TestEnv(t *testing.T) {
	for _, tc := range []struct {
		name, value, ci string
		want            string
		fatal, skip     bool
	}{
		{name: "set_is_returned", value: "/opt/tool", want: "/opt/tool"},
		{name: "set_is_returned_in_ci", value: "/opt/tool", ci: "true", want: "/opt/tool"},
		{name: "unset_skips_outside_ci", skip: true},
		{name: "unset_fails_in_ci", ci: "true", fatal: true},
		{name: "ci_other_than_true_skips", ci: "1", skip: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("MAYFLY_PREREQ_TEST", tc.value)
			t.Setenv("CI", tc.ci)
			r := &recorder{TB: t}
			var got string
			done := make(chan struct{})
			go func() {
				defer close(done)
				got = prereq.Env(r, "MAYFLY_PREREQ_TEST", "run `make test`")
			}()
			<-done
			if got != tc.want {
				t.Errorf("Env = %q, want %q", got, tc.want)
			}
			if (r.fatal != "") != tc.fatal || (r.skip != "") != tc.skip {
				t.Errorf("fatal %q, skip %q; want fatal %v, skip %v", r.fatal, r.skip, tc.fatal, tc.skip)
			}
		})
	}
}
