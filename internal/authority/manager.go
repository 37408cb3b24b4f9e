package authority

import (
	"context"
	"crypto"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"iter"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/mayfly-pki/mayfly/pkg/notify"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// ErrNotReady is wrapped by Current's error while no valid state is loaded.
var ErrNotReady = errors.New("CA is not ready")

// Marker remembers, outside the state itself, that this CA has issued. It
// tells a first start from state that was deleted: a deleted state must
// never be silently replaced by a new root. The published trust bundle
// serves: a ConfigMap in Kubernetes, a file next to the state standalone.
type Marker interface {
	// Marked reports whether a bundle was ever published.
	Marked(ctx context.Context) (bool, error)
	// Mark publishes the current bundle (PEM).
	Mark(ctx context.Context, bundlePEM []byte) error
}

// Loaded is an immutable view of the state in force: what every replica
// signs with.
type Loaded struct {
	State   *State
	Version string
	// BundleVersion is a content hash of the trust bundle.
	BundleVersion string
	Bundle        []*x509.Certificate
	Authority     pki.Authority
	// Taints are the tainted keys issuance moved off, announced with the
	// bundle (State.ActiveTaints), and TaintReissueWindow the window the
	// holders of credentials chaining to them have to re-issue.
	Taints             []Taint
	TaintReissueWindow time.Duration
	// JWTKeys are the published JWT keys by kid (State.JWTKeys), part of
	// BundleVersion; JWTSigner signs JWT-SVIDs (nil until the state has a
	// JWT key).
	JWTKeys   map[string]crypto.PublicKey
	JWTSigner *JWTSigner
}

// ManagerOptions configure a Manager.
type ManagerOptions struct {
	Store  Store
	Minter *Minter
	Marker Marker
	Clock  rotate.Clock
	Logger *slog.Logger
	// Registerer receives the authority metrics; nil registers nothing.
	Registerer prometheus.Registerer
	// AllowRebootstrap lets Load mint a new root although a bundle was
	// published before (the state was deleted or is corrupt). Every agent
	// and workload must then be given the new bundle.
	AllowRebootstrap bool
	// Acks reports whether every node that should hold the current bundle
	// acknowledged it (internal/adoption, across replicas).
	Acks BundleAcks
}

// Manager loads the CA state, bootstraps it on first start, rotates keys
// when the plan says so, and hands out the signing authority. Any number of
// replicas may run managers on one store; the store's compare-and-swap lets
// only one of them write each rotation, and the others pick it up on Reload.
type Manager struct {
	opts    ManagerOptions
	current atomic.Pointer[Loaded]
	errMu   sync.Mutex
	err     error
	kick    chan struct{}

	changed notify.Notifier // signalled when the state in force changes

	ready     prometheus.Gauge
	expiry    *prometheus.GaugeVec
	rotations *prometheus.CounterVec
	failing   prometheus.Gauge

	failMu  sync.Mutex
	failure RotationFailure // zero while rotation succeeds
}

// RotationFailure is why the rotation loop has been failing (an upstream
// that is down or answers with an unusable certificate, a store that
// refuses writes): the intermediate in service stays until a retry
// succeeds.
type RotationFailure struct {
	// Failures counts the consecutive failed attempts (0: not failing).
	Failures int
	// Since is the first failure of the run, Last the latest.
	Since, Last time.Time
	// Step is the step that failed, Error what went wrong.
	Step  Step
	Error string
	// RetryAt is when the loop tries again.
	RetryAt time.Time
}

// Backoff of a failing rotation: the wait doubles from retryMin up to
// retryMax, so an upstream that is down is asked a few times an hour, not
// hammered, and a recovered one is used within minutes.
const (
	retryMin = 10 * time.Second
	retryMax = 5 * time.Minute
)

// retryAfter is the wait after the n-th consecutive failure (n >= 1).
func retryAfter(n int) time.Duration {
	d := retryMin
	for i := 1; i < n && d < retryMax; i++ {
		d *= 2
	}
	return min(d, retryMax)
}

// NewManager returns a Manager; call Load before use.
func NewManager(opts ManagerOptions) *Manager {
	if opts.Clock == nil {
		opts.Clock = rotate.RealClock{}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	m := &Manager{
		opts: opts,
		kick: make(chan struct{}, 1),
		ready: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mayfly_ca_ready",
			Help: "1 when the CA holds a valid signing authority, 0 when it refuses to issue (state missing or corrupt).",
		}),
		expiry: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mayfly_ca_authority_expiry_timestamp_seconds",
			Help: "notAfter of each CA certificate as a Unix timestamp, by role (root, intermediate) and slot (current, next, retired).",
		}, []string{"role", "slot"}),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_ca_authority_rotations_total",
			Help: "Rotation steps applied by this replica, by step and result.",
		}, []string{"step", "result"}),
		failing: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mayfly_ca_rotation_consecutive_failures",
			Help: "Consecutive failed attempts of the rotation loop (an upstream down or answering with an unusable certificate); 0 while rotation works. The intermediate in service stays until an attempt succeeds.",
		}),
	}
	m.err = fmt.Errorf("%w: state not loaded yet", ErrNotReady)
	if opts.Registerer != nil {
		opts.Registerer.MustRegister(m.ready, m.expiry, m.rotations, m.failing)
	}
	return m
}

