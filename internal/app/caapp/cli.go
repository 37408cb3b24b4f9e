package caapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

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
  ca agent evict NODE [--until 24h] (--config FILE | --dir DIR)
      Revoke the agent of NODE on every CA replica: its agent SVIDs attested
      before now are refused (renewal, workloads, bundle stream), and NODE
      may not attest again until --until or ` + "`ca agent unevict NODE`" + `.
  ca agent unevict NODE | ca agent list  (--config FILE | --dir DIR)
  ca rotate-root --config FILE [--activate-now]
      Ask the running CA to rotate its self-signed root now: the next root is
      published at once and activated when every node's agent holds it.
      --activate-now activates it at once, without waiting for the nodes.
  ca taint --config FILE --authority intermediate|root [--serial S] [--force]
      Mark a compromised key: issuance moves off it at once (a root waits for
      the agents unless --force) and agents re-issue what chains to it.
  ca revoke --config FILE --authority intermediate|root [--serial S] [--socket S1,S2] [--force]
      Drop a tainted key from the bundle; refused while live leaves chain to it.
  ca backup --config FILE --out PATH
      Copy the stored CA state (every key) into a new file of mode 0600.
  ca restore --config FILE --in PATH [--force]
      Write a backup into the store the configuration names (its directory,
      or its Secret in kubernetes.namespace: a new namespace works); --force
      replaces state that is there. docs/upgrade.md: disaster recovery.
  ca version [--output table|json]
      Print the version, VCS revision and Go version the binary was built from.

See docs/ca.md.
`

// Main is the ca command; it returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	return cli.Main("ca", usage, args, stdout, stderr, map[string]cli.Command{
		"run":         func(a []string) error { return cmdRun(a, stderr) },
		"token":       func(a []string) error { return cmdToken(a, stdout, stderr) },
		"status":      func(a []string) error { return cmdStatus(a, stdout, stderr) },
		"rotate-root": func(a []string) error { return cmdRotateRoot(a, stdout, stderr) },
		"agent":       func(a []string) error { return cmdAgent(a, stdout, stderr, time.Now) },
		"taint":       func(a []string) error { return cmdTaint(a, stdout, stderr) },
		"revoke":      func(a []string) error { return cmdRevoke(a, stdout, stderr) },
		"backup":      func(a []string) error { return cmdBackup(a, stdout, stderr) },
		"restore":     func(a []string) error { return cmdRestore(a, stdout, stderr) },
		"version":     func(a []string) error { return cli.Version("ca", a, stdout, stderr) },
	})
}

func cmdRun(args []string, stderr io.Writer) error {
	fs := cli.NewRunFlags("ca run", "CA", stderr)
	rebootstrap := fs.Bool("allow-rebootstrap", false, "mint a new root although this CA issued before and its state is missing or corrupt (every workload must then get the new trust bundle)")
	cfg, err := cli.LoadConfig(fs.ConfigFlags, args, LoadFile)
	if err != nil {
		return err
	}
	cfg.AllowRebootstrap = *rebootstrap
	return fs.Serve(func(ctx context.Context, log *slog.Logger) error { return Run(ctx, cfg, Options{Logger: log}) })
}

func cmdToken(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "create" {
		return errors.New("usage: ca token create --node NAME [--ttl 10m] (--config FILE | --dir DIR)")
	}
	fs := cli.NewFlags("ca token create", stderr)
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
	fs := cli.NewConfigFlags("ca rotate-root", "CA", stderr)
	activateNow := fs.Bool("activate-now", false, "activate the next root at once, without waiting for every node to hold it (nodes that do not hold it cannot verify certificates under it until they fetch the bundle)")
	_, store, err := storeTarget(fs, args, nil, "")
	if err != nil {
		return err
	}
	if *activateNow {
		if err := authority.RequestRootActivation(context.Background(), store); err != nil {
			return fmt.Errorf("requesting a root activation in %s: %w", store.Describe(), err)
		}
		// The CA logs the activation (warning) when it applies it.
		fmt.Fprintf(stderr, "audit: operator override: next root activates without waiting for the nodes, in %s\n", store.Describe())
		fmt.Fprintf(stdout, "root activation requested in %s: the next root activates at once; watch mayfly_ca_root_adoption_pending_nodes\n", store.Describe())
		return nil
	}
	if err := authority.RequestRootRotation(context.Background(), store); err != nil {
		return fmt.Errorf("requesting a root rotation in %s: %w", store.Describe(), err)
	}
	fmt.Fprintf(stdout, "root rotation requested in %s; watch mayfly_ca_authority_expiry_timestamp_seconds{role=\"root\"} and mayfly_ca_agents_with_current_bundle\n", store.Describe())
	return nil
}
