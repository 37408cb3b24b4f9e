package agent

import (
	"cmp"
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/pkg/notify"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

var errMissingResult = errors.New("the CA's answer has no result for this request")

// Spec says how to obtain one identity.
type Spec struct {
	// Key identifies the identity on this node: "ns/sa" in Kubernetes (pods
	// of one ServiceAccount share one certificate), the SPIFFE ID standalone.
	Key string
	// SpiffeID is sent in standalone mode; the CA checks it against the
	// node's allow list.
	SpiffeID string
	// PodUIDs returns pods that carry this identity on this node; the CA
	// authorizes the request by one of them (Kubernetes mode).
	PodUIDs func() []string
	// PodToken returns the ServiceAccount token of pod uid, if the kubelet
	// gave one (CSI tokenRequests); the CA then checks it too.
	PodToken func(uid string) string
	// PodGone is told a pod the CA does not know (NOT_FOUND), PodWorked
	// the pod whose request was issued (PodIndex.Forget, PodIndex.Worked).
	PodGone, PodWorked func(uid string)
	DNSNames           []string
	TTL                time.Duration
	KeyType            pki.KeyType
	// Path is the delivery path asking for the identity, a label of its
	// metrics: PathSocket (""), PathCSI or PathWriteDir. An identity asked
	// for on several paths is exported on each.
	Path string
	// Sinks receive every new certificate of this identity (files), and
	// every new trust bundle (DeliverBundle).
	Sinks []rotate.Sink
	// Pinned identities are kept while nobody asks for them (registrations
	// with a file sink, pods known to run here).
	Pinned bool
}

// ManagerConfig configures a Manager.
type ManagerConfig struct {
	Batcher     *Batcher
	Bundle      BundleSource
	TrustDomain spiffeid.TrustDomain
	Clock       rotate.Clock
	Policy      rotate.Policy
	Logger      *slog.Logger
	Registerer  prometheus.Registerer
	// IdleTimeout removes unpinned identities nobody asked for this long
	// (default 10m).
	IdleTimeout time.Duration
	// OnRejected is told of every certificate of the CA the agent refuses
	// (ErrBadSVID), for a metric.
	OnRejected func(error)
	// CoalesceWindow: when an identity renews on its schedule, the
	// identities whose renewal falls due within this window renew with it,
	// in the same SignWorkloads call, provided the policy's jitter range
	// already allows it (never before NotBefore + (RenewFraction −
	// Jitter)×lifetime, never later than planned). Default
	// DefaultCoalesceWindow; negative: every renewal on its own.
	CoalesceWindow time.Duration
	// Rand draws each certificate's renewal jitter (rotate.Options.Rand);
	// nil: math/rand.
	Rand func() float64
}

// DefaultCoalesceWindow is ManagerConfig.CoalesceWindow's default. For a
// node of 15 identities of 1 h (the fleet benchmark's 150,000 pods on
// 10,000 nodes), renewed at half life ±10%, it makes 0.52 calls per
// certificate instead of 1, for 1.5% more certificates (renewals up to
// two minutes early; docs/performance.md).
const DefaultCoalesceWindow = 2 * time.Minute

// Manager obtains and rotates the node's workload identities. The first
// request for an identity obtains it directly, through the batcher shared
// by all, and gets it back; from then on one rotator per identity renews
// it and pushes each new credential to the subscribers and sinks.
type Manager struct {
	cfg ManagerConfig

	mu      sync.Mutex
	entries map[string]*entry
	agent   *x509.Certificate
	// unstarted are the identities whose rotators Start has not run yet;
	// launch signals it that there are some.
	unstarted []*entry
	launch    chan struct{}
	// running counts the rotators Start runs: it returns only after they
	// have, so that no write of a sink outlives the agent.
	running sync.WaitGroup

	svids *svidMetrics
	// sinks are the sinks of every identity, wrapped so that they follow
	// the bundle in force (DeliverBundle).
	sinks     sinkSet
	rotations *prometheus.CounterVec
}

type entry struct {
	spec    Spec
	rot     *rotate.Rotator
	changes notify.Notifier
	removed chan struct{} // closed by removal
	// unsink forgets the spec's sinks (Manager.sinks) on removal.
	unsink []func()

	// Under Manager.mu:
	lastUsed time.Time
	watchers int
	stop     context.CancelFunc // stops the rotator once Start runs it
	// attempted is set once the first attempt to obtain ended, either way,
	// or the identity was removed. attempt is open while a caller makes the
	// first attempt; the others wait for it.
	attempted bool
	attempt   chan struct{}
}

// NewManager returns a Manager; Start runs it.
func NewManager(cfg ManagerConfig) *Manager {
	if cfg.Clock == nil {
		cfg.Clock = rotate.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.IdleTimeout == 0 {
		cfg.IdleTimeout = 10 * time.Minute
	}
	if cfg.CoalesceWindow == 0 {
		cfg.CoalesceWindow = DefaultCoalesceWindow
	}
	m := &Manager{
		cfg:     cfg,
		entries: map[string]*entry{},
		launch:  make(chan struct{}, 1),
		svids:   newSVIDMetrics(),
		rotations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mayfly_agent_rotations_total",
			Help: "SVID rotations attempted by this agent, by result (success, failure).",
		}, []string{"result"}),
	}
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(m.svids, m.rotations, prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mayfly_agent_min_remaining_seconds",
			Help: "Seconds until the first SVID held on this node expires: the time to the first outage if nothing rotates.",
		}, m.minRemaining))
	}
	m.rotations.WithLabelValues("success")
	m.rotations.WithLabelValues("failure")
	return m
}

