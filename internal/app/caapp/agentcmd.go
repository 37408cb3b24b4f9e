package caapp

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/mayfly-pki/mayfly/internal/eviction"
	"github.com/mayfly-pki/mayfly/internal/hostnodes"
)

const agentUsage = `usage:
  ca agent evict NODE [--until 24h|2030-01-02T15:04:05Z] (--config FILE | --dir DIR)
  ca agent unevict NODE (--config FILE | --dir DIR)
  ca agent list (--config FILE | --dir DIR)`

// cmdAgent is `ca agent evict|unevict|list`: it edits the eviction list
// every CA replica reads (eviction package).
func cmdAgent(args []string, stdout, stderr io.Writer, now func() time.Time) error {
	if len(args) == 0 {
		return errors.New(agentUsage)
	}
	sub, rest := args[0], args[1:]
	fs := flag.NewFlagSet("ca agent "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	configPath := fs.String("config", "", "CA configuration file (YAML)")
	dir := fs.String("dir", "", "CA state directory, standalone mode (instead of --config)")
	var until *string
	if sub == "evict" {
		until = fs.String("until", "", "refuse new attestations of the node only until then: a duration from now (24h) or an RFC 3339 time; default until `ca agent unevict`")
	}
	var node string
	switch sub {
	case "evict", "unevict":
		var err error
		if node, err = parseWithNode(fs, rest); err != nil {
			return err
		}
	case "list":
		if err := fs.Parse(rest); err != nil {
			return err
		}
		if fs.NArg() != 0 {
			return fmt.Errorf("ca agent list takes no arguments, got %q", fs.Args())
		}
	default:
		return fmt.Errorf("unknown subcommand %q\n%s", sub, agentUsage)
	}
	store, tokens, err := evictionStore(*configPath, *dir)
	if err != nil {
		return err
	}
	ctx := context.Background()
	t := now()
	switch sub {
	case "evict":
		end, err := parseUntil(*until, t)
		if err != nil {
			return err
		}
		if err := store.Update(ctx, func(l eviction.List) (eviction.List, error) { return l.Evict(node, t, end) }); err != nil {
			return fmt.Errorf("evicting %s in %s: %w", node, store.Describe(), err)
		}
		fmt.Fprintf(stdout, "node %s evicted at %s in %s: every CA replica refuses its agent SVIDs attested before then within %s, and closes their bundle streams\n",
			node, t.UTC().Format(time.RFC3339), store.Describe(), eviction.DefaultPollInterval)
		if end.IsZero() {
			fmt.Fprintf(stdout, "new attestations of %s are refused until `ca agent unevict %s`\n", node, node)
		} else {
			fmt.Fprintf(stdout, "new attestations of %s are refused until %s\n", node, end.UTC().Format(time.RFC3339))
		}
		if tokens != nil {
			n, err := tokens.Revoke(node)
			if err != nil {
				return fmt.Errorf("node %s is evicted, but its unused join tokens could not be dropped: %w", node, err)
			}
			if n > 0 {
				fmt.Fprintf(stdout, "dropped %d unused join token(s) of %s\n", n, node)
			}
		}
	case "unevict":
		if err := store.Update(ctx, func(l eviction.List) (eviction.List, error) { return l.Unevict(node, t) }); err != nil {
			return fmt.Errorf("unevicting %s in %s: %w", node, store.Describe(), err)
		}
		fmt.Fprintf(stdout, "node %s may attest again (agent SVIDs attested before its eviction stay refused)\n", node)
	case "list":
		l, err := store.Load(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 2, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NODE\tEVICTED AT\tATTESTATION REFUSED UNTIL\t")
		for _, r := range l.Records() {
			until := "unevict"
			if !r.Until.IsZero() {
				until = r.Until.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t\n", r.Node, r.At.UTC().Format(time.RFC3339), until)
		}
		return tw.Flush()
	}
	return nil
}

// parseWithNode parses flags before and after the one NODE argument.
func parseWithNode(fs *flag.FlagSet, args []string) (string, error) {
	if err := fs.Parse(args); err != nil {
		return "", err
	}
	if fs.NArg() == 0 {
		return "", fmt.Errorf("ca agent %s: NODE is required\n%s", strings.TrimPrefix(fs.Name(), "ca agent "), agentUsage)
	}
	node := fs.Arg(0)
	if err := fs.Parse(fs.Args()[1:]); err != nil {
		return "", err
	}
	if fs.NArg() != 0 {
		return "", fmt.Errorf("one NODE only, got also %q", fs.Args())
	}
	return node, nil
}

// parseUntil reads --until: empty, a positive duration from now, or an
// RFC 3339 time.
func parseUntil(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d <= 0 {
			return time.Time{}, fmt.Errorf("--until: %s is not a positive duration", s)
		}
		return now.Add(d), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--until: want a duration (24h) or an RFC 3339 time (2030-01-02T15:04:05Z), got %q", s)
	}
	return t, nil
}

// evictionStore returns the eviction store of the CA: the state directory
// (with its join tokens, dropped on eviction) or the Secret in the CA's
// namespace, written with the caller's Kubernetes credentials.
func evictionStore(configPath, dir string) (eviction.Store, *hostnodes.JoinTokens, error) {
	switch {
	case dir != "" && configPath != "":
		return nil, nil, errors.New("--config and --dir: set only one")
	case dir != "":
		return eviction.FileStore{Dir: dir}, hostnodes.NewJoinTokens(dir, nil), nil
	case configPath == "":
		return nil, nil, errors.New("--config or --dir is required")
	}
	cfg, err := LoadFile(configPath)
	if err != nil {
		return nil, nil, err
	}
	if cfg.Directory != "" {
		return eviction.FileStore{Dir: cfg.Directory}, hostnodes.NewJoinTokens(cfg.Directory, nil), nil
	}
	rc, err := ctrl.GetConfig()
	if err != nil {
		return nil, nil, fmt.Errorf("kubernetes: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, nil, err
	}
	return eviction.SecretStore{Client: kube, Namespace: cfg.Kubernetes.Namespace}, nil, nil
}
