package cli

import (
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
)

// NewFlags returns the flag set of the subcommand name ("ca run"); its
// errors and help go to stderr, and a bad flag is returned, not exited on.
func NewFlags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

// ConfigFlags are the flags of a subcommand that reads the configuration
// file given by the required --config; the subcommand adds its own flags
// to the embedded FlagSet.
type ConfigFlags struct {
	*flag.FlagSet
	path *string
}

// NewConfigFlags returns the flags of the subcommand name; what names the
// configuration's owner in --config's help ("CA", "agent").
func NewConfigFlags(name, what string, stderr io.Writer) *ConfigFlags {
	fs := NewFlags(name, stderr)
	return &ConfigFlags{FlagSet: fs, path: fs.String("config", "", what+" configuration file (YAML)")}
}

// LoadConfig parses args into fs and loads the --config file with load.
func LoadConfig[C any](fs *ConfigFlags, args []string, load func(path string) (C, error)) (C, error) {
	var zero C
	if err := fs.Parse(args); err != nil {
		return zero, err
	}
	if *fs.path == "" {
		return zero, errors.New("--config is required")
	}
	return load(*fs.path)
}

// RunFlags are the flags of a long-running subcommand: --config and
// --log-level.
type RunFlags struct {
	*ConfigFlags
	level  *string
	stderr io.Writer
}

// NewRunFlags returns the flags of the long-running subcommand name.
func NewRunFlags(name, what string, stderr io.Writer) *RunFlags {
	fs := NewConfigFlags(name, what, stderr)
	return &RunFlags{ConfigFlags: fs, level: fs.String("log-level", "info", "log level: debug, info, warn, error"), stderr: stderr}
}

// Serve calls run with the JSON logger --log-level asks for, on stderr, and
// a context that is cancelled on SIGINT or SIGTERM.
func (f *RunFlags) Serve(run func(ctx context.Context, log *slog.Logger) error) error {
	log, err := Logger(*f.level, f.stderr)
	if err != nil {
		return err
	}
	ctx, stop := SignalContext()
	defer stop()
	return run(ctx, log)
}
