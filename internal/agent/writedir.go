package agent

import (
	"fmt"
	"path/filepath"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/mayfly-pki/mayfly/internal/workloadattest"
)

// maxNameLength is the longest file name Linux file systems take (NAME_MAX).
const maxNameLength = 255

// WriteDir returns the directory under root that receives the certificate,
// key and bundle of id (standalone writeDir): root followed by the segments
// of id's path, so spiffe://example.org/demo/web writes to root/demo/web.
//
// The mapping is injective: SPIFFE path segments are never empty, "." or
// "..", and hold only [A-Za-z0-9._-], so two IDs share a directory only when
// they are equal. One directory can still lie inside another's (demo/a and
// demo/a/b); CheckWriteDirs refuses such sets.
func WriteDir(root string, id spiffeid.ID) string {
	return filepath.Join(root, filepath.FromSlash(strings.TrimPrefix(id.Path(), "/")))
}

// CheckWriteDirs refuses registrations whose directories under the writeDir
// root would overlap (nothing to check when root is empty): the directory of one holding the directory of another among its
// files (spiffe://td/demo/a and spiffe://td/demo/a/b), or a path segment
// too long for a file name. The error names both registrations. Several
// registrations of one SPIFFE ID share one identity and one directory;
// that is not an overlap.
func CheckWriteDirs(root string, regs []workloadattest.Registration) error {
	if root == "" {
		return nil
	}
	first := map[string]int{} // ID path -> index of its first registration
	for i, r := range regs {
		p := r.SPIFFEID.Path()
		if p == "" {
			return fmt.Errorf("writeDir: registrations[%d] (%s): a trust domain ID has no directory", i, r.SPIFFEID)
		}
		for _, seg := range strings.Split(strings.TrimPrefix(p, "/"), "/") {
			if len(seg) > maxNameLength {
				return fmt.Errorf("writeDir: registrations[%d] (%s): path segment of %d bytes exceeds the %d of a file name", i, r.SPIFFEID, len(seg), maxNameLength)
			}
		}
		if _, ok := first[p]; !ok {
			first[p] = i
		}
	}
	for i, r := range regs {
		p := r.SPIFFEID.Path()
		if first[p] != i {
			continue
		}
		// Every proper ancestor of p, at segment boundaries.
		for j := strings.LastIndexByte(p, '/'); j > 0; j = strings.LastIndexByte(p[:j], '/') {
			if k, ok := first[p[:j]]; ok {
				return fmt.Errorf("writeDir: registrations[%d] (%s) and registrations[%d] (%s): the directory %s would lie inside the directory %s of the other; give them IDs where neither path is a prefix of the other",
					k, regs[k].SPIFFEID, i, r.SPIFFEID, strings.TrimPrefix(p, "/"), strings.TrimPrefix(p[:j], "/"))
			}
		}
	}
	return nil
}
