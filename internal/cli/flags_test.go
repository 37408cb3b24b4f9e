package cli_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

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

type doc struct {
	Name string `json:"name"`
}

func TestStatus(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/status":
			_, _ = io.WriteString(w, `{"name":"ca-1"}`)
		default:
			http.NotFound(w, r)
		}
	}))
	t.Cleanup(srv.Close)
	addr := strings.TrimPrefix(srv.URL, "http://")
	table := func(w io.Writer, d doc, now time.Time) error {
		if now.IsZero() {
			t.Error("table called without the time")
		}
		_, err := io.WriteString(w, "NAME "+d.Name+"\n")
		return err
	}
	for _, tc := range []struct {
		name    string
		args    []string
		want    string
		wantErr string
	}{
		{name: "table_by_default", args: []string{"--address", addr}, want: "NAME ca-1\n"},
		{name: "json_on_request", args: []string{"--address", addr, "--output", "json"}, want: "{\n  \"name\": \"ca-1\"\n}\n"},
		{name: "unknown_output_refused", args: []string{"--address", addr, "--output", "yaml"}, wantErr: "--output: table or json"},
		{name: "unreachable_address_says_what_to_check", args: []string{"--address", "127.0.0.1:1"}, wantErr: "reaching the X at 127.0.0.1:1 (is it running, with healthAddress there?)"},
		{name: "unknown_flag_refused", args: []string{"--nope"}, wantErr: "flag provided but not defined: -nope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			var stdout bytes.Buffer
			err := cli.Status("x status", "X", "127.0.0.1:1", tc.args, &stdout, io.Discard, table)
			if tc.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
					t.Fatalf("Status = %v, want an error starting %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || stdout.String() != tc.want {
				t.Fatalf("Status = %v, output %q; want %q", err, stdout.String(), tc.want)
			}
		})
	}
}
