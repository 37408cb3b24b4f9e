package agent

import (
	"cmp"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/mayfly-pki/mayfly/internal/workloadattest"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// Registrations keeps one pinned identity per registration of a standalone
// agent, so that files in WriteDir stay fresh and fetches are answered
// from memory, and tells the Workload API which of them a process gets.
type Registrations struct {
	Manager *Manager
	// DefaultTTL applies to registrations without a ttl.
	DefaultTTL time.Duration
	KeyType    pki.KeyType
	// WriteDir, if set, gets one subdirectory of PEM files per registration.
	WriteDir string
	// JWTFiles, if set with WriteDir, keeps a JWT-SVID in each of those
	// subdirectories (jwt.token).
	JWTFiles *JWTFiles
	Logger   *slog.Logger

	mu       sync.Mutex
	regs     []workloadattest.Registration
	current  map[string]bool
	usesPath bool
}

// UsesPath reports whether a registration in force selects by executable
// path (workloadattest.UnixAttestor.PathSelectors): without one, a
// caller's path decides nothing and is not read.
func (r *Registrations) UsesPath() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.usesPath
}

// Apply makes regs the registrations in force: it creates the identities
// of new ones and drops those of registrations that are gone.
func (r *Registrations) Apply(regs []workloadattest.Registration) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := CheckWriteDirs(r.WriteDir, regs); err != nil {
		return err
	}
	next := map[string]bool{}
	var jwtSpecs []Spec
	jwtDirs := map[string]string{}
	for _, reg := range regs {
		var sinks []rotate.Sink
		if r.WriteDir != "" {
			fs, err := rotate.NewFileSink(WriteDir(r.WriteDir, reg.SPIFFEID), rotate.FileSinkOptions{})
			if err != nil {
				return fmt.Errorf("writeDir: %w", err)
			}
			sinks = append(sinks, fs)
		}
		spec := r.spec(reg, sinks)
		if len(sinks) > 0 {
			spec.Path = PathWriteDir
		}
		next[spec.Key] = true
		if r.WriteDir != "" && r.JWTFiles != nil {
			jwtSpecs = append(jwtSpecs, r.spec(reg, nil))
			jwtDirs[spec.Key] = WriteDir(r.WriteDir, reg.SPIFFEID)
		}
		if !r.current[spec.Key] {
			r.Manager.Ensure(spec)
		}
	}
	for k := range r.current {
		if !next[k] {
			r.Manager.Remove(k)
			if r.Logger != nil {
				r.Logger.Info("registration removed; identity dropped", "spiffe_id", k)
			}
		}
	}
	if r.JWTFiles != nil {
		r.JWTFiles.Set(jwtSpecs, jwtDirs)
	}
	r.regs = regs
	r.current = next
	r.usesPath = slices.ContainsFunc(regs, func(reg workloadattest.Registration) bool { return reg.Selectors.Path != "" })
	return nil
}

// Hold returns the identities of the registrations sel matches; release
// does nothing (registered identities are pinned).
func (r *Registrations) Hold(sel workloadattest.Selectors) ([]Spec, func()) {
	r.mu.Lock()
	regs := r.regs
	r.mu.Unlock()
	var out []Spec
	for _, reg := range workloadattest.Match(regs, sel) {
		out = append(out, r.spec(reg, nil))
	}
	return out, func() {}
}

func (r *Registrations) spec(reg workloadattest.Registration, sinks []rotate.Sink) Spec {
	ttl := cmp.Or(reg.TTLDuration, r.DefaultTTL)
	id := reg.SPIFFEID.String()
	return Spec{Key: id, SpiffeID: id, DNSNames: reg.DNSNames, TTL: ttl, KeyType: r.KeyType, Sinks: sinks, Pinned: true}
}

// PodIdentities tells the Workload API the identity of a process in a pod
// (Kubernetes mode): its ServiceAccount's, one certificate per
// ServiceAccount on the node, authorized by the pods in Pods.
type PodIdentities struct {
	Pods    *PodIndex
	TTL     time.Duration
	KeyType pki.KeyType
}

// Hold returns the identity of sel's ServiceAccount and records its pod
// until release.
func (p *PodIdentities) Hold(sel workloadattest.Selectors) ([]Spec, func()) {
	if sel.Namespace == "" || sel.ServiceAccount == "" || sel.PodUID == "" {
		return nil, func() {}
	}
	key := sel.Namespace + "/" + sel.ServiceAccount
	release := p.Pods.Add(key, sel.PodUID, nil)
	return []Spec{p.Pods.spec(Spec{Key: key, TTL: p.TTL, KeyType: p.KeyType})}, release
}
