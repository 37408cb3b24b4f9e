package agent

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

type statusDoc struct {
	Agent      rotate.State   `json:"agent"`
	Identities []agent.Status `json:"identities"`
}

func cmdStatus(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("address", "127.0.0.1:9444", "the agent's healthAddress")
	output := fs.String("output", "table", "table or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	client := &http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + *addr + "/status")
	if err != nil {
		return fmt.Errorf("reaching the agent at %s (is it running, with healthAddress there?): %w", *addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("agent answered %s", resp.Status)
	}
	var doc statusDoc
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&doc); err != nil {
		return fmt.Errorf("decoding the agent's status: %w", err)
	}
	switch *output {
	case "json":
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(doc)
	case "table":
		return printTable(stdout, doc, time.Now())
	default:
		return errors.New("--output: table or json")
	}
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
			bar = lifeBar(rem, s.Current.NotAfter.Sub(s.Current.NotBefore))
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

// lifeBar draws the remaining fraction of a certificate's life.
func lifeBar(remaining, life time.Duration) string {
	const width = 10
	if life <= 0 {
		return "[" + strings.Repeat(" ", width) + "]"
	}
	n := int(float64(width) * float64(remaining) / float64(life))
	n = max(0, min(width, n))
	return "[" + strings.Repeat("#", n) + strings.Repeat(".", width-n) + "]"
}
