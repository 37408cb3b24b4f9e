// Package skew is the version-skew policy between the CA and its agents,
// enforced when an agent attests (docs/upgrade.md):
//
//   - the same major version;
//   - an agent never newer than the CA (minor): upgrade the CA first;
//   - an agent at most MaxMinorBehind minor versions older than the CA:
//     upgrade agents before the CA moves further ahead.
//
// Builds without a release version (go run, go test: "(devel)" or empty)
// and agents that do not report a version (those released before the
// report existed, v0.1.x) are accepted: the policy can only be enforced
// between versions it can read.
package skew

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/mayfly-pki/mayfly/internal/version"
)

// pseudo matches the Go module pseudo-versions of untagged commits
// (v0.0.0-20261206153000-abcdef123456): development builds.
var pseudo = regexp.MustCompile(`[.-]\d{14}-[0-9a-f]{12}(\+.*)?$`)

// MaxMinorBehind is how many minor versions an agent may lag the CA.
const MaxMinorBehind = 1

// ErrSkew is wrapped by every refusal of Check.
var ErrSkew = errors.New("agent version outside the CA's version-skew policy")

// Version is this binary's release version (internal/version: set at link
// time by the release build, or the build info's module version), or ""
// for a development build.
func Version() string {
	if v := version.Get().Version; v != "devel" {
		return v
	}
	return ""
}

// semver is the major and minor of a "vMAJOR.MINOR.PATCH[-pre][+build]".
type semver struct{ major, minor int }

func parse(v string) (semver, bool) {
	s, ok := strings.CutPrefix(v, "v")
	if !ok {
		return semver{}, false
	}
	s, _, _ = strings.Cut(s, "+")
	s, _, _ = strings.Cut(s, "-")
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return semver{}, false
	}
	var n [3]int
	for i, p := range parts {
		x, err := strconv.Atoi(p)
		if err != nil || x < 0 || (len(p) > 1 && p[0] == '0') {
			return semver{}, false
		}
		n[i] = x
	}
	return semver{n[0], n[1]}, true
}

// Check tells whether an agent of version agent may attest to a CA of
// version ca. The error says which side to upgrade.
func Check(ca, agent string) error {
	if agent == "" || ca == "" || pseudo.MatchString(ca) || pseudo.MatchString(agent) {
		return nil // a development build, or an agent from before the report
	}
	if agent == ca {
		return nil // the same build (a test build with its own version name)
	}
	a, ok := parse(agent)
	if !ok {
		return fmt.Errorf("%w: agent version %q is not a release version (vMAJOR.MINOR.PATCH); the CA is %s", ErrSkew, clip(agent), ca)
	}
	c, ok := parse(ca)
	if !ok {
		return nil // a CA built from an untagged commit: nothing to compare with
	}
	switch {
	case a.major != c.major:
		return fmt.Errorf("%w: agent %s, CA %s: major versions differ; follow the upgrade path in docs/upgrade.md", ErrSkew, agent, ca)
	case a.minor > c.minor:
		return fmt.Errorf("%w: agent %s is newer than CA %s: upgrade the CA first (docs/upgrade.md)", ErrSkew, agent, ca)
	case c.minor-a.minor > MaxMinorBehind:
		return fmt.Errorf("%w: agent %s is more than %d minor version behind CA %s: upgrade the agents (docs/upgrade.md)", ErrSkew, agent, MaxMinorBehind, ca)
	}
	return nil
}

// clip bounds what an agent's report puts into an error.
func clip(s string) string {
	const limit = 64
	if len(s) > limit {
		return s[:limit] + "..."
	}
	return s
}
