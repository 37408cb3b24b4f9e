// Package memlimit sets the Go runtime's soft memory limit below the
// container's memory limit.
//
// The Helm chart hands a container its memory limit in bytes through the
// downward API (resourceFieldRef limits.memory) as MAYFLY_MEMORY_LIMIT.
// Apply sets the runtime's limit to 90% of it, so the garbage collector
// works harder as the process nears the limit instead of letting the heap
// grow to twice its live size and the kernel kill the container. Go counts
// only its own memory against the limit (not what the kernel adds, nor
// pages freed but not yet returned): the other 10% is for those.
// GOMEMLIMIT, when set, wins: the runtime has already applied it.
package memlimit

import (
	"errors"
	"fmt"
	"math"
	"runtime/debug"

	"k8s.io/apimachinery/pkg/api/resource"
)

// EnvVar names the container's memory limit (bytes, or a Kubernetes
// quantity such as 512Mi).
const EnvVar = "MAYFLY_MEMORY_LIMIT"

// Percent is the share of the container's limit given to the Go runtime.
const Percent = 90

// minLimit is the smallest container limit accepted: below it a Go
// program of this size cannot run, and the value is more likely a unit
// mistake (512 for 512Mi) than a limit.
const minLimit = 16 << 20

// ErrBadLimit is wrapped by every error about the value of EnvVar.
var ErrBadLimit = errors.New("memlimit: bad " + EnvVar)

// Parse returns the Go memory limit for a container limit written as
// bytes or as a Kubernetes quantity: Percent of it.
func Parse(v string) (int64, error) {
	if v == "" {
		return 0, fmt.Errorf("%w: empty", ErrBadLimit)
	}
	if len(v) > 64 {
		return 0, fmt.Errorf("%w: %d characters, want a byte count such as 536870912 or a quantity such as 512Mi", ErrBadLimit, len(v))
	}
	q, err := resource.ParseQuantity(v)
	if err != nil {
		return 0, fmt.Errorf("%w: %q is not a byte count such as 536870912 or a quantity such as 512Mi", ErrBadLimit, v)
	}
	switch {
	case q.CmpInt64(math.MaxInt64/100) > 0:
		return 0, fmt.Errorf("%w: %q is too large", ErrBadLimit, v)
	case q.CmpInt64(minLimit) < 0:
		return 0, fmt.Errorf("%w: %q is below 16Mi (a quantity needs its unit: 512Mi, not 512)", ErrBadLimit, v)
	}
	return q.Value() / 100 * Percent, nil
}

// Apply sets the runtime's soft memory limit from getenv(EnvVar) unless
// GOMEMLIMIT is set or EnvVar is not. It returns the limit it set, 0 when
// it set none.
func Apply(getenv func(string) string) (int64, error) {
	v := getenv(EnvVar)
	if v == "" || getenv("GOMEMLIMIT") != "" {
		return 0, nil
	}
	limit, err := Parse(v)
	if err != nil {
		return 0, err
	}
	debug.SetMemoryLimit(limit)
	return limit, nil
}