// Start runs until ctx is done: it runs the rotator of every identity
// (after its first attempt, which it makes itself for an identity nobody
// asked for yet) and collects idle identities every minute.
func (m *Manager) Start(ctx context.Context) error {
	gc := m.cfg.Clock.NewTimer(time.Minute)
	defer func() { gc.Stop() }()
	for {
		m.mu.Lock()
		batch := m.unstarted
		m.unstarted = nil
		m.mu.Unlock()
		for _, e := range batch {
			m.run(ctx, e)
		}
		select {
		case <-ctx.Done():
			m.running.Wait()
			return nil
		case <-m.launch:
		case <-gc.C():
			m.collect()
			gc = m.cfg.Clock.NewTimer(time.Minute)
		}
	}
}

// run makes e's first attempt unless a request did, then runs its rotator,
// until ctx is done or e is removed.
func (m *Manager) run(ctx context.Context, e *entry) {
	m.mu.Lock()
	if m.entries[e.spec.Key] != e {
		m.mu.Unlock()
		return // removed before it ran
	}
	ctx, e.stop = context.WithCancel(ctx)
	m.mu.Unlock()
	m.running.Go(func() {
		if _, err := m.first(ctx, e); errors.Is(err, context.Canceled) {
			return
		}
		_ = e.rot.Start(ctx)
	})
}

func (m *Manager) collect() {
	now := m.cfg.Clock.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	for k, e := range m.entries {
		if !e.spec.Pinned && e.watchers == 0 && now.Sub(e.lastUsed) > m.cfg.IdleTimeout {
			m.removeLocked(k)
		}
	}
}

// Ensure returns the identity for spec, creating it if new.
func (m *Manager) Ensure(spec Spec) *rotate.Rotator {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.ensureLocked(spec).rot
}

