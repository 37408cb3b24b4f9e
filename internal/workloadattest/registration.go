package workloadattest

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"sigs.k8s.io/yaml"

	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// MaxRegistrationsFileSize bounds a registrations file.
const MaxRegistrationsFileSize = 1 << 20

// Registration maps unix selectors to a SPIFFE ID in standalone mode. In the
// file (YAML or JSON):
//
//	registrations:
//	  - spiffeID: spiffe://example.org/demo/server
//	    selectors: {uid: 1000, path: /usr/local/bin/server}
//	    dnsNames: [server.example.org]
//	    ttl: 1h
type Registration struct {
	ID        string                `json:"spiffeID"`
	Selectors RegistrationSelectors `json:"selectors"`
	DNSNames  []string              `json:"dnsNames,omitempty"`
	TTL       string                `json:"ttl,omitempty"` // Go duration; empty for the issuer's default

	// Set by ParseRegistrations from ID and TTL.
	SPIFFEID    spiffeid.ID   `json:"-"`
	TTLDuration time.Duration `json:"-"`
}

// RegistrationSelectors are the selectors of a [Registration]; at least one
// is set, and a workload matches when all that are set match. A path
// selector never stands alone: any local user can connect, fork and exec a
// registered binary whose child then holds the connection, so a path
// selector must come with a uid or gid selector.
type RegistrationSelectors struct {
	UID  *int   `json:"uid,omitempty"`
	GID  *int   `json:"gid,omitempty"`
	Path string `json:"path,omitempty"` // absolute, clean executable path
}

type registrationsFile struct {
	Registrations []Registration `json:"registrations"`
}

// ParseRegistrations parses and validates a registrations file of trust
// domain td. Errors name the field path, e.g.
// "registrations[1].selectors: at least one of uid, gid, path".
func ParseRegistrations(data []byte, td spiffeid.TrustDomain) ([]Registration, error) {
	if len(data) > MaxRegistrationsFileSize {
		return nil, fmt.Errorf("registrations: file is larger than %d bytes", MaxRegistrationsFileSize)
	}
	if td.IsZero() {
		return nil, errors.New("registrations: no trust domain configured")
	}
	if len(bytes.TrimSpace(data)) == 0 {
		// A truncated file must not revoke every workload; an empty set is
		// written as "registrations: []".
		return nil, errors.New("registrations: empty file")
	}
	var f registrationsFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("registrations: %w", err)
	}
	var errs []error
	for i := range f.Registrations {
		if err := validateRegistration(&f.Registrations[i], td); err != nil {
			errs = append(errs, fmt.Errorf("registrations[%d].%w", i, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return f.Registrations, nil
}

func validateRegistration(r *Registration, td spiffeid.TrustDomain) error {
	id, err := pki.ParseID(r.ID)
	if err != nil {
		return fmt.Errorf("spiffeID: %w", err)
	}
	if !id.MemberOf(td) {
		return fmt.Errorf("spiffeID: %s is not in trust domain %s", id, td)
	}
	if id.Path() == "" {
		return fmt.Errorf("spiffeID: %s has no path: a trust domain ID is not a workload identity", id)
	}
	r.SPIFFEID = id
	s := r.Selectors
	if s.UID == nil && s.GID == nil && s.Path == "" {
		return errors.New("selectors: at least one of uid, gid, path")
	}
	if s.Path != "" && s.UID == nil && s.GID == nil {
		return fmt.Errorf("selectors: %s: a path selector needs a uid or gid selector too (any local user can exec %s)", id, s.Path)
	}
	if s.UID != nil && (*s.UID < 0 || *s.UID >= math.MaxUint32) {
		return fmt.Errorf("selectors.uid: %d is not a valid uid", *s.UID)
	}
	if s.GID != nil && (*s.GID < 0 || *s.GID >= math.MaxUint32) {
		return fmt.Errorf("selectors.gid: %d is not a valid gid", *s.GID)
	}
	if s.Path != "" && (!filepath.IsAbs(s.Path) || filepath.Clean(s.Path) != s.Path) {
		return fmt.Errorf("selectors.path: %q must be an absolute, clean path", s.Path)
	}
	for j, name := range r.DNSNames {
		if err := pki.CheckDNSName(name); err != nil {
			return fmt.Errorf("dnsNames[%d]: %w", j, err)
		}
	}
	if r.TTL != "" {
		d, err := time.ParseDuration(r.TTL)
		if err != nil {
			return fmt.Errorf("ttl: %w", err)
		}
		if d <= 0 {
			return fmt.Errorf("ttl: %s must be positive", r.TTL)
		}
		r.TTLDuration = d
	}
	return nil
}

// Match returns the registrations whose selectors all match s, in file
// order. A registration without selectors, or with a path selector alone,
// matches nothing.
func Match(regs []Registration, s Selectors) []Registration {
	var out []Registration
	for _, r := range regs {
		if matches(r.Selectors, s) {
			out = append(out, r)
		}
	}
	return out
}

func matches(want RegistrationSelectors, got Selectors) bool {
	if want.UID == nil && want.GID == nil {
		return false // no selector, or a path alone
	}
	if want.UID != nil && (got.UID == nil || *got.UID != *want.UID) {
		return false
	}
	if want.GID != nil && (got.GID == nil || *got.GID != *want.GID) {
		return false
	}
	if want.Path != "" && got.Path != want.Path {
		return false
	}
	return true
}
