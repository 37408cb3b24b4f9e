package caapp

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	ctrl "sigs.k8s.io/controller-runtime"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
)

// ErrLiveLeaves refuses ca revoke while leaves still chain to the
// authority (or their count is unknown) without --force.
var ErrLiveLeaves = errors.New("live leaves still chain to the authority")

// cmdTaint is ca taint: mark the current intermediate or root (or the one
// with --serial) as compromised. The leading replica moves issuance off it
// on its next plan, and the bundle then tells every agent to re-issue.
func cmdTaint(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewConfigFlags("ca taint", "CA", stderr)
	role := fs.String("authority", "", "the authority to taint: intermediate or root (required)")
	serial := fs.String("serial", "", "serial (hex) of the key to taint; default the current one")
	force := fs.Bool("force", false, "root: activate the new root at once, without waiting for every agent to hold it in its bundle")
	_, store, err := storeTarget(fs, args, role, roleMissing)
	if err != nil {
		return err
	}
	t, err := authority.TaintAuthority(context.Background(), store, authority.TaintRequest{Role: *role, Serial: *serial, Force: *force}, time.Now())
	if err != nil {
		return fmt.Errorf("tainting in %s: %w", store.Describe(), err)
	}
	fmt.Fprintf(stdout, "%s %s tainted in %s.\n", t.Role, t.Serial, store.Describe())
	switch {
	case t.Role == authority.RoleIntermediate:
		fmt.Fprintln(stdout, "The CA replaces it on its next plan; agents then re-issue every identity chaining to it within rotation.taintReissueWindow.")
	case t.Force:
		fmt.Fprintln(stdout, "The CA publishes a new root and activates it at once; agents that do not hold the new bundle yet fail to verify the new leaves until they do.")
	default:
		fmt.Fprintln(stdout, "The CA publishes a new root and activates it once every connected agent holds it (ca status: agents on the current bundle); taint again with --force to skip the wait.")
	}
	fmt.Fprintf(stdout, "Then watch mayfly_ca_authority_live_leaves{authority=%q} fall to 0 on every replica, and run: ca revoke --authority %s --serial %s\n", t.Role+"/"+t.Serial, t.Role, t.Serial)
	return nil
}

// cmdRevoke is ca revoke: drop a tainted authority from the bundle.
func cmdRevoke(args []string, stdout, stderr io.Writer) error {
	fs := cli.NewConfigFlags("ca revoke", "CA", stderr)
	role := fs.String("authority", "", "the tainted authority to revoke: intermediate or root (required)")
	serial := fs.String("serial", "", "serial (hex) of the tainted key; default the one tainted key of --authority")
	addrs := fs.String("socket", "", "comma-separated status sockets of the CA replicas to ask whether a live leaf still chains to the authority (default: the statusSocket of --config; in Kubernetes run it in each replica's pod, or use --force once every replica's `ca status` shows 0)")
	force := fs.Bool("force", false, "revoke although live leaves still chain to it, or the replicas cannot be asked (those leaves stop verifying)")
	cfg, store, err := storeTarget(fs, args, role, roleMissing)
	if err != nil {
		return err
	}
	if *addrs == "" {
		*addrs = cfg.StatusSocket
	}
	check := func(t authority.Taint) error {
		live, err := liveLeavesOf(strings.Split(*addrs, ","), t)
		switch {
		case err != nil && !*force:
			return fmt.Errorf("%w: cannot count them: %w; pass --force to revoke anyway", ErrLiveLeaves, err)
		case err != nil:
			fmt.Fprintf(stderr, "warning: cannot count the live leaves: %v\n", err)
		case live > 0 && !*force:
			return fmt.Errorf("%w: %d leaves issued by the CA replicas still chain to %s %s; wait for them to be re-issued (ca status), or pass --force", ErrLiveLeaves, live, t.Role, t.Serial)
		case live > 0:
			fmt.Fprintf(stderr, "warning: %d live leaves still chain to %s %s; they stop verifying once the bundle drops it\n", live, t.Role, t.Serial)
		}
		return nil
	}
	t, err := authority.RevokeAuthority(context.Background(), store, authority.RevokeRequest{Role: *role, Serial: *serial, Check: check})
	if err != nil {
		return fmt.Errorf("revoking in %s: %w", store.Describe(), err)
	}
	if t.Role == authority.RoleRoot {
		fmt.Fprintf(stdout, "root %s revoked: it leaves every bundle on the next push.\n", t.Serial)
	} else {
		fmt.Fprintf(stdout, "intermediate %s revoked. Intermediates are never in the bundle: relying parties trust it until it expires (%s) unless its root is tainted and revoked too.\n", t.Serial, t.NotAfter.UTC().Format(time.RFC3339))
	}
	return nil
}