func (m *Manager) ensureLocked(spec Spec) *entry {
	m.svids.serve(spec.Key, spec.Path)
	e, ok := m.entries[spec.Key]
	if ok {
		e.lastUsed = m.cfg.Clock.Now()
		if spec.Pinned {
			e.spec.Pinned = true
		}
		if spec.PodUIDs != nil {
			e.spec.PodUIDs = spec.PodUIDs
		}
		if spec.PodToken != nil {
			e.spec.PodToken = spec.PodToken
		}
		if spec.PodGone != nil {
			e.spec.PodGone, e.spec.PodWorked = spec.PodGone, spec.PodWorked
		}
		return e
	}
	e = &entry{spec: spec, lastUsed: m.cfg.Clock.Now(), removed: make(chan struct{})}
	sinks := make([]rotate.Sink, 0, len(spec.Sinks))
	for _, s := range spec.Sinks {
		if s != nil {
			w, forget := m.sinks.wrap(s, m.cfg.Bundle)
			sinks = append(sinks, w)
			e.unsink = append(e.unsink, forget)
		}
	}
	// The rotator renews what the first request obtained, with the same
	// obtain; its events keep the metrics and wake the subscribers.
	e.rot = rotate.New(func(ctx context.Context) (*rotate.Credential, error) { return m.obtain(ctx, e) }, rotate.Options{
		Policy: m.cfg.Policy, Clock: m.cfg.Clock, Sinks: sinks, Name: spec.Key, Rand: m.cfg.Rand,
		OnEvent: func(ev rotate.Event) { m.onEvent(e, ev) },
	})
	m.entries[spec.Key] = e
	m.unstarted = append(m.unstarted, e)
	select {
	case m.launch <- struct{}{}:
	default:
	}
	return e
}

// AddSink adds sink to rot, an identity Ensure returned: the sink gets its
// current credential at once and every new one, and every new trust bundle
// (DeliverBundle), until remove.
func (m *Manager) AddSink(rot *rotate.Rotator, sink rotate.Sink) (remove func()) {
	w, forget := m.sinks.wrap(sink, m.cfg.Bundle)
	removeSink := rot.AddSink(w)
	return func() {
		removeSink()
		forget()
	}
}

var _ BundleTarget = (*Manager)(nil)

// DeliverBundle puts roots to the sinks of every identity that hold a
// different bundle (only the bundle file changes); a credential written
// later carries the bundle in force anyway. It returns how many sinks
// failed, and why.
func (m *Manager) DeliverBundle(ctx context.Context, roots []*x509.Certificate) (int, error) {
	return m.sinks.deliver(ctx, roots)
}

// Rotators returns the rotators of every identity held now.
func (m *Manager) Rotators() []*rotate.Rotator {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]*rotate.Rotator, 0, len(m.entries))
	for _, e := range m.entries {
		out = append(out, e.rot)
	}
	return out
}

// Remove stops and forgets an identity.
func (m *Manager) Remove(key string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.removeLocked(key)
}

func (m *Manager) removeLocked(key string) {
	e, ok := m.entries[key]
	if !ok {
		return
	}
	if e.stop != nil {
		e.stop()
	}
	m.svids.remove(key)
	delete(m.entries, key)
	for _, forget := range e.unsink {
		forget()
	}
	e.attempted = true
	close(e.removed)
	e.changes.Notify()
}

// errNoPodLeft: a pod identity whose every pod left the node.
var errNoPodLeft = errors.New("no pod runs on this node any more for the identity")

// dropOrphan removes e when nothing holds it any more: its pods left the
// node (deleted) and no volume or Workload API stream watches it. Kept
// until the idle collection, it would retry every half-life, warn each
// time and export an expiry that runs out (an alert for a pod that is
// gone). It reports whether e was removed.
func (m *Manager) dropOrphan(e *entry) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.entries[e.spec.Key] != e || e.spec.Pinned || e.watchers > 0 {
		return false
	}
	m.removeLocked(e.spec.Key)
	m.cfg.Logger.Info("identity dropped: none of its pods runs on this node any more", "identity", e.spec.Key)
	return true
}