// Current returns the state in force, or an error saying why the CA does
// not issue.
func (m *Manager) Current() (*Loaded, error) {
	m.errMu.Lock()
	err := m.err
	m.errMu.Unlock()
	if err != nil {
		return nil, err
	}
	return m.current.Load(), nil
}

// Ready returns nil when the CA can issue; for readiness probes.
func (m *Manager) Ready() error {
	_, err := m.Current()
	return err
}

// Subscribe returns a channel that receives a value after every change of
// the state in force (coalesced), and a function to unsubscribe.
func (m *Manager) Subscribe() (<-chan struct{}, func()) {
	return m.changed.Subscribe()
}

// Load reads the state, bootstrapping it on a first start. A missing or
// corrupt state after a bundle was published is an error (and the CA stays
// not ready) unless AllowRebootstrap is set.
func (m *Manager) Load(ctx context.Context) error {
	snap, err := m.opts.Store.Load(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		return m.bootstrap(ctx, "no CA state found")
	case err != nil:
		err = fmt.Errorf("%w: %w", ErrNotReady, err)
		m.setErr(err)
		return err
	}
	return m.loadSnapshot(ctx, snap)
}

func (m *Manager) loadSnapshot(ctx context.Context, snap *Snapshot) error {
	s, err := Decode(snap.Data)
	if err == nil {
		if err = s.LoadKeys(ctx, m.keyStore()); err != nil {
			// The keys are there but out of reach (the token, its PIN):
			// never re-bootstrap over them.
			err = fmt.Errorf("%w: %s: %w", ErrNotReady, m.opts.Store.Describe(), err)
			m.setErr(err)
			return err
		}
	}
	if err != nil {
		if m.opts.AllowRebootstrap {
			m.opts.Logger.Warn("CA state is corrupt; re-bootstrapping as allowed by flag", "store", m.opts.Store.Describe(), "error", err)
			return m.rebootstrap(ctx, snap.Version)
		}
		err = fmt.Errorf("%w: %s: %w; restore it from a backup, or start the CA with --allow-rebootstrap to mint a new root (every workload must then get the new trust bundle)", ErrNotReady, m.opts.Store.Describe(), err)
		m.setErr(err)
		return err
	}
	m.install(ctx, s, snap.Version)
	return nil
}

// Reload re-reads the store; call it when the store changed (Secret watch).
func (m *Manager) Reload(ctx context.Context) error {
	snap, err := m.opts.Store.Load(ctx)
	if errors.Is(err, ErrNotFound) {
		err = fmt.Errorf("%w: %s was deleted; restore it from a backup, or restart the CA with --allow-rebootstrap to mint a new root", ErrNotReady, m.opts.Store.Describe())
		m.setErr(err)
		return err
	}
	if err != nil {
		// The store is unreachable: keep signing with what we have.
		return err
	}
	if cur := m.current.Load(); cur != nil && cur.Version == snap.Version && m.Ready() == nil {
		return nil
	}
	s, err := Decode(snap.Data)
	if err != nil {
		err = fmt.Errorf("%w: %s: %w; restore it from a backup", ErrNotReady, m.opts.Store.Describe(), err)
		m.setErr(err)
		return err
	}
	if err := s.LoadKeys(ctx, m.keyStore()); err != nil {
		err = fmt.Errorf("%w: %s: %w", ErrNotReady, m.opts.Store.Describe(), err)
		m.setErr(err)
		return err
	}
	m.install(ctx, s, snap.Version)
	return nil
}

