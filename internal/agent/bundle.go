package agent

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	issuerv1 "github.com/mayfly-pki/mayfly/api/issuer/v1"
	"github.com/mayfly-pki/mayfly/internal/issuerclient"
	"github.com/mayfly-pki/mayfly/pkg/notify"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// IssuerSource gives the client of the connection that presents the agent
// SVID, and a channel closed when that connection is replaced (CAConn).
type IssuerSource interface {
	Client() (issuerv1.IssuerClient, <-chan struct{}, error)
}

// BundleSaver keeps the bundle in force for the next start (SVIDStore).
type BundleSaver interface {
	SaveBundle(roots []*x509.Certificate) error
}

// BundleWatcherConfig configures a BundleWatcher.
type BundleWatcherConfig struct {
	// Initial authenticates the CA until it sends a bundle (required).
	Initial []*x509.Certificate
	// Saver, if set, keeps every bundle installed.
	Saver  BundleSaver
	Clock  rotate.Clock
	Logger *slog.Logger
	// Registerer, if set, receives mayfly_agent_bundle_sinks_pending.
	Registerer prometheus.Registerer
}

// deliverTimeout bounds one attempt to deliver a bundle: how long the
// Workload API streams are waited for before the attempt counts as failed.
const deliverTimeout = 5 * time.Second

// BundleWatcher holds the trust bundle in force: the initial one, then
// every one the CA sends, on its WatchBundle stream (Watch) or with an
// agent SVID (Install), and signals every change to its subscribers.
//
// It acknowledges a bundle to the CA only once every target (DeliverTo)
// delivered it: every file sink holds it in its bundle file and every open
// Workload API stream was sent it. The CA activates a next root only when
// every agent acknowledged the bundle holding it, so no workload, SPIFFE
// or file consumer, meets a certificate under a root it does not trust
// yet. A delivery that fails is retried with a backoff of 1s doubling to
// 10s, and the bundle is not acknowledged meanwhile.
type BundleWatcher struct {
	cfg     BundleWatcherConfig
	cur     atomic.Pointer[bundleState]
	changes notify.Notifier
	targets []BundleTarget
	pending prometheus.Gauge
}

type bundleState struct {
	certs   []*x509.Certificate
	version string
	taints  Taints
	jwtKeys map[string]crypto.PublicKey
}

// NewBundleWatcher returns a watcher holding cfg.Initial.
func NewBundleWatcher(cfg BundleWatcherConfig) (*BundleWatcher, error) {
	if len(cfg.Initial) == 0 {
		return nil, errors.New("agent: no initial trust bundle: give the CA's trust-bundle.pem")
	}
	if cfg.Clock == nil {
		cfg.Clock = rotate.RealClock{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	w := &BundleWatcher{cfg: cfg, pending: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mayfly_agent_bundle_sinks_pending",
		Help: "Places on this node (certificate directories, Workload API streams) that did not get the trust bundle in force at the last attempt; the agent acknowledges the bundle to the CA only at 0.",
	})}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(w.pending); err != nil {
			return nil, fmt.Errorf("agent: registering the bundle metrics: %w", err)
		}
	}
	w.cur.Store(&bundleState{certs: cfg.Initial})
	return w, nil
}

// DeliverTo adds the targets that must hold a bundle before it is
// acknowledged; call it before Watch.
func (w *BundleWatcher) DeliverTo(targets ...BundleTarget) {
	w.targets = append(w.targets, targets...)
}

// Bundle returns the roots in force and the CA's version of them ("" for
// the initial or a persisted bundle).
func (w *BundleWatcher) Bundle() ([]*x509.Certificate, string) {
	b := w.cur.Load()
	return b.certs, b.version
}

// JWTKeys returns the JWT keys of the bundle in force, by kid.
func (w *BundleWatcher) JWTKeys() map[string]crypto.PublicKey { return w.cur.Load().jwtKeys }

// Taints returns the tainted authorities the bundle in force announces.
func (w *BundleWatcher) Taints() Taints { return w.cur.Load().taints }

// SubscribeBundle signals after every bundle change.
func (w *BundleWatcher) SubscribeBundle() (<-chan struct{}, func()) {
	return w.changes.Subscribe()
}

// replace puts roots in force without a version (a persisted bundle), and
// signals nobody: it is taken up before anything subscribes.
func (w *BundleWatcher) replace(roots []*x509.Certificate) {
	w.cur.Store(&bundleState{certs: roots})
}

// Install puts the CA's bundle b in force, and reports whether it is (it
// was already, or is now), that is whether to acknowledge it. An unusable
// bundle is logged and leaves the one in force.
func (w *BundleWatcher) Install(b *issuerv1.Bundle) bool {
	roots, err := issuerclient.ParseBundle(b)
	if err != nil {
		w.cfg.Logger.Warn("ignoring an unusable bundle from the CA", "error", err)
		return false
	}
	jwtKeys, err := jwtKeysOf(b)
	if err != nil {
		w.cfg.Logger.Warn("ignoring an unusable bundle from the CA", "error", err)
		return false
	}
	if cur := w.cur.Load(); cur.version == b.GetVersion() && cur.version != "" {
		return true
	}
	taints := taintsOf(b)
	w.cur.Store(&bundleState{certs: roots, version: b.GetVersion(), taints: taints, jwtKeys: jwtKeys})
	w.cfg.Logger.Info("trust bundle installed", "version", b.GetVersion(), "roots", len(roots), "tainted_authorities", len(taints.KeyIDs))
	w.changes.Notify()
	if w.cfg.Saver != nil {
		if err := w.cfg.Saver.SaveBundle(roots); err != nil {
			w.cfg.Logger.Warn("cannot persist the trust bundle", "error", err)
		}
	}
	return true
}