func (m *Manager) onEvent(e *entry, ev rotate.Event) {
	switch ev.Kind {
	case rotate.EventRotated:
		m.rotations.WithLabelValues("success").Inc()
		cur := e.rot.Current()
		// Under m.mu, like removeLocked: a rotation that finishes after
		// Remove must not export the expiry of an identity this node no
		// longer holds.
		m.mu.Lock()
		if cur != nil && m.entries[e.spec.Key] == e {
			m.svids.rotated(e.spec.Key, cur.Leaf())
		}
		m.mu.Unlock()
		if cur != nil {
			m.cfg.Logger.Info("SVID rotated", "spiffe_id", idOf(cur.Leaf()), "serial", cur.Leaf().SerialNumber.Text(16), "not_after", cur.Leaf().NotAfter)
		}
		e.changes.Notify()
	case rotate.EventObtainFailed:
		if errors.Is(ev.Err, errNoPodLeft) && m.dropOrphan(e) {
			return
		}
		m.rotations.WithLabelValues("failure").Inc()
		m.cfg.Logger.Warn("SVID rotation failed; keeping the current one", "identity", e.spec.Key, "error", ev.Err, "next", ev.Next.At)
	case rotate.EventSinkFailed:
		m.cfg.Logger.Warn("writing an SVID to a sink failed", "identity", e.spec.Key, "error", ev.Err)
	}
}

func (m *Manager) obtain(ctx context.Context, e *entry) (*rotate.Credential, error) {
	m.coalesce(e)
	// Ensure may update the spec (pods, pinning) while a rotation runs.
	m.mu.Lock()
	spec := e.spec
	m.mu.Unlock()
	kt := spec.KeyType
	if kt == "" {
		kt = pki.DefaultKeyType
	}
	key, err := pki.GenerateKey(kt, rand.Reader)
	if err != nil {
		return nil, err
	}
	csr, err := pki.CreateCSR(key, rand.Reader)
	if err != nil {
		return nil, err
	}
	base := &issuerv1.WorkloadRequest{Csr: csr, SpiffeId: spec.SpiffeID, TtlSeconds: int64(spec.TTL / time.Second), DnsNames: spec.DNSNames}
	var res *issuerv1.WorkloadResult
	if spec.PodUIDs == nil {
		if res, err = m.cfg.Batcher.Sign(ctx, base); err != nil {
			return nil, err
		}
	} else {
		uids := spec.PodUIDs()
		if len(uids) == 0 {
			return nil, fmt.Errorf("%w: %s", errNoPodLeft, spec.Key)
		}
		for _, uid := range uids {
			req := &issuerv1.WorkloadRequest{Csr: base.GetCsr(), PodUid: uid, TtlSeconds: base.GetTtlSeconds(), DnsNames: base.GetDnsNames()}
			if spec.PodToken != nil {
				req.PodToken = spec.PodToken(uid)
			}
			if res, err = m.cfg.Batcher.Sign(ctx, req); err != nil {
				return nil, err
			}
			d := res.GetDenial()
			if d == nil && spec.PodWorked != nil {
				spec.PodWorked(uid)
			}
			if d.GetCode() == issuerv1.Denial_NOT_FOUND && spec.PodGone != nil {
				spec.PodGone(uid)
			}
			if d == nil || (d.GetCode() != issuerv1.Denial_NOT_FOUND && d.GetCode() != issuerv1.Denial_PERMISSION_DENIED) {
				break
			}
		}
	}
	if d := res.GetDenial(); d != nil {
		return nil, fmt.Errorf("the CA denied %s: %s: %s", spec.Key, d.GetCode(), d.GetMessage())
	}
	chain, err := issuerclient.ParseChain(res.GetIssued().GetCertificateChain())
	if err != nil {
		return nil, m.rejected(spec, fmt.Errorf("%w: %w", ErrBadSVID, err))
	}
	roots, _ := m.cfg.Bundle.Bundle()
	want, err := requestedID(m.cfg.TrustDomain, spec)
	if err != nil {
		return nil, err
	}
	if err := checkIssued(chain, key, want, roots, m.cfg.Clock.Now(), x509.ExtKeyUsageServerAuth); err != nil {
		return nil, m.rejected(spec, fmt.Errorf("identity %s: %w", spec.Key, err))
	}
	return &rotate.Credential{Certificates: chain, Key: key, Bundle: roots}, nil
}