// keyStore is the Minter's key store, or nil.
func (m *Manager) keyStore() KeyStore {
	if m.opts.Minter == nil {
		return nil
	}
	return m.opts.Minter.Keys
}

func (m *Manager) bootstrap(ctx context.Context, why string) error {
	if m.opts.Marker != nil && !m.opts.AllowRebootstrap {
		marked, err := m.opts.Marker.Marked(ctx)
		if err != nil {
			err = fmt.Errorf("%w: checking for a published bundle: %w", ErrNotReady, err)
			m.setErr(err)
			return err
		}
		if marked {
			// Another replica may have bootstrapped between our read and
			// this check: it saves the state before it marks, so read again
			// before calling the state deleted.
			if snap, err := m.opts.Store.Load(ctx); err == nil {
				return m.loadSnapshot(ctx, snap)
			}
			err := fmt.Errorf("%w: %s, but this CA published a trust bundle before: the state was deleted. Restore %s from a backup, or start the CA with --allow-rebootstrap to mint a new root (every workload must then get the new trust bundle)", ErrNotReady, why, m.opts.Store.Describe())
			m.setErr(err)
			return err
		}
	}
	return m.rebootstrap(ctx, "")
}

func (m *Manager) rebootstrap(ctx context.Context, version string) error {
	now := m.opts.Clock.Now()
	s, err := m.opts.Minter.Bootstrap(ctx, now)
	if err != nil {
		err = fmt.Errorf("%w: bootstrap: %w", ErrNotReady, err)
		m.setErr(err)
		return err
	}
	data, err := s.Encode()
	if err != nil {
		err = fmt.Errorf("%w: bootstrap: %w", ErrNotReady, err)
		m.setErr(err)
		return err
	}
	v, err := m.opts.Store.Save(ctx, data, version)
	if errors.Is(err, ErrConflict) {
		// Another replica bootstrapped first: use its state.
		m.opts.Minter.DiscardKeys(ctx, &State{}, s)
		return m.Load(ctx)
	}
	if err != nil {
		m.setErr(fmt.Errorf("%w: %w", ErrNotReady, err))
		return err
	}
	m.opts.Logger.Info("bootstrapped CA", "store", m.opts.Store.Describe(), "root_serial", serialOf(s.Roots()), "intermediate_serial", s.Intermediate.Current.Cert().SerialNumber.Text(16), "intermediate_not_after", s.Intermediate.Current.NotAfter())
	m.install(ctx, s, v)
	return nil
}

func (m *Manager) install(ctx context.Context, s *State, version string) {
	now := m.opts.Clock.Now()
	auth, err := s.SigningAuthority()
	if err != nil {
		m.setErr(fmt.Errorf("%w: %w", ErrNotReady, err))
		return
	}
	bundle := s.Bundle(now)
	taints := s.ActiveTaints()
	jwtKeys := s.JWTKeys(now)
	l := &Loaded{State: s, Version: version, Bundle: bundle, BundleVersion: bundleVersion(bundle, taints, jwtKIDs(jwtKeys)), Authority: auth, Taints: taints, JWTKeys: jwtKeys}
	l.JWTSigner, _ = s.jwtSigner()
	if m.opts.Minter != nil {
		l.TaintReissueWindow = m.opts.Minter.Policy.TaintReissueWindow
	}
	prev := m.current.Swap(l)
	m.setErr(nil)
	m.updateMetrics(s)
	if m.opts.Marker != nil && (prev == nil || prev.BundleVersion != l.BundleVersion) {
		if err := m.opts.Marker.Mark(ctx, pki.EncodeCertificates(bundle...)); err != nil {
			m.opts.Logger.Warn("publishing the trust bundle marker failed", "error", err)
		}
	}
	if prev == nil || prev.Version != version {
		m.changed.Notify()
		m.Kick() // the new state may move the next rotation point
	}
}

