package caapp

import (
	"crypto"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/mayfly-pki/mayfly/internal/adoption"
	"github.com/mayfly-pki/mayfly/internal/authority"
	"github.com/mayfly-pki/mayfly/internal/cli"
	"github.com/mayfly-pki/mayfly/internal/controller/bundlegate"
	"github.com/mayfly-pki/mayfly/internal/issuer"
	"github.com/mayfly-pki/mayfly/pkg/jwtsvid"
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
	// JWTKeys are the JWT signing keys: the active one, a prepared
	// successor and the retired keys still published.
	JWTKeys []JWTKeyInfo `json:"jwtKeys,omitempty"`
	Taints  []TaintInfo  `json:"taints,omitempty"`
	// LiveLeaves counts the leaves this replica issued since it started
	// that are still valid, per authority key.
	LiveLeaves []issuer.AuthorityLeaves `json:"liveLeaves,omitempty"`
	// RootAdoption counts the nodes a waiting next root waits for, across
	// every replica; absent when no root waits.
	RootAdoption *adoption.Status `json:"rootAdoption,omitempty"`
	// Kubernetes are the objects that deliver the bundle to pods
	// (Kubernetes mode).
	Kubernetes *bundlegate.Status `json:"kubernetesDelivery,omitempty"`
	// KubernetesAPIs says which optional APIs the cluster serves (and so
	// which delivery paths are on); Kubernetes mode only.
	KubernetesAPIs *ClusterAPIs `json:"kubernetesAPIs,omitempty"`
	// Upstream names the upstream authority, if any.
	Upstream string `json:"upstream,omitempty"`
	// Keys names the PKCS#11 token of the root and intermediate keys, if
	// any.
	Keys string `json:"keys,omitempty"`
	// RotationFailure says why key rotation (renewing the intermediate
	// from the upstream, say) has been failing on this replica; absent
	// while it works.
	RotationFailure *RotationFailure `json:"rotationFailure,omitempty"`
}

// RotationFailure is authority.RotationFailure as status shows it.
type RotationFailure struct {
	Failures int       `json:"consecutiveFailures"`
	Since    time.Time `json:"since"`
	Step     string    `json:"step"`
	Error    string    `json:"error"`
	RetryAt  time.Time `json:"retryAt"`
}

// withDelivery adds the Kubernetes delivery objects to st.
func withDelivery(st Status, d bundlegate.Status) Status {
	if st.Ready {
		st.Kubernetes = &d
	}
	return st
}

