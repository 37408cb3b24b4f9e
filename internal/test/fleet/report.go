package fleet

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Step is what the fleet benchmark measured with Agents agents connected.
type Step struct {
	Agents int `json:"agents"`
	// ConnectSeconds is how long the agents added for this step took to
	// attest and hold the current bundle.
	ConnectSeconds float64 `json:"connectSeconds"`
	// PushSeconds is the time from a new bundle until every agent
	// acknowledged it (mayfly_ca_agents_with_current_bundle).
	PushSeconds float64 `json:"pushSeconds"`
	// ActivateSeconds is the second push of the step: from the
	// activation of the root the first published (ca rotate-root
	// --activate-now, every agent holding it) until every agent
	// acknowledged the bundle that has it first.
	ActivateSeconds float64 `json:"activateSeconds"`
	// HeapMiB and RSSMiB are the CA process's after the push; HeapMiB is
	// the heap in use, garbage not collected yet included, LiveHeapMiB the
	// heap the last collection kept (half the next GC goal, GOGC=100).
	HeapMiB     float64 `json:"heapMiB"`
	LiveHeapMiB float64 `json:"liveHeapMiB"`
	RSSMiB      float64 `json:"rssMiB"`
	// PushCACPUSeconds and PushFleetCPUSeconds are the CPU time of the CA
	// process and of the benchmark's process (the agents) during the push:
	// where the push's time went on the shared cores.
	PushCACPUSeconds    float64 `json:"pushCACPUSeconds"`
	PushFleetCPUSeconds float64 `json:"pushFleetCPUSeconds"`
}

// Report is the outcome of one fleet benchmark run.
type Report struct {
	Pods  int `json:"pods"`
	Nodes int `json:"nodes"`
	// ReadySeconds is the CA's time from process start to /readyz with
	// every pod in the cluster.
	ReadySeconds float64 `json:"readySeconds"`
	// ReadyHeapMiB and ReadyRSSMiB are the CA's once ready, no agent
	// connected.
	ReadyHeapMiB     float64 `json:"readyHeapMiB"`
	ReadyLiveHeapMiB float64 `json:"readyLiveHeapMiB"`
	ReadyRSSMiB      float64 `json:"readyRSSMiB"`
	// HeapPerPodBytes is ReadyLiveHeapMiB over the pods, the CA's own
	// baseline included (an upper bound).
	HeapPerPodBytes float64 `json:"heapPerPodBytes"`
	Steps           []Step  `json:"steps"`
	// Storm is the reconnect of every agent after a CA restart.
	Storm *Storm `json:"storm,omitempty"`
	// Issuance is sustained workload issuance through the fleet.
	Issuance *Issuance `json:"issuance,omitempty"`
	// Times is where the run's wall time went.
	Times Times `json:"times"`
}

// Times is the wall time of the whole run and of each of its stages, in
// seconds, in the order they run.
type Times struct {
	// ClusterSeconds is envtest's start (etcd and the API server).
	ClusterSeconds float64 `json:"clusterSeconds"`
	// PopulateSeconds is the synthetic cluster's creation until the API
	// server served every object.
	PopulateSeconds float64 `json:"populateSeconds"`
	// CASeconds is the CA's start: its build (without MAYFLY_CA_BIN), the
	// baseline CAs, the time to ready and the trust bundle's publication.
	CASeconds float64 `json:"caSeconds"`
	// StepSeconds is each fleet size's stage: agents connected, the push,
	// and the wait for the CA's activation of the pushed root.
	StepSeconds []float64 `json:"stepSeconds"`
	// IssuanceSeconds is the issuance stage: pod tokens, the paced
	// window, the renewals after rollouts.
	IssuanceSeconds float64 `json:"issuanceSeconds"`
	// StormSeconds is the storm stage: the CA's stop and restart until
	// every agent was back.
	StormSeconds float64 `json:"stormSeconds"`
	// TotalSeconds is the whole test, envtest's start included.
	TotalSeconds float64 `json:"totalSeconds"`
}

// Storm is the reconnect storm after a CA restart.
type Storm struct {
	Agents int `json:"agents"`
	// Seconds until every agent was connected again with the current
	// bundle, from the new CA process's start.
	Seconds float64 `json:"seconds"`
	// NotReadySamples counts /readyz answers other than 200 once the new
	// CA was first ready (0: it stayed ready through the storm).
	NotReadySamples int     `json:"notReadySamples"`
	PeakRSSMiB      float64 `json:"peakRSSMiB"`
	// ExtraStreams is how many more bundle streams than agents the CA
	// counted when every agent was back (streams of a connection not yet
	// found gone).
	ExtraStreams int `json:"extraStreams"`
}

// Issuance is a window of paced workload issuance.
type Issuance struct {
	Certificates int     `json:"certificates"`
	Seconds      float64 `json:"seconds"`
	PerSecond    float64 `json:"perSecond"`
	// CPUPercent is the CA process's CPU over the window, in % of one core.
	CPUPercent float64 `json:"cpuPercent"`
	// CPUPercentAt86 is the CA's CPU per certificate times 86 certificates
	// per second, the steady state of 150,000 identities with 1h
	// certificates renewed at half life, in % of one core.
	CPUPercentAt86 float64 `json:"cpuPercentAt86"`
	// CertificatesPerToken is how many certificates of a pod one pod token
	// served (the steady state of the chart's 8 h CSI tokens).
	CertificatesPerToken int `json:"certificatesPerToken"`
	// TokenReviewsPerCert is the API server's TokenReviews per certificate
	// issued with a pod token.
	TokenReviewsPerCert float64 `json:"tokenReviewsPerCert"`
	// RPCsPerRenewal is the items the agents sent per renewal of an
	// identity whose node holds pods of ten earlier rollouts.
	RPCsPerRenewal float64 `json:"rpcsPerRenewal"`
}

