package agentapp

import (
	"cmp"
	"context"
	"io"
	"log/slog"
	"os"

	"github.com/mayfly-pki/mayfly/internal/cli"
)

const usage = `mayfly node agent

Usage:
  agent run --config FILE [--join-token TOKEN] [--log-level info]
      Run the agent: attest to the CA, serve the SPIFFE Workload API on the
      socket, keep every identity rotated.
  agent status [--socket /var/lib/mayfly/agent/status.sock] [--output table|json]
      Show the identities of a running agent, read from the status socket in
      its dataDir (as root or as the agent's user).
  agent version [--output table|json]
      Print the version, VCS revision and Go version the binary was built from.

  agent mounter --socket PATH --source DIR [--kubelet-dir /var/lib/kubelet]
      The mount helper of an unprivileged agent (kubernetes.csi.mounterSocket):
      bind-mounts DIR (the agent's socket directory) onto CSI target paths
      on request. Runs privileged, holds no key (docs/security.md).

See docs/agent.md and docs/workload-api.md.
`

// Main is the agent command; it returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	return cli.Main("agent", usage, args, stdout, stderr, map[string]cli.Command{
		"run":     func(a []string) error { return cmdRun(a, stderr) },
		"status":  func(a []string) error { return cmdStatus(a, stdout, stderr) },
		"mounter": func(a []string) error { return cmdMounter(a, stderr) },
		"version": func(a []string) error { return cli.Version("agent", a, stdout, stderr) },
	})
}

func cmdRun(args []string, stderr io.Writer) error {
	fs := cli.NewRunFlags("agent run", "agent", stderr)
	joinToken := fs.String("join-token", "", "single-use join token (standalone mode); prefer standalone.joinTokenFile or $MAYFLY_JOIN_TOKEN to keep it out of ps")
	cfg, err := cli.LoadConfig(fs.ConfigFlags, args, LoadFile)
	if err != nil {
		return err
	}
	cfg.JoinToken = cmp.Or(*joinToken, os.Getenv("MAYFLY_JOIN_TOKEN"))
	return fs.Serve(func(ctx context.Context, log *slog.Logger) error { return Run(ctx, cfg, Options{Logger: log}) })
}