// coalesce triggers, when e renews on its schedule, the renewals of the
// other identities due within CoalesceWindow whose policy range allows a
// renewal now: their requests reach the Batcher within its window with
// e's, and the CA gets one call instead of several. A renewal triggered
// so (planned later than now) triggers nothing itself, and an identity
// retrying after a failure keeps its backoff.
func (m *Manager) coalesce(e *entry) {
	window := m.cfg.CoalesceWindow
	if window <= 0 || e.rot == nil {
		return
	}
	now := m.cfg.Clock.Now()
	if st := e.rot.State(); st.Current == nil || st.NextAt.After(now) {
		return // a first certificate, or triggered ahead of its plan
	}
	m.mu.Lock()
	others := make([]*rotate.Rotator, 0, len(m.entries))
	for _, o := range m.entries {
		if o != e {
			others = append(others, o.rot)
		}
	}
	m.mu.Unlock()
	for _, r := range others {
		st := r.State()
		if st.Current == nil || st.Attempts > 0 || st.NextReason != rotate.ReasonScheduled ||
			!st.NextAt.After(now) || st.NextAt.Sub(now) > window || now.Before(m.earliestRenewal(*st.Current)) {
			continue
		}
		r.Trigger()
	}
}

// earliestRenewal is the earliest renewal point the policy's jitter can
// draw for a certificate of validity v: NotBefore + (RenewFraction −
// Jitter)×lifetime.
func (m *Manager) earliestRenewal(v rotate.Validity) time.Time {
	p := m.cfg.Policy
	if p == (rotate.Policy{}) {
		p = rotate.DefaultPolicy()
	}
	f := cmp.Or(p.RenewFraction, rotate.DefaultRenewFraction) - p.Jitter
	return v.NotBefore.Add(time.Duration(f * float64(v.Lifetime())))
}

// rejected logs and counts a certificate of the CA that the agent refuses
// (ErrBadSVID) and returns err.
func (m *Manager) rejected(spec Spec, err error) error {
	m.cfg.Logger.Error("refusing a certificate from the CA", "identity", spec.Key, "error", err)
	if m.cfg.OnRejected != nil {
		m.cfg.OnRejected(err)
	}
	return err
}

// ErrNotIssued is returned by Obtain for an identity whose first attempt
// failed or that was removed; the reason is in the log.
var ErrNotIssued = errors.New("identity not issued")

// Obtain returns the current credential of spec's identity, creating it if
// new. An identity not attempted yet is obtained at once, in the caller's
// goroutine, through the batcher (concurrent callers share the attempt);
// its rotator then only renews it. Obtain does not wait for the retries
// after a failed first attempt (an identity the CA refused must not hold
// up the others of the same workload): before a first success it returns
// ErrNotIssued.
func (m *Manager) Obtain(ctx context.Context, spec Spec) (*rotate.Credential, error) {
	m.mu.Lock()
	e := m.ensureLocked(spec)
	m.mu.Unlock()
	return m.first(ctx, e)
}

// ObtainAll is Obtain for several identities at once, so that those not
// attempted yet share a batch. It returns the credentials issued, in the
// order of specs, leaving out those not issued; its error is the first
// other error.
func (m *Manager) ObtainAll(ctx context.Context, specs []Spec) ([]*rotate.Credential, error) {
	if len(specs) == 1 { // the common case, without a goroutine
		cred, err := m.Obtain(ctx, specs[0])
		if errors.Is(err, ErrNotIssued) {
			return nil, nil
		}
		if err != nil {
			return nil, err
		}
		return []*rotate.Credential{cred}, nil
	}
	creds := make([]*rotate.Credential, len(specs))
	errs := make([]error, len(specs))
	var wg sync.WaitGroup
	for i, spec := range specs {
		wg.Go(func() { creds[i], errs[i] = m.Obtain(ctx, spec) })
	}
	wg.Wait()
	out := make([]*rotate.Credential, 0, len(specs))
	for i, cred := range creds {
		switch {
		case errors.Is(errs[i], ErrNotIssued):
		case errs[i] != nil:
			return nil, errs[i]
		default:
			out = append(out, cred)
		}
	}
	return out, nil
}