func (m *Manager) setErr(err error) {
	m.errMu.Lock()
	m.err = err
	m.errMu.Unlock()
	if err != nil {
		m.ready.Set(0)
		m.opts.Logger.Error("CA not ready", "error", err)
	} else {
		m.ready.Set(1)
	}
}

func (m *Manager) updateMetrics(s *State) {
	m.expiry.Reset()
	s.EachSlot(func(role, slot string, c *x509.Certificate) {
		m.expiry.WithLabelValues(role, slot).Set(float64(c.NotAfter.Unix()))
	})
}

// Kick makes a running rotation loop plan again now (after a bundle
// acknowledgement, say).
func (m *Manager) Kick() {
	select {
	case m.kick <- struct{}{}:
	default:
	}
}

// Rotate runs the rotation loop until ctx is done: plan, apply what is due,
// save with compare-and-swap, sleep until the next rotation point. Run it
// on the leader only; correctness does not depend on that (the store's
// compare-and-swap does), it only avoids wasted work.
func (m *Manager) Rotate(ctx context.Context) error {
	for {
		if !rotate.Sleep(ctx, m.opts.Clock, m.RotateOnce(ctx), m.kick) {
			return nil
		}
	}
}

// RotateOnce plans and applies the steps due now and returns how long to
// wait before planning again.
func (m *Manager) RotateOnce(ctx context.Context) time.Duration {
	const retry = 10 * time.Second
	cur, err := m.Current()
	if err != nil {
		_ = m.Reload(ctx)
		return retry
	}
	now := m.opts.Clock.Now()
	d := Plan(cur.State, now, m.opts.Minter.Policy, m.opts.Acks)
	if len(d.Steps) == 0 {
		return clampWait(d.Next.Sub(now))
	}
	s := cur.State
	if s.Root.ActivateNow && slices.Contains(d.Steps, StepActivateRoot) {
		m.opts.Logger.Warn("activating the next root by operator override, without waiting for every node to hold it", "root_serial", s.Root.Next.Cert().SerialNumber.Text(16))
	}
	for _, step := range d.Steps {
		n, err := m.opts.Minter.Apply(ctx, s, step, now)
		if err != nil {
			m.rotations.WithLabelValues(string(step), "error").Inc()
			m.opts.Minter.DiscardKeys(ctx, cur.State, s)
			wait := m.recordFailure(step, err, now)
			m.opts.Logger.Error("rotation step failed; the keys in service stay, retrying", "step", step, "error", err, "retry_in", wait, "consecutive_failures", m.Failure().Failures)
			return wait
		}
		s = n
	}
	data, err := s.Encode()
	if err != nil {
		m.opts.Logger.Error("encoding rotated state", "error", err)
		return retry
	}
	v, err := m.opts.Store.Save(ctx, data, cur.Version)
	if err != nil {
		for _, step := range d.Steps {
			m.rotations.WithLabelValues(string(step), "conflict").Inc()
		}
		if errors.Is(err, ErrConflict) {
			m.opts.Minter.DiscardKeys(ctx, cur.State, s)
			m.opts.Logger.Info("another replica rotated first; reloading", "error", err)
		} else {
			m.opts.Logger.Error("saving rotated state", "error", err)
		}
		_ = m.Reload(ctx)
		return time.Second
	}
	for _, step := range d.Steps {
		m.rotations.WithLabelValues(string(step), "ok").Inc()
	}
	m.clearFailure()
	m.opts.Logger.Info("rotated CA keys", "steps", d.Steps, "reason", d.Reason, "generation", s.Generation,
		"intermediate_serial", s.Intermediate.Current.Cert().SerialNumber.Text(16), "intermediate_not_after", s.Intermediate.Current.NotAfter())
	m.install(ctx, s, v)
	return 0
}

// Failure returns why rotation has been failing; Failures is 0 when it
// is not.
func (m *Manager) Failure() RotationFailure {
	m.failMu.Lock()
	defer m.failMu.Unlock()
	return m.failure
}

