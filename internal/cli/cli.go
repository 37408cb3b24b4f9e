// Package cli holds what the ca and agent commands share: subcommand
// dispatch, the JSON logger, signal handling, and the status socket of a
// running process (StatusServer) that the status subcommands read
// (FetchStatus).
package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mayfly-pki/mayfly/internal/version"
)

// Command is one subcommand: it gets the arguments after its name.
type Command func(args []string) error

// Main dispatches args to the named command and returns the exit code:
// 0 on success or help, 1 on an error (printed as "<name>: <error>").
func Main(name, usage string, args []string, stdout, stderr io.Writer, cmds map[string]Command) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return 0
	}
	cmd, ok := cmds[args[0]]
	var err error
	if ok {
		err = cmd(args[1:])
	} else {
		err = fmt.Errorf("unknown command %q; run `%s --help`", args[0], name)
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintln(stderr, name+":", err)
		return 1
	}
	return 0
}

// Logger returns the JSON logger of a long-running command at level
// (debug, info, warn, error).
func Logger(level string, w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: lvl})), nil
}

// SignalContext is cancelled on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// Render writes v as indented JSON (output "json") or calls table.
func Render(w io.Writer, output string, v any, table func() error) error {
	switch output {
	case "json":
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(v)
	case "table":
		return table()
	default:
		return errors.New("--output: table or json")
	}
}

// LifeBar draws the remaining fraction of a certificate's life in ten
// characters: [######....].
func LifeBar(remaining, life time.Duration) string {
	const width = 10
	n := 0
	if life > 0 {
		n = max(0, min(width, int(float64(width)*float64(remaining)/float64(life))))
	}
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}

// Version is the `version` subcommand of ca and agent: one line, or the
// build info as JSON with --output json.
func Version(name string, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet(name+" version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	output := fs.String("output", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("version takes no arguments, got %q", fs.Args())
	}
	info := version.Get()
	return Render(stdout, *output, info, func() error {
		_, err := fmt.Fprintf(stdout, "%s %s\n", name, info)
		return err
	})
}
