package config_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/yaml"

	"github.com/mayfly-pki/mayfly/internal/config"
)

type holder struct {
	TTL config.Duration `json:"ttl,omitempty"`
}

func TestDurationJSONRoundTrip(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{`"90s"`, 90 * time.Second},
		{`"1h30m"`, 90 * time.Minute},
		{`"48h"`, 48 * time.Hour},
		{`"250ms"`, 250 * time.Millisecond},
		{`"0s"`, 0},
		{`"-5m"`, -5 * time.Minute},
	} {
		t.Run(tc.in, func(t *testing.T) {
			t.Parallel()
			var d config.Duration
			if err := json.Unmarshal([]byte(tc.in), &d); err != nil {
				t.Fatalf("Unmarshal(%s): %v", tc.in, err)
			}
			if d.Duration != tc.want {
				t.Fatalf("Unmarshal(%s) = %s, want %s", tc.in, d.Duration, tc.want)
			}
			out, err := json.Marshal(d)
			if err != nil {
				t.Fatalf("Marshal: %v", err)
			}
			if want := `"` + tc.want.String() + `"`; string(out) != want {
				t.Fatalf("Marshal = %s, want %s", out, want)
			}
			var back config.Duration
			if err := json.Unmarshal(out, &back); err != nil {
				t.Fatalf("Unmarshal(Marshal) = %v", err)
			}
			if back != d {
				t.Fatalf("round trip = %s, want %s", back.Duration, d.Duration)
			}
		})
	}
}

func TestDurationInStruct(t *testing.T) {
	t.Parallel()
	out, err := json.Marshal(holder{TTL: config.Duration{Duration: 2 * time.Hour}})
	if err != nil {
		t.Fatal(err)
	}
	if want := `{"ttl":"2h0m0s"}`; string(out) != want {
		t.Fatalf("Marshal = %s, want %s", out, want)
	}
	var h holder
	if err := yaml.UnmarshalStrict([]byte("ttl: 15m\n"), &h); err != nil {
		t.Fatalf("YAML: %v", err)
	}
	if h.TTL.Duration != 15*time.Minute {
		t.Fatalf("YAML ttl = %s, want 15m", h.TTL.Duration)
	}
}

func TestDurationNullKeepsValue(t *testing.T) {
	t.Parallel()
	// An empty YAML value ("ttl:") is JSON null: it means "not set", so
	// the default applies, as for every other field type.
	h := holder{TTL: config.Duration{Duration: time.Minute}}
	if err := json.Unmarshal([]byte(`{"ttl":null}`), &h); err != nil {
		t.Fatalf("null: %v", err)
	}
	if h.TTL.Duration != time.Minute {
		t.Fatalf("null changed the value to %s", h.TTL.Duration)
	}
	var y holder
	if err := yaml.UnmarshalStrict([]byte("ttl:\n"), &y); err != nil {
		t.Fatalf("empty YAML value: %v", err)
	}
	if got := y.TTL.Or(time.Hour); got != time.Hour {
		t.Fatalf("empty YAML value: Or(1h) = %s, want the default", got)
	}
}

func TestDurationRejectsBadValues(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in, wantErr string
	}{
		{"number", `3600`, `want a duration string like "1h30m", got 3600`},
		{"number_in_string_without_unit", `"3600"`, "missing unit"},
		{"unknown_unit", `"5y"`, "unknown unit"},
		{"garbage", `"soon"`, "invalid duration"},
		{"empty_string", `""`, "invalid duration"},
		{"bool", `true`, "want a duration string"},
		{"object", `{"h":1}`, "want a duration string"},
		{"array", `["1h"]`, "want a duration string"},
		{"overflow", `"9999999999h"`, "invalid duration"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := config.Duration{Duration: time.Minute}
			err := json.Unmarshal([]byte(tc.in), &d)
			if err == nil {
				t.Fatalf("Unmarshal(%s) = %s, want an error", tc.in, d.Duration)
			}
			if !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Unmarshal(%s) error = %q, want it to contain %q", tc.in, err, tc.wantErr)
			}
			if d.Duration != time.Minute {
				t.Fatalf("a failed Unmarshal changed the value to %s", d.Duration)
			}
		})
	}
}

func TestDurationOr(t *testing.T) {
	t.Parallel()
	if got := (config.Duration{}).Or(time.Hour); got != time.Hour {
		t.Errorf("zero.Or(1h) = %s, want 1h", got)
	}
	if got := (config.Duration{Duration: time.Minute}).Or(time.Hour); got != time.Minute {
		t.Errorf("1m.Or(1h) = %s, want 1m", got)
	}
}
