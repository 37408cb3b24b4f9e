package memlimit

import (
	"errors"
	"math"
	"runtime/debug"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     int64
	}{
		{"downward_API_bytes", "536870912", 536870912 / 100 * 90},
		{"binary_quantity", "512Mi", 536870912 / 100 * 90},
		{"decimal_quantity", "1G", 900_000_000},
		{"smallest", "16Mi", 16 << 20 / 100 * 90},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if err != nil || got != tc.want {
				t.Fatalf("Parse(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
			}
		})
	}
}

func TestParse_refusesBadInput(t *testing.T) {
	for _, tc := range []struct{ name, in, says string }{
		{"empty", "", "empty"},
		{"not_a_number", "lots", "not a byte count"},
		{"negative", "-512Mi", "below 16Mi"},
		{"zero", "0", "below 16Mi"},
		{"unit_forgotten", "512", "needs its unit"},
		{"fraction_of_a_byte", "0.5", "below 16Mi"},
		{"too_large", "9Ei", "too large"},
		{"overflows_the_percentage", "92233720368547759", "too large"},
		{"long", strings.Repeat("9", 65), "characters"},
		{"spaces", " 512Mi", "not a byte count"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.in)
			if !errors.Is(err, ErrBadLimit) || !strings.Contains(err.Error(), tc.says) || !strings.Contains(err.Error(), EnvVar) {
				t.Fatalf("Parse(%q) = %d, %v; want an error naming %s saying %q", tc.in, got, err, EnvVar, tc.says)
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"536870912", "512Mi", "1G", "", "-1", "9Ei", "1e3", "0x10"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := Parse(s)
		if err == nil && (got < minLimit/100*Percent || got > math.MaxInt64/100*Percent) {
			t.Fatalf("Parse(%q) = %d: outside the accepted range", s, got)
		}
	})
}

func TestApply(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(before) })
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	t.Run("sets 90% of the container limit", func(t *testing.T) {
		got, err := Apply(env(map[string]string{EnvVar: "536870912"}))
		if err != nil || got != 536870912/100*90 {
			t.Fatalf("Apply = %d, %v", got, err)
		}
		if cur := debug.SetMemoryLimit(-1); cur != got {
			t.Fatalf("runtime limit %d, want %d", cur, got)
		}
	})
	debug.SetMemoryLimit(before)
	t.Run("GOMEMLIMIT wins", func(t *testing.T) {
		got, err := Apply(env(map[string]string{EnvVar: "536870912", "GOMEMLIMIT": "300MiB"}))
		if err != nil || got != 0 || debug.SetMemoryLimit(-1) != before {
			t.Fatalf("Apply = %d, %v; runtime limit changed", got, err)
		}
	})
	t.Run("unset sets nothing", func(t *testing.T) {
		got, err := Apply(env(nil))
		if err != nil || got != 0 || debug.SetMemoryLimit(-1) != before {
			t.Fatalf("Apply = %d, %v; runtime limit changed", got, err)
		}
	})
	t.Run("bad value is an error and sets nothing", func(t *testing.T) {
		got, err := Apply(env(map[string]string{EnvVar: "512"}))
		if !errors.Is(err, ErrBadLimit) || got != 0 || debug.SetMemoryLimit(-1) != before {
			t.Fatalf("Apply = %d, %v; runtime limit changed", got, err)
		}
	})
}