// Watch keeps a WatchBundle stream open on conn's connection until ctx is
// done: it installs and acknowledges every bundle, reopens the stream on
// each new connection (a new agent SVID), and after a failure retries with
// a backoff of 1s doubling to 10s on the injected clock, each wait drawn
// between half and one and a half times the backoff (jitter).
func (w *BundleWatcher) Watch(ctx context.Context, conn IssuerSource) error {
	backoff := time.Second
	for ctx.Err() == nil {
		client, replaced, err := conn.Client()
		if err != nil {
			select {
			case <-ctx.Done():
				return nil
			case <-replaced:
				continue
			}
		}
		sctx, cancel := context.WithCancel(ctx)
		go func() {
			select {
			case <-replaced: // a new SVID: reopen on the new connection
			case <-sctx.Done():
			}
			cancel()
		}()
		err = w.stream(sctx, client)
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		if status.Code(err) == codes.Canceled {
			backoff = time.Second
			continue
		}
		wait := jitter(backoff)
		w.cfg.Logger.Warn("bundle stream ended; reconnecting", "error", err, "retry_in", wait)
		if !rotate.Sleep(ctx, w.cfg.Clock, wait, replaced) {
			return nil
		}
		backoff = min(backoff*2, 10*time.Second)
	}
	return nil
}

// stream installs every bundle the CA sends and acknowledges the bundle in
// force once delivered. Bundles are received on their own goroutine, so
// that a newer one supersedes one whose delivery keeps failing.
func (w *BundleWatcher) stream(ctx context.Context, client issuerv1.IssuerClient) error {
	stream, err := client.WatchBundle(ctx)
	if err != nil {
		return err
	}
	latest := make(chan *issuerv1.Bundle, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			b, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case <-latest: // superseded before it was taken
			default:
			}
			latest <- b
		}
	}()
	ackDue := false
	backoff := time.Second
	for {
		var retry rotate.Timer
		if ackDue {
			version, err := w.deliver(ctx)
			switch {
			case err == nil:
				if version != "" {
					if err := stream.Send(&issuerv1.BundleAck{Version: version}); err != nil {
						return err
					}
				}
				ackDue, backoff = false, time.Second
			case ctx.Err() != nil:
				return status.FromContextError(ctx.Err()).Err()
			default:
				w.cfg.Logger.Warn("trust bundle not delivered everywhere; not acknowledging it yet", "version", version, "error", err, "retry_in", backoff)
				retry = w.cfg.Clock.NewTimer(backoff)
				backoff = min(backoff*2, 10*time.Second)
			}
		}
		var retryC <-chan time.Time
		if retry != nil {
			retryC = retry.C()
		}
		select {
		case <-ctx.Done():
			stopTimer(retry)
			return status.FromContextError(ctx.Err()).Err()
		case err := <-recvErr:
			stopTimer(retry)
			return err
		case b := <-latest:
			stopTimer(retry)
			if w.Install(b) {
				ackDue, backoff = true, time.Second
			}
		case <-retryC:
		}
	}
}

func stopTimer(t rotate.Timer) {
	if t != nil {
		t.Stop()
	}
}

// deliver hands the bundle in force to every target, giving them up to
// deliverTimeout, and returns its version once all hold it.
func (w *BundleWatcher) deliver(ctx context.Context) (string, error) {
	roots, version := w.Bundle()
	if len(w.targets) == 0 {
		return version, nil
	}
	start := w.cfg.Clock.Now()
	actx, cancel := context.WithCancel(ctx)
	defer cancel()
	t := w.cfg.Clock.NewTimer(deliverTimeout)
	defer t.Stop()
	go func() {
		select {
		case <-t.C():
			cancel()
		case <-actx.Done():
		}
	}()
	pending := 0
	var errs []error
	for _, target := range w.targets {
		n, err := target.DeliverBundle(actx, roots)
		pending += n
		if err != nil {
			errs = append(errs, err)
		}
	}
	w.pending.Set(float64(pending))
	if err := errors.Join(errs...); err != nil {
		return version, err
	}
	w.cfg.Logger.Info("trust bundle delivered to every sink; acknowledging it", "version", version, "roots", len(roots), "took", w.cfg.Clock.Now().Sub(start))
	return version, nil
}

// jitter returns a wait drawn uniformly from [d/2, 3d/2). A CA that
// restarts ends the bundle streams of all its agents at the same instant:
// without it, thousands of agents would dial again in the same second at
// every step of the backoff, overflowing the CA's accept queue (dropped
// SYNs are retried by TCP only after 1 s, 3 s, 7 s...) and queueing
// handshakes that time out before they are served.
func jitter(d time.Duration) time.Duration {
	if d <= 0 {
		return d
	}
	return d/2 + rand.N(d) //nolint:gosec // spreading retries, not a secret
}