// Markdown writes r as the benchmark's table.
func (r *Report) Markdown(w io.Writer) error {
	var b strings.Builder
	fmt.Fprintf(&b, "Cluster: %d pods, %d nodes. CA ready in %.1f s; heap in use %.0f MiB (live %.0f MiB), RSS %.0f MiB once ready (%.0f bytes of live heap per pod, baseline included).\n\n",
		r.Pods, r.Nodes, r.ReadySeconds, r.ReadyHeapMiB, r.ReadyLiveHeapMiB, r.ReadyRSSMiB, r.HeapPerPodBytes)
	b.WriteString("| agents | connect (s) | push until all acked (s) | CPU during the push, CA / agents (s) | activation until all acked (s) | CA heap in use (MiB) | CA live heap (MiB) | CA RSS (MiB) | CA live heap, RSS per agent (KiB) |\n|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range r.Steps {
		perAgent := func(mib, base float64) float64 { return (mib - base) * 1024 / float64(s.Agents) }
		fmt.Fprintf(&b, "| %d | %.1f | %.2f | %.2f / %.2f | %.2f | %.0f | %.0f | %.0f | %.1f, %.1f |\n", s.Agents, s.ConnectSeconds, s.PushSeconds, s.PushCACPUSeconds, s.PushFleetCPUSeconds,
			s.ActivateSeconds, s.HeapMiB, s.LiveHeapMiB, s.RSSMiB, perAgent(s.LiveHeapMiB, r.ReadyLiveHeapMiB), perAgent(s.RSSMiB, r.ReadyRSSMiB))
	}
	if s := r.Storm; s != nil {
		fmt.Fprintf(&b, "\nReconnect storm: %d agents back with the current bundle %.1f s after the CA restarted; /readyz not ready %d times after first ready; peak RSS %.0f MiB; %d streams more than agents.\n",
			s.Agents, s.Seconds, s.NotReadySamples, s.PeakRSSMiB, s.ExtraStreams)
	}
	if i := r.Issuance; i != nil {
		fmt.Fprintf(&b, "\nIssuance: %d certificates in %.1f s (%.1f/s), CA CPU %.1f%% of one core, so %.1f%% at 86/s; %.3f TokenReviews per certificate with a pod token (%d certificates per token); %.2f requests per renewal after ten rollouts.\n",
			i.Certificates, i.Seconds, i.PerSecond, i.CPUPercent, i.CPUPercentAt86, i.TokenReviewsPerCert, i.CertificatesPerToken, i.RPCsPerRenewal)
	}
	if t := r.Times; t.TotalSeconds > 0 {
		b.WriteString("\nWall time (s):\n\n| envtest | population | CA start | ")
		for _, s := range r.Steps {
			fmt.Fprintf(&b, "%d agents | ", s.Agents)
		}
		b.WriteString("issuance | storm | total |\n|" + strings.Repeat("---:|", 6+len(t.StepSeconds)) + "\n")
		fmt.Fprintf(&b, "| %.1f | %.1f | %.1f | ", t.ClusterSeconds, t.PopulateSeconds, t.CASeconds)
		for _, s := range t.StepSeconds {
			fmt.Fprintf(&b, "%.1f | ", s)
		}
		fmt.Fprintf(&b, "%.1f | %.1f | %.1f |\n", t.IssuanceSeconds, t.StormSeconds, t.TotalSeconds)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// Write puts fleet.md, fleet.json and fleet.png into dir.
func (r *Report) Write(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil { //nolint:gosec // benchmark output, not secret
		return err
	}
	var md strings.Builder
	if err := r.Markdown(&md); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.md"), []byte(md.String()), 0o644); err != nil { //nolint:gosec // benchmark output
		return err
	}
	js, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "fleet.json"), append(js, '\n'), 0o644); err != nil { //nolint:gosec // benchmark output
		return err
	}
	return r.plot(filepath.Join(dir, "fleet.png"))
}

// plot draws CA heap (MiB) and push-until-all-acked time (ms) against the
// number of agents, side by side.
func (r *Report) plot(path string) error {
	heap, push := make(plotter.XYs, len(r.Steps)), make(plotter.XYs, len(r.Steps))
	for i, s := range r.Steps {
		heap[i] = plotter.XY{X: float64(s.Agents), Y: s.HeapMiB}
		push[i] = plotter.XY{X: float64(s.Agents), Y: s.PushSeconds * 1000}
	}
	left, right := plot.New(), plot.New()
	left.Title.Text = fmt.Sprintf("CA heap (%d pods)", r.Pods)
	left.X.Label.Text, left.Y.Label.Text = "agents", "MiB"
	right.Title.Text = "new bundle until all acked"
	right.X.Label.Text, right.Y.Label.Text = "agents", "ms"
	if err := plotutil.AddLinePoints(left, "heap", heap); err != nil {
		return err
	}
	if err := plotutil.AddLinePoints(right, "push", push); err != nil {
		return err
	}
	left.Y.Min, right.Y.Min = 0, 0
	img := vgimg.New(12*vg.Inch, 4.5*vg.Inch)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch / 4, PadTop: vg.Inch / 8, PadBottom: vg.Inch / 8, PadLeft: vg.Inch / 8, PadRight: vg.Inch / 8}
	left.Draw(tiles.At(dc, 0, 0))
	right.Draw(tiles.At(dc, 1, 0))
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		_ = f.Close()
		return err
	}
	return f.Close()
}