// AgentCounts says how many agents hold the current bundle.
type AgentCounts struct {
	Connected     int `json:"connected"`
	CurrentBundle int `json:"withCurrentBundle"`
	// NotAcked names the connected agents' nodes that have not
	// acknowledged the current bundle a minute after it was sent.
	NotAcked []string `json:"notAcked,omitempty"`
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

// The states of a JWT key in status.
const (
	JWTKeyActive   = "active"   // signs
	JWTKeyPrepared = "prepared" // published; signs once adopted
	JWTKeyRetired  = "retired"  // published until its tokens expired
)

// JWTKeyInfo is one JWT signing key.
type JWTKeyInfo struct {
	KeyID string `json:"kid"`
	Alg   string `json:"alg"`
	State string `json:"state"`
	// NotBefore and NotAfter bound an active or prepared key's life.
	NotBefore time.Time `json:"notBefore,omitzero"`
	NotAfter  time.Time `json:"notAfter,omitzero"`
	// PublishedAt is when a prepared key entered the JWT bundle and JWKS.
	// It signs from ActivatesAt on once every agent holds that bundle, and
	// by ActivatesBy at the latest (the wait for the agents is over).
	PublishedAt time.Time `json:"publishedAt,omitzero"`
	ActivatesAt time.Time `json:"activatesAt,omitzero"`
	ActivatesBy time.Time `json:"activatesBy,omitzero"`
	// PublishedUntil is when a retired key leaves the JWKS: its last
	// token has expired.
	PublishedUntil time.Time `json:"publishedUntil,omitzero"`
}

// jwtKeyInfos lists the JWT keys of s, active first, with the times p's
// schedule gives them.
func jwtKeyInfos(s *authority.State, p authority.Policy) []JWTKeyInfo {
	r := &s.JWT
	alg := func(pub crypto.PublicKey) string {
		a, err := jwtsvid.Algorithm(pub)
		if err != nil {
			return "?"
		}
		return string(a)
	}
	var out []JWTKeyInfo
	if c := r.Current; c != nil {
		out = append(out, JWTKeyInfo{KeyID: c.KeyID, Alg: alg(c.Key.Public()), State: JWTKeyActive, NotBefore: c.NotBefore(), NotAfter: c.NotAfter()})
	}
	if n := r.Next; n != nil {
		k := JWTKeyInfo{KeyID: n.KeyID, Alg: alg(n.Key.Public()), State: JWTKeyPrepared, NotBefore: n.NotBefore(), NotAfter: n.NotAfter(), PublishedAt: r.NextPublishedAt}
		if r.Current != nil {
			sch := p.JWTSchedule()
			k.ActivatesAt = r.ActivatePoint(sch)
			latest := r.NextPublishedAt.Add(sch.AdoptionWait)
			if force := r.Current.NotAfter().Add(-sch.ForceBefore); force.Before(latest) {
				latest = force
			}
			if latest.Before(k.ActivatesAt) {
				latest = k.ActivatesAt
			}
			k.ActivatesBy = latest
		}
		out = append(out, k)
	}
	for _, ret := range r.Retired {
		out = append(out, JWTKeyInfo{KeyID: ret.KeyID, Alg: alg(ret.Public), State: JWTKeyRetired, PublishedUntil: ret.Until})
	}
	return out
}

func statusOf(cfg *Config, mgr *authority.Manager, srv *issuer.Server, ad *adoptionWiring) Status {
	st := Status{TrustDomain: cfg.TrustDomain.String(), Upstream: upstreamName(cfg)}
	if p := cfg.PKCS11; p != nil {
		switch {
		case p.Token != "":
			st.Keys = fmt.Sprintf("PKCS#11 token %q (%s)", p.Token, p.ModulePath)
		case p.Serial != "":
			st.Keys = fmt.Sprintf("PKCS#11 token serial %s (%s)", p.Serial, p.ModulePath)
		default:
			st.Keys = fmt.Sprintf("PKCS#11 token in slot %d (%s)", *p.SlotID, p.ModulePath)
		}
	}
	if f := mgr.Failure(); f.Failures > 0 {
		st.RotationFailure = &RotationFailure{Failures: f.Failures, Since: f.Since, Step: string(f.Step), Error: f.Error, RetryAt: f.RetryAt}
	}
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
		st.Agents.NotAcked = srv.NotAckedAgents()
		st.LiveLeaves = srv.LiveLeaves()
	}
	st.Taints = taintInfos(l.State)
	if ad != nil && ad.collector != nil {
		st.RootAdoption = ad.collector.StatusOf()
	}
	l.State.EachSlot(func(role, slot string, c *x509.Certificate) {
		st.Authorities = append(st.Authorities, SlotInfo{Role: role, Slot: slot, Serial: c.SerialNumber.Text(16), Subject: c.Subject.String(), NotBefore: c.NotBefore, NotAfter: c.NotAfter})
	})
	st.JWTKeys = jwtKeyInfos(l.State, cfg.Policy)
	return st
}

