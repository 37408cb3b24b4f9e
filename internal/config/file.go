package config

import (
	"bytes"
	"errors"
	"fmt"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// APIVersion is the version of every mayfly configuration file.
const APIVersion = "mayfly.dev/v1alpha1"

// MaxFileSize bounds a configuration file.
const MaxFileSize = 1 << 20

// Header is the apiVersion/kind pair at the top of a configuration file;
// both are optional, but when present they must be ours.
type Header struct {
	APIVersion string `json:"apiVersion,omitempty"`
	Kind       string `json:"kind,omitempty"`
}

// Check names the field that does not fit kind.
func (h Header) Check(kind string) error {
	if h.APIVersion != "" && h.APIVersion != APIVersion {
		return fmt.Errorf("apiVersion: want %s, got %q", APIVersion, h.APIVersion)
	}
	if h.Kind != "" && h.Kind != kind {
		return fmt.Errorf("kind: want %s, got %q", kind, h.Kind)
	}
	return nil
}

// DecodeStrict decodes a YAML (or JSON) configuration into out: bounded in
// size, an empty file refused, and unknown fields are errors (a typo must
// not silently fall back to a default). what names the file's kind in
// errors ("CA config").
func DecodeStrict(raw []byte, what string, out any) error {
	if len(raw) > MaxFileSize {
		return fmt.Errorf("config is %d bytes, more than %d", len(raw), MaxFileSize)
	}
	if len(bytes.TrimSpace(raw)) == 0 {
		return errors.New("config is empty")
	}
	if err := yaml.UnmarshalStrict(raw, out); err != nil {
		return fmt.Errorf("parsing %s: %w", what, err)
	}
	return nil
}

// TrustDomain parses the required trustDomain field.
func TrustDomain(s string) (spiffeid.TrustDomain, error) {
	if s == "" {
		return spiffeid.TrustDomain{}, errors.New("trustDomain: required (e.g. example.org)")
	}
	td, err := pki.ParseTrustDomain(s)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("trustDomain: %w", err)
	}
	return td, nil
}

// Identify starts every configuration's validation: the header must fit
// kind, and the required trustDomain field must parse.
func Identify(h Header, kind, trustDomain string) (spiffeid.TrustDomain, error) {
	if err := h.Check(kind); err != nil {
		return spiffeid.TrustDomain{}, err
	}
	return TrustDomain(trustDomain)
}

// OrDefault returns s, or def when s is empty.
func OrDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Load reads the configuration file at path and parses it with parse;
// errors name the file. what names the file's kind ("CA config"). It reads
// only a regular file of at most MaxFileSize bytes, so a huge file (or a
// device such as /dev/zero) is refused without being read into memory.
func Load[T any](path, what string, parse func([]byte) (T, error)) (T, error) {
	var zero T
	raw, err := readlimit.File(path, MaxFileSize)
	if err != nil {
		return zero, fmt.Errorf("reading %s: %w", what, err)
	}
	v, err := parse(raw)
	if err != nil {
		return zero, fmt.Errorf("%s: %w", path, err)
	}
	return v, nil
}

// Parse decodes raw strictly (see DecodeStrict) into the file form F and
// returns what validate makes of it: the runtime form C.
func Parse[F, C any](raw []byte, what string, validate func(*F) (C, error)) (C, error) {
	var fc F
	if err := DecodeStrict(raw, what, &fc); err != nil {
		var zero C
		return zero, err
	}
	return validate(&fc)
}

// HealthAddress validates the healthAddress field: def when empty, "" (no
// health server) when "off", otherwise a host:port.
func HealthAddress(s, def string) (string, error) {
	switch s = OrDefault(s, def); s {
	case "off":
		return "", nil
	default:
		if _, _, err := net.SplitHostPort(s); err != nil {
			return "", fmt.Errorf("healthAddress: %w", err)
		}
		return s, nil
	}
}
