package agent

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

const usage = `mayfly node agent

Usage:
  agent run --config FILE [--join-token TOKEN] [--log-level info]
      Run the agent: attest to the CA, serve the SPIFFE Workload API on the
      socket, keep every identity rotated.
  agent status [--address 127.0.0.1:9444] [--output table|json]
      Show the identities of a running agent (see issue #7 for the full table).

See docs/agent.md and docs/workload-api.md.
`

// Main is the agent command; it returns the process exit code.
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	var err error
	switch args[0] {
	case "run":
		err = cmdRun(args[1:], stderr)
	case "status":
		err = cmdStatus(args[1:], stdout, stderr)
	default:
		err = fmt.Errorf("unknown command %q; run `agent --help`", args[0])
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, "agent:", err)
		return 1
	}
	return 0
}

func cmdRun(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "agent configuration file (YAML)")
	joinToken := fs.String("join-token", "", "single-use join token (standalone mode); prefer standalone.joinTokenFile or $MAYFLY_JOIN_TOKEN to keep it out of ps")
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
	cfg.JoinToken = *joinToken
	if cfg.JoinToken == "" {
		cfg.JoinToken = os.Getenv("MAYFLY_JOIN_TOKEN")
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	log := slog.New(slog.NewJSONHandler(stderr, &slog.HandlerOptions{Level: lvl}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return Run(ctx, cfg, Options{Logger: log})
}