// recordFailure counts a failed step and returns the wait before the next
// attempt.
func (m *Manager) recordFailure(step Step, err error, now time.Time) time.Duration {
	m.failMu.Lock()
	defer m.failMu.Unlock()
	f := &m.failure
	if f.Failures == 0 {
		f.Since = now
	}
	f.Failures++
	wait := retryAfter(f.Failures)
	f.Last, f.Step, f.Error, f.RetryAt = now, step, err.Error(), now.Add(wait)
	m.failing.Set(float64(f.Failures))
	return wait
}

func (m *Manager) clearFailure() {
	m.failMu.Lock()
	defer m.failMu.Unlock()
	if m.failure.Failures > 0 {
		m.opts.Logger.Info("rotation works again", "failed_attempts", m.failure.Failures, "failing_since", m.failure.Since)
	}
	m.failure = RotationFailure{}
	m.failing.Set(0)
}

func clampWait(d time.Duration) time.Duration {
	const maxWait = time.Hour // re-plan at least hourly (clock jumps, acks)
	if d < 0 {
		return 0
	}
	if d > maxWait {
		return maxWait
	}
	return d
}

// BundleVersion is the version of a trust bundle as Loaded.BundleVersion
// names it: a hash of the certificates' DER, in order. Whoever reads a
// bundle back from where it was published (a ConfigMap, a Secret's ca.crt)
// compares it with this.
func BundleVersion(certs []*x509.Certificate) string {
	return BundleVersionDER(func(yield func([]byte) bool) {
		for _, c := range certs {
			if !yield(c.Raw) {
				return
			}
		}
	})
}

// BundleVersionDER is BundleVersion of certificates given as DER, without
// parsing them.
func BundleVersionDER(ders iter.Seq[[]byte]) string {
	return bundleVersionOf(ders, nil, nil)
}

// bundleVersion is the version agents see: the certificates' hash, and the
// tainted keys when there are any, so that a taint reaches every agent as a
// new bundle, and the published JWT keys' kids, so that the agents'
// acknowledgements gate a JWT key's activation as they gate a root's.
// Without taints and JWT keys it equals BundleVersion, which is what the
// Kubernetes delivery objects (holding certificates only) are compared with.
func bundleVersion(certs []*x509.Certificate, taints []Taint, jwtKIDs []string) string {
	return bundleVersionOf(func(yield func([]byte) bool) {
		for _, c := range certs {
			if !yield(c.Raw) {
				return
			}
		}
	}, taints, jwtKIDs)
}

func bundleVersionOf(ders iter.Seq[[]byte], taints []Taint, jwtKIDs []string) string {
	h := sha256.New()
	for d := range ders {
		h.Write(d)
	}
	if len(taints) > 0 {
		// Without taints the version is what it was before taints existed.
		h.Write([]byte("taints"))
		for _, t := range taints {
			h.Write(t.SubjectKeyID)
		}
	}
	if len(jwtKIDs) > 0 {
		h.Write([]byte("jwt"))
		for _, kid := range jwtKIDs {
			h.Write([]byte(kid))
			h.Write([]byte{0})
		}
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

func serialOf(certs []*x509.Certificate) string {
	if len(certs) == 0 {
		return ""
	}
	return certs[0].SerialNumber.Text(16)
}

// RequestRootRotation marks the stored state so that the rotation loop (of
// whichever replica leads) prepares a new root at once and activates it as
// soon as every node holds it. It works on the store directly, so
// an operator can run it beside a running CA.
func RequestRootRotation(ctx context.Context, store Store) error {
	return requestRoot(ctx, store, false)
}

// RequestRootActivation is the operator's override of the wait for the
// agents: it marks the stored state so that the next root (prepared now if
// there is none) activates at once, whether or not every node holds it.
// Nodes that do not hold the new root cannot verify certificates under it
// until they fetch the bundle.
func RequestRootActivation(ctx context.Context, store Store) error {
	return requestRoot(ctx, store, true)
}

func requestRoot(ctx context.Context, store Store, activateNow bool) error {
	return updateState(ctx, store, func(s *State) error {
		if s.Root.Current == nil {
			return errors.New("the roots belong to the upstream CA: rotate them there")
		}
		if s.Root.Requested && (s.Root.ActivateNow || !activateNow) {
			return errUnchanged
		}
		s.Root.Requested = true
		s.Root.ActivateNow = s.Root.ActivateNow || activateNow
		return nil
	})
}