// liveLeavesOf sums the live leaves chaining to t over the replicas'
// status sockets.
func liveLeavesOf(addrs []string, t authority.Taint) (int, error) {
	total := 0
	for _, a := range addrs {
		var st Status
		if err := cli.FetchStatus(strings.TrimSpace(a), "CA", &st); err != nil {
			return 0, err
		}
		for _, l := range st.LiveLeaves {
			if l.Role == t.Role && strings.EqualFold(l.Serial, t.Serial) {
				total += l.Live
			}
		}
	}
	return total, nil
}

// storeTarget parses args into fs and opens the state store of the
// configuration they name, for the commands that work on the stored state
// beside a running CA. When required is not nil, an empty *required (a
// flag the command cannot do without) is refused with the error missing.
func storeTarget(fs *cli.ConfigFlags, args []string, required *string, missing string) (*Config, authority.Store, error) {
	cfg, err := cli.LoadConfig(fs, args, LoadFile)
	if err != nil {
		return nil, nil, err
	}
	if required != nil && *required == "" {
		return nil, nil, errors.New(missing)
	}
	store, err := openStore(cfg)
	if err != nil {
		return nil, nil, err
	}
	return cfg, store, nil
}

// roleMissing is the error of ca taint and ca revoke without --authority.
const roleMissing = "--authority is required (intermediate or root)"

// openStore opens the CA state store cfg names: its directory (standalone)
// or its Secret (Kubernetes), for the commands that work on the stored
// state beside a running CA.
func openStore(cfg *Config) (authority.Store, error) {
	if cfg.Directory != "" {
		return authority.NewDirStore(cfg.Directory)
	}
	rc, err := ctrl.GetConfig()
	if err != nil {
		return nil, fmt.Errorf("kubernetes: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	return authority.NewSecretStore(kube, cfg.Kubernetes.Namespace, cfg.Kubernetes.SecretName), nil
}

// taintInfos lists the taints of the state for ca status.
func taintInfos(s *authority.State) []TaintInfo {
	var out []TaintInfo
	active := map[string]bool{}
	for _, t := range s.ActiveTaints() {
		active[t.Serial] = true
	}
	for _, t := range s.Taints {
		out = append(out, TaintInfo{Role: t.Role, Serial: t.Serial, TaintedAt: t.At, NotAfter: t.NotAfter, Announced: active[t.Serial], Revoked: t.Revoked})
	}
	return out
}

// TaintInfo is one tainted authority in ca status.
type TaintInfo struct {
	Role      string    `json:"role"`
	Serial    string    `json:"serial"`
	TaintedAt time.Time `json:"taintedAt"`
	NotAfter  time.Time `json:"notAfter"`
	// Announced: issuance moved off it and the bundle tells agents to
	// re-issue.
	Announced bool `json:"announced"`
	Revoked   bool `json:"revoked"`
}

func printTaints(w io.Writer, st Status) {
	if len(st.Taints) > 0 {
		fmt.Fprintln(w, "\nTAINTED")
		for _, t := range st.Taints {
			state := "still signs (successor waits for the agents)"
			switch {
			case t.Revoked:
				state = "revoked"
			case t.Announced:
				state = "announced: agents re-issue"
			}
			fmt.Fprintf(w, "  %s %s tainted %s: %s\n", t.Role, t.Serial, t.TaintedAt.UTC().Format(time.RFC3339), state)
		}
	}
	if len(st.LiveLeaves) > 0 {
		fmt.Fprintln(w, "\nLIVE LEAVES (this replica, since it started)")
		for _, l := range st.LiveLeaves {
			fmt.Fprintf(w, "  %s %s: %d\n", l.Role, l.Serial, l.Live)
		}
	}
}
