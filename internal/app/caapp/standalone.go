package caapp

import (
	"context"
	"path/filepath"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
)

// runStandalone runs the CA on plain hosts: the state in a directory, agents
// attested by join token, workloads authorized by the node policies of the
// configuration.
func runStandalone(ctx context.Context, cfg *Config, opts Options) error {
	store, err := authority.NewDirStore(cfg.Directory)
	if err != nil {
		return err
	}
	nodes := hostnodes.NewAuthorizer(cfg.TrustDomain, cfg.Nodes)
	evictions := newEvictions(ctx, eviction.FileStore{Dir: cfg.Directory}, opts.Logger)
	c, err := newCore(ctx, cfg, opts, modeParts{
		store:      store,
		marker:     authority.FileMarker{Path: filepath.Join(cfg.Directory, TrustBundleFile)},
		attestor:   hostnodes.Attestor{Tokens: hostnodes.NewJoinTokens(cfg.Directory, opts.Clock.Now)},
		authorizer: nodes,
		nodes:      nodes,
		evictions:  evictions,
		adoption:   newStandaloneAdoption(cfg),
	})
	if err != nil {
		return err
	}
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.serve(ctx, c.authority.Ready) })
	g.Go(func() error { return c.authority.Rotate(ctx) })
	g.Go(func() error { return c.authority.ReloadEvery(ctx, 10*time.Second) })
	g.Go(func() error { return evictions.Run(ctx, opts.Clock, eviction.DefaultPollInterval) })
	return g.Wait()
}
