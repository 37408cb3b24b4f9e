package caapp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"time"

	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
)

const usage = `mayfly CA control plane

Usage:
  ca run --config FILE [--allow-rebootstrap] [--log-level info]
      Run the CA (standalone with "directory:", or Kubernetes with "kubernetes:").
  ca token create --node NAME [--ttl 10m] (--config FILE | --dir DIR)
      Create a single-use join token for the agent of NAME (standalone mode).
      Only its hash is stored; the token is printed once.
  ca status [--config FILE | --socket /tmp/mayfly-ca/status.sock] [--output table|json]
      Show readiness, agents on the current bundle, and every CA certificate,
      read from the CA's status socket (as root or as the CA's user).
  ca rotate-root --config FILE
      Ask the running CA to rotate its self-signed root now: the next root is
      published at once and activated when every agent holds it.

See docs/ca.md.
`

// Main is the ca command; it returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	return cli.Main("ca", usage, args, stdout, stderr, map[string]cli.Command{
		"run":         func(a []string) error { return cmdRun(a, stderr) },
		"token":       func(a []string) error { return cmdToken(a, stdout, stderr) },
		"status":      func(a []string) error { return cmdStatus(a, stdout, stderr) },
		"rotate-root": func(a []string) error { return cmdRotateRoot(a, stdout, stderr) },
	})
}

func cmdRun(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("ca run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "CA configuration file (YAML)")
	rebootstrap := fs.Bool("allow-rebootstrap", false, "mint a new root although this CA issued before and its state is missing or corrupt (every workload must then get the new trust bundle)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("--config is required")
	}
	cfg, err := LoadFile(*configPath)
	if err != nil {
		return err
	}
	cfg.AllowRebootstrap = *rebootstrap
	log, err := cli.Logger(*level, stderr)
	if err != nil {
		return err
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	return Run(ctx, cfg, Options{Logger: log})
}

func cmdToken(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New("usage: ca token create --node NAME [--ttl 10m] (--config FILE | --dir DIR)")
	}
	fs := flag.NewFlagSet("ca token create", flag.ContinueOnError)
	fs.SetOutput(stderr)
	node := fs.String("node", "", "node name the token is for (required)")
	ttl := fs.Duration("ttl", 10*time.Minute, "how long the token may be used (at most 24h)")
	configPath := fs.String("config", "", "CA configuration file; its directory holds the tokens")
	dir := fs.String("dir", "", "CA state directory (instead of --config)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *node == "" {
		return errors.New("--node is required")
	}
	if *dir == "" {
		if *configPath == "" {
			return errors.New("--config or --dir is required")
		}
		cfg, err := LoadFile(*configPath)
		if err != nil {
			return err
		}
		if cfg.Directory == "" {
			return errors.New("join tokens are for standalone mode; in Kubernetes mode agents attest with their ServiceAccount token")
		}
		*dir = cfg.Directory
	}
	tok, err := hostnodes.NewJoinTokens(*dir, nil).Create(*node, *ttl)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, tok)
	return nil
}

func cmdRotateRoot(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ca rotate-root", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "CA configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath == "" {
		return errors.New("--config is required")
	}
	cfg, err := LoadFile(*configPath)
	if err != nil {
		return err
	}
	var store authority.Store
	if cfg.Directory != "" {
		if store, err = authority.NewDirStore(cfg.Directory); err != nil {
			return err
		}
	} else {
		rc, err := ctrl.GetConfig()
		if err != nil {
			return fmt.Errorf("kubernetes: %w", err)
		}
		kube, err := kubernetes.NewForConfig(rc)
		if err != nil {
			return err
		}
		store = authority.NewSecretStore(kube, cfg.Kubernetes.Namespace, cfg.Kubernetes.SecretName)
	}
	if err := authority.RequestRootRotation(context.Background(), store); err != nil {
		return fmt.Errorf("requesting a root rotation in %s: %w", store.Describe(), err)
	}
	fmt.Fprintf(stdout, "root rotation requested in %s; watch mayfly_ca_authority_expiry_timestamp_seconds{role=\"root\"} and mayfly_ca_agents_with_current_bundle\n", store.Describe())
	return nil
}
