package agentapp

import (
	"flag"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

type statusDoc struct {
	Agent      rotate.State   `json:"agent"`
	Identities []agent.Status `json:"identities"`
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	socket := fs.String("socket", StatusSocket("/var/lib/mayfly/agent"), "the agent's status socket (<dataDir>/"+cli.StatusSocketName+"); readable by root and the agent's user")
	output := fs.String("output", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var doc statusDoc
	if err := cli.FetchStatus(*socket, "agent", &doc); err != nil {
		return err
	}
	return cli.Render(stdout, *output, doc, func() error { return printTable(stdout, doc, time.Now()) })
}

func printTable(w io.Writer, doc statusDoc, now time.Time) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "IDENTITY\tNOT AFTER\tLEFT\t\tNEXT ROTATION\tROTATIONS\tLAST ERROR")
	row := func(name string, s rotate.State) {
		notAfter, left, bar := "-", "-", ""
		if s.Current != nil {
			notAfter = s.Current.NotAfter.UTC().Format(time.RFC3339)
			rem := s.Current.NotAfter.Sub(now)
			left = rem.Truncate(time.Second).String()
			bar = cli.LifeBar(rem, s.Current.NotAfter.Sub(s.Current.NotBefore))
		}
		next := "-"
		if !s.NextAt.IsZero() {
			next = fmt.Sprintf("in %s (%s)", s.NextAt.Sub(now).Truncate(time.Second), s.NextReason)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", name, notAfter, left, bar, next, s.Rotations, s.LastError)
	}
	row("(agent) "+doc.Agent.Name, doc.Agent)
	for _, id := range doc.Identities {
		name := id.SpiffeID
		if name == "" {
			name = id.Key
		}
		row(name, id.State)
	}
	return tw.Flush()
}