// first returns e's credential once its first attempt ended, making that
// attempt itself when nobody else is. An attempt cut short by the caller's
// context does not count: the next caller (or Start) makes it again.
func (m *Manager) first(ctx context.Context, e *entry) (*rotate.Credential, error) {
	for {
		m.mu.Lock()
		if e.attempted {
			m.mu.Unlock()
			if cur := e.rot.Current(); cur != nil {
				return cur, nil
			}
			return nil, ErrNotIssued
		}
		if wait := e.attempt; wait != nil {
			m.mu.Unlock()
			select {
			case <-wait:
			case <-e.removed:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			continue
		}
		done := make(chan struct{})
		e.attempt = done
		m.mu.Unlock()

		cred, err := m.obtain(ctx, e)
		if err != nil && ctx.Err() != nil {
			m.mu.Lock()
			e.attempt = nil
			m.mu.Unlock()
			close(done)
			return nil, ctx.Err()
		}
		// The rotator takes the outcome as its own first attempt: it
		// renews the credential, or retries after backoff.
		if err := e.rot.Record(cred, err); err != nil {
			cred = nil
		}
		m.mu.Lock()
		e.attempted = true
		e.attempt = nil
		m.mu.Unlock()
		close(done)
		if cred == nil {
			return nil, ErrNotIssued
		}
		return cred, nil
	}
}

// WaitAnyReady waits up to ctx until one of the specs' identities has its
// first credential (creating those that are new).
func (m *Manager) WaitAnyReady(ctx context.Context, specs []Spec) error {
	m.mu.Lock()
	ready := make([]<-chan struct{}, 0, len(specs))
	for _, spec := range specs {
		ready = append(ready, m.ensureLocked(spec).rot.Ready())
	}
	m.mu.Unlock()
	first := make(chan struct{}, 1)
	done := make(chan struct{})
	defer close(done)
	for _, ch := range ready {
		go func() {
			select {
			case <-ch:
				select {
				case first <- struct{}{}:
				default:
				}
			case <-done:
			}
		}()
	}
	select {
	case <-first:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Subscribe signals after each rotation of key's identity, and its
// removal.
func (m *Manager) Subscribe(key string) (<-chan struct{}, func()) {
	m.mu.Lock()
	e, ok := m.entries[key]
	if ok {
		e.watchers++
	}
	m.mu.Unlock()
	if !ok {
		return make(chan struct{}), func() {}
	}
	ch, unsubscribe := e.changes.Subscribe()
	var once sync.Once
	return ch, func() {
		once.Do(func() {
			unsubscribe()
			m.mu.Lock()
			e.watchers--
			e.lastUsed = m.cfg.Clock.Now()
			m.mu.Unlock()
		})
	}
}

// SetAgentSVID records the agent's own SVID for the expiry metrics: the
// agent's certificate counts for the node's time to outage too.
func (m *Manager) SetAgentSVID(c *x509.Certificate) {
	m.mu.Lock()
	m.agent = c
	m.mu.Unlock()
	m.svids.serve(agentIdentity, PathAgent)
	m.svids.rotated(agentIdentity, c)
}

// Status is one identity's state, for `agent status` and tests.
type Status struct {
	Key      string
	SpiffeID string
	State    rotate.State
}

// Status lists the identities, sorted by key.
func (m *Manager) Status() []Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]Status, 0, len(m.entries))
	for k, e := range m.entries {
		s := Status{Key: k, State: e.rot.State()}
		if cur := e.rot.Current(); cur != nil {
			s.SpiffeID = idOf(cur.Leaf())
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (m *Manager) minRemaining() float64 {
	now := m.cfg.Clock.Now()
	least := math.Inf(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.agent != nil {
		least = m.agent.NotAfter.Sub(now).Seconds()
	}
	for _, e := range m.entries {
		if cur := e.rot.Current(); cur != nil {
			least = math.Min(least, cur.Leaf().NotAfter.Sub(now).Seconds())
		}
	}
	if math.IsInf(least, 1) {
		return 0
	}
	return least
}

func idOf(c *x509.Certificate) string {
	if c == nil || len(c.URIs) != 1 {
		return ""
	}
	return c.URIs[0].String()
}
