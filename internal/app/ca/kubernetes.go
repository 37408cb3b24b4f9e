package ca

import (
	"context"
	"errors"
)

func runKubernetes(ctx context.Context, cfg *Config, opts Options) error {
	return errors.New("kubernetes mode: not wired into the CA binary yet (issue #4); use directory for standalone mode")
}
