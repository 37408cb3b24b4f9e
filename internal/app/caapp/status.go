package caapp

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/issuer"
)

// Status is what `ca status` shows: readiness and every CA certificate.
type Status struct {
	TrustDomain   string      `json:"trustDomain"`
	Ready         bool        `json:"ready"`
	NotReady      string      `json:"notReadyReason,omitempty"`
	Generation    int64       `json:"generation"`
	BundleVersion string      `json:"bundleVersion,omitempty"`
	Agents        AgentCounts `json:"agents"`
	Authorities   []SlotInfo  `json:"authorities"`
}

// AgentCounts says how many agents hold the current bundle.
type AgentCounts struct {
	Connected     int `json:"connected"`
	CurrentBundle int `json:"withCurrentBundle"`
}

// SlotInfo is one CA certificate.
type SlotInfo struct {
	Role      string    `json:"role"`
	Slot      string    `json:"slot"`
	Serial    string    `json:"serial"`
	Subject   string    `json:"subject"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
}

func statusOf(cfg *Config, mgr *authority.Manager, srv *issuer.Server) Status {
	st := Status{TrustDomain: cfg.TrustDomain.String()}
	l, err := mgr.Current()
	if err != nil {
		st.NotReady = err.Error()
		return st
	}
	st.Ready = true
	st.Generation = l.State.Generation
	st.BundleVersion = l.BundleVersion
	if srv != nil {
		st.Agents.Connected, st.Agents.CurrentBundle = srv.AgentCounts()
	}
	l.State.EachSlot(func(role, slot string, c *x509.Certificate) {
		st.Authorities = append(st.Authorities, SlotInfo{Role: role, Slot: slot, Serial: c.SerialNumber.Text(16), Subject: c.Subject.String(), NotBefore: c.NotBefore, NotAfter: c.NotAfter})
	})
	return st
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ca status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", DefaultKubernetesStatusSocket, "the CA's status socket (statusSocket; standalone: <directory>/"+cli.StatusSocketName+")")
	configPath := fs.String("config", "", "the CA's configuration file, to find its status socket (instead of --socket)")
	output := fs.String("output", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *configPath != "" {
		cfg, err := LoadFile(*configPath)
		if err != nil {
			return err
		}
		if cfg.StatusSocket == "" {
			return errors.New("the CA's statusSocket is off in " + *configPath)
		}
		*socket = cfg.StatusSocket
	}
	var st Status
	if err := cli.FetchStatus(*socket, "CA", &st); err != nil {
		return err
	}
	return cli.Render(stdout, *output, st, func() error { return printStatus(stdout, st, time.Now()) })
}

func printStatus(w io.Writer, st Status, now time.Time) error {
	if !st.Ready {
		fmt.Fprintf(w, "CA %s: NOT READY: %s\n", st.TrustDomain, st.NotReady)
		return nil
	}
	fmt.Fprintf(w, "CA %s: ready, generation %d, bundle %s, agents %d connected / %d on the current bundle\n\n",
		st.TrustDomain, st.Generation, st.BundleVersion, st.Agents.Connected, st.Agents.CurrentBundle)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ROLE\tSLOT\tSERIAL\tNOT AFTER\tLEFT\t")
	for _, a := range st.Authorities {
		rem := a.NotAfter.Sub(now)
		serial := a.Serial
		if len(serial) > 16 {
			serial = serial[:16]
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Role, a.Slot, serial, a.NotAfter.UTC().Format(time.RFC3339),
			rem.Truncate(time.Second), cli.LifeBar(rem, a.NotAfter.Sub(a.NotBefore)))
	}
	return tw.Flush()
}
