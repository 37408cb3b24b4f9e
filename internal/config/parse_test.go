package config_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/config"
)

func TestHealthAddress(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, in, want, wantErr string
	}{
		{name: "empty_is_the_default", in: "", want: "127.0.0.1:9443"},
		{name: "off_disables", in: "off", want: ""},
		{name: "host_port_kept", in: "0.0.0.0:9000", want: "0.0.0.0:9000"},
		{name: "missing_port_refused", in: "localhost", wantErr: "healthAddress: "},
		{name: "garbage_refused", in: "::::", wantErr: "healthAddress: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := config.HealthAddress(tc.in, "127.0.0.1:9443")
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("HealthAddress(%q) = %q, %v; want an error starting %q", tc.in, got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("HealthAddress(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
			}
		})
	}
}

type fileForm struct {
	Name string `json:"name"`
}

func TestParse(t *testing.T) {
	t.Parallel()
	errInvalid := errors.New("name: required")
	validate := func(f *fileForm) (string, error) {
		if f.Name == "" {
			return "", errInvalid
		}
		return "validated " + f.Name, nil
	}
	for _, tc := range []struct {
		name, raw, want, wantErr string
	}{
		{name: "validates_the_decoded_form", raw: "name: x\n", want: "validated x"},
		{name: "validation_error_returned", raw: "name: \"\"\n", wantErr: "name: required"},
		{name: "unknown_field_refused", raw: "name: x\nunknown: y\n", wantErr: `parsing test config: `},
		{name: "empty_refused", raw: "  \n", wantErr: "config is empty"},
		{name: "not_yaml_refused", raw: "name: [\n", wantErr: "parsing test config: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := config.Parse([]byte(tc.raw), "test config", validate)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("Parse = %q, %v; want an error starting %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("Parse = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
