package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

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
}

// BundleWatcher holds the trust bundle in force: the initial one, then
// every one the CA sends, on its WatchBundle stream (Watch) or with an
// agent SVID (Install). It acknowledges each bundle it installed, so that
// the CA knows when every agent trusts a next root, and signals every
// change to its subscribers.
type BundleWatcher struct {
	cfg     BundleWatcherConfig
	cur     atomic.Pointer[bundleState]
	changes notify.Notifier
}

type bundleState struct {
	certs   []*x509.Certificate
	version string
	taints  Taints
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
	w := &BundleWatcher{cfg: cfg}
	w.cur.Store(&bundleState{certs: cfg.Initial})
	return w, nil
}

// Bundle returns the roots in force and the CA's version of them ("" for
// the initial or a persisted bundle).
func (w *BundleWatcher) Bundle() ([]*x509.Certificate, string) {
	b := w.cur.Load()
	return b.certs, b.version
}

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
	if cur := w.cur.Load(); cur.version == b.GetVersion() && cur.version != "" {
		return true
	}
	taints := taintsOf(b)
	w.cur.Store(&bundleState{certs: roots, version: b.GetVersion(), taints: taints})
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
// a backoff of 1s doubling to 10s on the injected clock.
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
		w.cfg.Logger.Warn("bundle stream ended; reconnecting", "error", err, "retry_in", backoff)
		t := w.cfg.Clock.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C():
		case <-replaced:
			t.Stop()
		}
		backoff = min(backoff*2, 10*time.Second)
	}
	return nil
}

func (w *BundleWatcher) stream(ctx context.Context, client issuerv1.IssuerClient) error {
	stream, err := client.WatchBundle(ctx)
	if err != nil {
		return err
	}
	for {
		b, err := stream.Recv()
		if err != nil {
			return err
		}
		if w.Install(b) {
			if err := stream.Send(&issuerv1.BundleAck{Version: b.GetVersion()}); err != nil {
				return err
			}
		}
	}
}