// upstreamName names the configured upstream for status.
func upstreamName(cfg *Config) string {
	switch u := cfg.Upstream; {
	case u == nil:
		return ""
	case u.StepCA != nil:
		return "step-ca " + u.StepCA.URL + " provisioner " + u.StepCA.Provisioner
	case u.CFSSL != nil:
		return "cfssl " + u.CFSSL.URL
	case u.File != nil:
		return "file " + u.File.CertFile
	}
	return ""
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

// maxNotAckedShown bounds the nodes the table names.
const maxNotAckedShown = 20

func printStatus(w io.Writer, st Status, now time.Time) error {
	if !st.Ready {
		fmt.Fprintf(w, "CA %s: NOT READY: %s\n", st.TrustDomain, st.NotReady)
		return nil
	}
	fmt.Fprintf(w, "CA %s: ready, generation %d, bundle %s, agents %d connected / %d on the current bundle\n\n",
		st.TrustDomain, st.Generation, st.BundleVersion, st.Agents.Connected, st.Agents.CurrentBundle)
	if st.Upstream != "" {
		fmt.Fprintf(w, "upstream: %s\n\n", st.Upstream)
	}
	if st.Keys != "" {
		fmt.Fprintf(w, "keys: %s\n\n", st.Keys)
	}
	if f := st.RotationFailure; f != nil {
		fmt.Fprintf(w, "ROTATION FAILING since %s (%d attempts, step %s; the keys in service stay; next try %s):\n  %s\n\n",
			f.Since.UTC().Format(time.RFC3339), f.Failures, f.Step, f.RetryAt.UTC().Format(time.RFC3339), f.Error)
	}
	if a := st.RootAdoption; a != nil {
		printAdoption(w, a)
	}
	if k := st.Kubernetes; k != nil {
		printDelivery(w, k)
	}
	if a := st.KubernetesAPIs; a != nil && (!a.PodCertificateRequests || !a.ClusterTrustBundles) {
		fmt.Fprintf(w, "off: the cluster does not serve certificates.k8s.io/v1 %s\n\n", strings.Join(a.missing(), ", "))
	}
	if n := st.Agents.NotAcked; len(n) > 0 {
		more := ""
		if len(n) > maxNotAckedShown {
			n, more = n[:maxNotAckedShown], fmt.Sprintf(" and %d more (--output json lists all)", len(n)-maxNotAckedShown)
		}
		fmt.Fprintf(w, "agents not acknowledging the current bundle (they hold a root activation back until rotation.rootAckWait): %s%s\n\n", strings.Join(n, ", "), more)
	}
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
	if err := tw.Flush(); err != nil {
		return err
	}
	if err := printJWTKeys(w, st, now); err != nil {
		return err
	}
	printTaints(w, st)
	return nil
}

// printJWTKeys lists the JWT keys: what each is doing and until when.
func printJWTKeys(w io.Writer, st Status, now time.Time) error {
	if len(st.JWTKeys) == 0 {
		return nil
	}
	fmt.Fprintln(w)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JWT KEY\tALG\tSTATE\tUNTIL\tLEFT\t")
	at := func(t time.Time) string { return t.UTC().Format(time.RFC3339) }
	for _, k := range st.JWTKeys {
		kid := k.KeyID
		if len(kid) > 16 {
			kid = kid[:16]
		}
		switch k.State {
		case JWTKeyRetired:
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\tpublished until its last token expired\n", kid, k.Alg, k.State, at(k.PublishedUntil), k.PublishedUntil.Sub(now).Truncate(time.Second))
		default:
			rem := k.NotAfter.Sub(now)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", kid, k.Alg, k.State, at(k.NotAfter), rem.Truncate(time.Second), cli.LifeBar(rem, k.NotAfter.Sub(k.NotBefore)))
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, k := range st.JWTKeys {
		if k.State != JWTKeyPrepared || k.ActivatesBy.IsZero() {
			continue
		}
		fmt.Fprintf(w, "next JWT key %s: published %s; %d of %d connected agents hold the current bundle; signs from %s once all do, by %s at the latest\n",
			k.KeyID, at(k.PublishedAt), st.Agents.CurrentBundle, st.Agents.Connected, at(k.ActivatesAt), at(k.ActivatesBy))
	}
	return nil
}

// printDelivery says which Kubernetes objects still lack the current bundle
// and how long kubelet is still given to project it.
func printDelivery(w io.Writer, k *bundlegate.Status) {
	switch {
	case !k.Tracking:
		fmt.Fprintf(w, "kubernetes delivery: not tracked on this replica (the leader tracks it)\n\n")
	case k.Pending > 0:
		more := ""
		if n := k.Pending - len(k.PendingObjects); n > 0 {
			more = fmt.Sprintf(" and %d more", n)
		}
		fmt.Fprintf(w, "kubernetes delivery: %d of %d objects lack bundle %s: %s%s\n\n", k.Pending, k.Objects, k.BundleVersion, strings.Join(k.PendingObjects, ", "), more)
	default:
		fmt.Fprintf(w, "kubernetes delivery: all %d objects hold bundle %s; propagation delay %s, %s left\n\n", k.Objects, k.BundleVersion, k.PropagationDelay, k.PropagationLeft)
	}
}

func printAdoption(w io.Writer, a *adoption.Status) {
	if !a.Known {
		fmt.Fprintf(w, "next root waits for the nodes (not listed yet); activates anyway in %s\n\n", a.WaitRemaining.Truncate(time.Second))
		return
	}
	fmt.Fprintf(w, "next root: %d of %d nodes hold bundle %s; activates anyway in %s\n", a.Expected-a.Pending, a.Expected, a.BundleVersion, a.WaitRemaining.Truncate(time.Second))
	if a.Pending > 0 {
		more := ""
		if a.Pending > len(a.PendingNodes) {
			more = fmt.Sprintf(" (and %d more)", a.Pending-len(a.PendingNodes))
		}
		fmt.Fprintf(w, "pending nodes: %s%s\n", strings.Join(a.PendingNodes, ", "), more)
	}
	fmt.Fprintln(w)
}
