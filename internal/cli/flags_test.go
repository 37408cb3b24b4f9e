package cli_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/cli"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	load := func(path string) (string, error) {
		if path == "bad.yaml" {
			return "", errors.New("bad.yaml: trustDomain: required")
		}
		return "loaded " + path, nil
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{name: "loads_the_config_file", args: []string{"--config", "ca.yaml"}, want: "loaded ca.yaml"},
		{name: "config_required", args: nil, wantErr: "--config is required"},
		{name: "load_error_returned", args: []string{"--config", "bad.yaml"}, wantErr: "bad.yaml: trustDomain: required"},
		{name: "unknown_flag_refused", args: []string{"--config", "ca.yaml", "--nope"}, wantErr: "flag provided but not defined: -nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stderr bytes.Buffer
			got, err := cli.LoadConfig(cli.NewConfigFlags("x run", "X", &stderr), tc.args, load)
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("LoadConfig = %q, %v; want error %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("LoadConfig = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

func TestLoadConfigHelp(t *testing.T) {
	t.Parallel()
	var stderr bytes.Buffer
	fs := cli.NewRunFlags("x run", "X", &stderr)
	fs.Bool("extra", false, "a flag of the subcommand")
	_, err := cli.LoadConfig(fs.ConfigFlags, []string{"--help"}, func(string) (int, error) { return 0, nil })
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("--help: error = %v, want flag.ErrHelp", err)
	}
	for _, want := range []string{"-config", "X configuration file", "-log-level", "-extra"} {
		if !strings.Contains(stderr.String(), want) {
			t.Fatalf("help does not mention %q:\n%s", want, stderr.String())
		}
	}
}

func TestRunFlagsServe(t *testing.T) {
	t.Parallel()
	t.Run("runs_with_the_logger_asked_for", func(t *testing.T) {
		t.Parallel()
		var stderr bytes.Buffer
		fs := cli.NewRunFlags("x run", "X", &stderr)
		if _, err := cli.LoadConfig(fs.ConfigFlags, []string{"--config", "c", "--log-level", "warn"}, func(string) (int, error) { return 0, nil }); err != nil {
			t.Fatal(err)
		}
		err := fs.Serve(func(ctx context.Context, log *slog.Logger) error {
			if ctx.Err() != nil {
				t.Error("context cancelled before any signal")
			}
			log.Info("hidden")
			log.Warn("shown")
			return errors.New("run error")
		})
		if err == nil || err.Error() != "run error" {
			t.Fatalf("Serve = %v, want the run's error", err)
		}
		if out := stderr.String(); strings.Contains(out, "hidden") || !strings.Contains(out, `"msg":"shown"`) {
			t.Fatalf("log at level warn wrote %q", out)
		}
	})
	t.Run("bad_log_level_refused_before_running", func(t *testing.T) {
		t.Parallel()
		fs := cli.NewRunFlags("x run", "X", io.Discard)
		if _, err := cli.LoadConfig(fs.ConfigFlags, []string{"--config", "c", "--log-level", "loud"}, func(string) (int, error) { return 0, nil }); err != nil {
			t.Fatal(err)
		}
		err := fs.Serve(func(context.Context, *slog.Logger) error {
			t.Error("ran with a bad log level")
			return nil
		})
		if err == nil || !strings.HasPrefix(err.Error(), "--log-level: ") {
			t.Fatalf("Serve = %v, want a --log-level error", err)
		}
	})
}
