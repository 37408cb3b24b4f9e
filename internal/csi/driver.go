// Package csi is the CSI node plugin csi.mayfly.dev that runs inside the
// node agent. It serves CSI ephemeral inline volumes only: in files mode it
// writes the pod's X.509-SVID, key and trust bundle into the volume and keeps
// them rotated until the volume is unpublished; in socket mode it bind-mounts
// the agent's Workload API socket directory read-only into the volume.
//
// The driver keeps a record of every published volume in a state directory,
// so that an agent restart resumes the rotation of every volume (Resume).
// It keeps the pod's ServiceAccount token (CSIDriver tokenRequests) in
// memory only, replaced by every republish (requiresRepublish), and never
// hands out an expired one (PodTokenSource). It publishes only to the
// kubelet's target paths of inline CSI volumes, never through a symbolic
// link, and unpublishing a volume it does not know removes only what it
// would have made (docs/csi.md).
package csi

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// DriverName is the name of the CSI driver (CSIDriver object, Pod volumes).
const DriverName = "csi.mayfly.dev"

// DefaultTokenAudience is the audience of the ServiceAccount token the
// driver passes on from the kubelet (CSIDriver spec.tokenRequests).
const DefaultTokenAudience = "mayfly-ca"

// DefaultPublishTimeout bounds how long NodePublishVolume waits for the
// first certificate when the caller set no earlier deadline.
const DefaultPublishTimeout = time.Minute

// maxUnmounts bounds the unmounts of stacked mounts at one target.
const maxUnmounts = 8

// Identities obtains and rotates the identities of volumes; the agent's
// identity manager implements it.
type Identities interface {
	// Track starts (or joins) the rotation of id's identity and adds sink
	// to it: sink receives the current credential at once (when there is
	// one) and every new one after. untrack removes the sink again; after
	// it returns, Track's rotation may stop when nothing else needs it.
	// id.PodToken gives the pod's ServiceAccount token for every request
	// to the CA; ask it anew for each request, it changes when the kubelet
	// republishes the volume.
	Track(id VolumeIdentity, sink rotate.Sink) (untrack func(), err error)
}

// Tokens keeps the JWT-SVID token files of volumes (the agent's JWT
// cache and token writers).
type Tokens interface {
	// KeepJWT keeps a JWT-SVID of id's identity for audience in path, with
	// mode 0600 or, with group, 0640 owned by that group; it writes one
	// at once and again at each token's half-life, until stop, which
	// waits for a write in progress. written is told the result of every
	// attempt. id.PodToken is as for Identities.Track.
	KeepJWT(id VolumeIdentity, audience []string, path string, group *int64, written func(error)) (stop func(), err error)
}

// Config configures a Driver.
type Config struct {
	// NodeName is the node ID reported to the kubelet. Required.
	NodeName string
	// StateDir holds one record per published volume (created 0700).
	// Required.
	StateDir string
	// KubeletDir is the kubelet's root directory (--root-dir, default
	// /var/lib/kubelet). Target paths must be
	// <KubeletDir>/pods/<uid>/volumes/kubernetes.io~csi/<name>/mount.
	KubeletDir string
	// SocketDir is the directory of the agent's Workload API socket,
	// bind-mounted read-only into volumes of mode socket. Empty disables
	// mode socket.
	SocketDir string
	// Identities obtains the certificates of files-mode volumes. Required.
	Identities Identities
	// Tokens writes the jwt.token of volumes with the jwtAudience
	// attribute; nil refuses that attribute.
	Tokens Tokens
	// Mounter makes the bind mounts of socket mode; nil means LinuxMounter.
	Mounter Mounter
	// Version is reported by GetPluginInfo; default "dev".
	Version string
	// MinTTL and MaxTTL bound the ttl attribute (default 5m and 24h, the
	// CA's default workload policy).
	MinTTL, MaxTTL time.Duration
	// TokenAudience selects the token passed on from
	// csi.storage.k8s.io/serviceAccount.tokens (default "mayfly-ca").
	TokenAudience string
	// PublishTimeout bounds the wait for the first certificate (default
	// 1m); the request's own deadline applies when it is earlier.
	PublishTimeout time.Duration
	// Clock decides when a pod token has expired; nil means the real clock.
	Clock rotate.Clock
	// Logger receives one line per publish and unpublish; nil discards.
	Logger *slog.Logger
	// Registerer receives the driver's metrics; nil registers none.
	Registerer prometheus.Registerer
}

// Driver is the CSI Identity and Node service of csi.mayfly.dev.
type Driver struct {
	csipb.UnimplementedIdentityServer
	csipb.UnimplementedNodeServer

	cfg   Config
	lim   limits
	store store
	log   *slog.Logger

	mu     sync.Mutex
	vols   map[string]*volume   // by volume ID
	busy   map[string]bool      // volume IDs with an operation in progress
	tokens map[string]*podToken // by pod UID, shared by the pod's volumes

	listening     chan struct{} // closed once Serve listens
	listeningOnce sync.Once
}

// volume is a published volume.
type volume struct {
	rec     record
	sink    *publishSink // files mode
	jwt     *jwtFile     // files mode with jwtAudience
	token   *podToken    // files mode
	untrack func()
}

// stop ends the rotation into the volume; no write is in progress or will
// start once it returns.
func (v *volume) stop() {
	if v.jwt != nil {
		v.jwt.stop()
	}
	if v.untrack != nil {
		v.untrack()
	}
	if v.sink != nil {
		v.sink.close()
	}
}

// jwtFile follows the token writer of a volume: written is closed by its
// first token; refused is closed when the CA refused the first one (the pod
// may not have that identity, or the audience), with the reason in err.
type jwtFile struct {
	stop    func()
	written chan struct{}
	refused chan struct{}

	mu    sync.Mutex
	first bool
	err   error
}

// report is the writer's callback: the first success closes written; a
// refusal before it closes refused.
func (j *jwtFile) report(err error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.err = err
	if j.first {
		return
	}
	switch code := status.Code(err); {
	case err == nil:
		j.first = true
		close(j.written)
	case code == codes.PermissionDenied || code == codes.InvalidArgument:
		j.first = true
		close(j.refused)
	}
}

func (j *jwtFile) lastError() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.err
}

// New returns a Driver. Call Resume before Serve.
func New(cfg Config) (*Driver, error) {
	switch {
	case cfg.NodeName == "":
		return nil, errors.New("csi: NodeName: must not be empty")
	case cfg.StateDir == "":
		return nil, errors.New("csi: StateDir: must not be empty")
	case cfg.Identities == nil:
		return nil, errors.New("csi: Identities: must be set")
	}
	if cfg.SocketDir != "" && !filepath.IsAbs(cfg.SocketDir) {
		return nil, fmt.Errorf("csi: SocketDir: must be absolute, got %q", cfg.SocketDir)
	}
	cfg.KubeletDir = cmp.Or(cfg.KubeletDir, DefaultKubeletDir)
	if !filepath.IsAbs(cfg.KubeletDir) || filepath.Clean(cfg.KubeletDir) == "/" {
		return nil, fmt.Errorf("csi: KubeletDir: must be an absolute directory other than /, got %q", cfg.KubeletDir)
	}
	cfg.KubeletDir = filepath.Clean(cfg.KubeletDir)
	if cfg.Clock == nil {
		cfg.Clock = rotate.RealClock{}
	}
	if cfg.Mounter == nil {
		cfg.Mounter = LinuxMounter{}
	}
	cfg.Version = cmp.Or(cfg.Version, "dev")
	cfg.MinTTL = cmp.Or(cfg.MinTTL, pki.MinWorkloadTTL)
	cfg.MaxTTL = cmp.Or(cfg.MaxTTL, pki.MaxWorkloadTTL)
	if cfg.MinTTL > cfg.MaxTTL {
		return nil, fmt.Errorf("csi: MinTTL (%s) must not exceed MaxTTL (%s)", cfg.MinTTL, cfg.MaxTTL)
	}
	cfg.TokenAudience = cmp.Or(cfg.TokenAudience, DefaultTokenAudience)
	cfg.PublishTimeout = cmp.Or(cfg.PublishTimeout, DefaultPublishTimeout)
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Driver{
		cfg:       cfg,
		lim:       limits{minTTL: cfg.MinTTL, maxTTL: cfg.MaxTTL, tokenAudience: cfg.TokenAudience, kubeletDir: cfg.KubeletDir},
		store:     store{dir: cfg.StateDir},
		log:       cfg.Logger,
		vols:      map[string]*volume{},
		busy:      map[string]bool{},
		tokens:    map[string]*podToken{},
		listening: make(chan struct{}),
	}
	if cfg.Registerer != nil {
		if err := cfg.Registerer.Register(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "mayfly_agent_csi_volumes",
			Help: "CSI inline volumes of csi.mayfly.dev published on this node.",
		}, func() float64 { return float64(d.volumeCount()) })); err != nil {
			return nil, fmt.Errorf("csi: register metrics: %w", err)
		}
	}
	return d, nil
}

func (d *Driver) volumeCount() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.vols)
}

// Volumes returns the IDs of the published volumes (for status and tests).
func (d *Driver) Volumes() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]string, 0, len(d.vols))
	for id := range d.vols {
		out = append(out, id)
	}
	return out
}

// VolumeStatus describes a published volume.
type VolumeStatus struct {
	VolumeID   string `json:"volumeID"`
	TargetPath string `json:"targetPath"`
	Mode       string `json:"mode"`
	Namespace  string `json:"namespace"`
	Pod        string `json:"pod"`
	// Token is the state of the pod's token (files mode).
	Token TokenStatus `json:"token"`
}

// Status returns the published volumes, sorted by volume ID.
func (d *Driver) Status() []VolumeStatus {
	d.mu.Lock()
	vols := make([]*volume, 0, len(d.vols))
	for _, v := range d.vols {
		vols = append(vols, v)
	}
	d.mu.Unlock()
	out := make([]VolumeStatus, 0, len(vols))
	for _, v := range vols {
		s := VolumeStatus{VolumeID: v.rec.VolumeID, TargetPath: v.rec.TargetPath, Mode: v.rec.Mode, Namespace: v.rec.Identity.Namespace, Pod: v.rec.Identity.PodName}
		if v.token != nil {
			s.Token = v.token.status()
		}
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b VolumeStatus) int { return strings.Compare(a.VolumeID, b.VolumeID) })
	return out
}

// tokenHolder returns the token holder of id's pod, counting one more volume
// that uses it.
func (d *Driver) tokenHolder(id VolumeIdentity) *podToken {
	d.mu.Lock()
	defer d.mu.Unlock()
	t := d.tokens[id.PodUID]
	if t == nil {
		t = &podToken{clock: d.cfg.Clock, log: d.log, namespace: id.Namespace, pod: id.PodName}
		d.tokens[id.PodUID] = t
	}
	t.volumes++
	return t
}

// releaseToken forgets one volume of the pod's token holder; the holder goes
// with the pod's last volume.
func (d *Driver) releaseToken(podUID string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if t := d.tokens[podUID]; t != nil {
		if t.volumes--; t.volumes <= 0 {
			delete(d.tokens, podUID)
		}
	}
}

// acquire marks an operation on volume id as running; it fails when one
// already runs (the CSI spec's Aborted case: the kubelet retries).
func (d *Driver) acquire(id string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.busy[id] {
		return status.Errorf(codes.Aborted, "an operation on volume %s is already in progress", id)
	}
	d.busy[id] = true
	return nil
}

func (d *Driver) release(id string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.busy, id)
}

// Resume re-tracks every volume recorded in the state directory, so that
// their certificates keep rotating after an agent restart, and restores
// missing bind mounts of socket-mode volumes. Call it before Serve. A record
// it cannot use is logged and skipped; the error reports only an unreadable
// state directory.
func (d *Driver) Resume(ctx context.Context) error {
	recs, bad, err := d.store.load()
	if err != nil {
		return fmt.Errorf("csi: resume: %w", err)
	}
	for _, err := range bad {
		d.log.Warn("skipping an unreadable CSI volume record; unpublishing the volume removes it", "error", err)
	}
	resumed := 0
	for _, rec := range recs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("csi: resume: %w", err)
		}
		log := d.log.With("volume_id", rec.VolumeID, "target_path", rec.TargetPath, "mode", rec.Mode)
		t, err := checkTarget(rec.TargetPath, d.cfg.KubeletDir)
		if err == nil {
			err = checkNoSymlinks(t, d.cfg.KubeletDir)
		}
		if err != nil {
			log.Error("not resuming a CSI volume whose target path is not acceptable; unpublishing the volume removes its record", "error", err)
			continue
		}
		if _, err := os.Stat(filepath.Dir(rec.TargetPath)); errors.Is(err, fs.ErrNotExist) {
			// The pod's directory is gone: nobody will unpublish this.
			log.Info("dropping the record of a CSI volume whose pod directory is gone")
			if err := d.store.remove(rec.VolumeID); err != nil {
				log.Warn("removing a CSI volume record", "error", err)
			}
			continue
		}
		var v *volume
		switch rec.Mode {
		case ModeFiles:
			if v, err = d.startFiles(rec, d.tokenHolder(rec.Identity)); err != nil {
				d.releaseToken(rec.Identity.PodUID)
			}
		case ModeSocket:
			v, err = d.mountSocket(rec)
		}
		if err != nil {
			log.Error("resuming a CSI volume failed; its certificate will not rotate until it is published again", "error", err)
			continue
		}
		d.mu.Lock()
		d.vols[rec.VolumeID] = v
		d.mu.Unlock()
		resumed++
	}
	d.log.Info("CSI volumes resumed", "count", resumed, "unreadable", len(bad))
	return nil
}

// GetPluginInfo returns the driver's name and version.
func (d *Driver) GetPluginInfo(context.Context, *csipb.GetPluginInfoRequest) (*csipb.GetPluginInfoResponse, error) {
	return &csipb.GetPluginInfoResponse{Name: DriverName, VendorVersion: d.cfg.Version}, nil
}

// GetPluginCapabilities returns no capability: there is no Controller
// service, volumes are inline and local to the node.
func (d *Driver) GetPluginCapabilities(context.Context, *csipb.GetPluginCapabilitiesRequest) (*csipb.GetPluginCapabilitiesResponse, error) {
	return &csipb.GetPluginCapabilitiesResponse{}, nil
}

// Probe reports the driver ready: it serves once Resume has run.
func (d *Driver) Probe(context.Context, *csipb.ProbeRequest) (*csipb.ProbeResponse, error) {
	return &csipb.ProbeResponse{}, nil
}

// NodeGetInfo returns the node name as the node ID.
func (d *Driver) NodeGetInfo(context.Context, *csipb.NodeGetInfoRequest) (*csipb.NodeGetInfoResponse, error) {
	return &csipb.NodeGetInfoResponse{NodeId: d.cfg.NodeName}, nil
}

// NodeGetCapabilities returns VOLUME_MOUNT_GROUP: with fsGroupPolicy: File
// the kubelet passes the pod's fsGroup in volume_mount_group and leaves the
// ownership of the files to the driver (which keeps it on every rotation).
func (d *Driver) NodeGetCapabilities(context.Context, *csipb.NodeGetCapabilitiesRequest) (*csipb.NodeGetCapabilitiesResponse, error) {
	return &csipb.NodeGetCapabilitiesResponse{Capabilities: []*csipb.NodeServiceCapability{{
		Type: &csipb.NodeServiceCapability_Rpc{Rpc: &csipb.NodeServiceCapability_RPC{Type: csipb.NodeServiceCapability_RPC_VOLUME_MOUNT_GROUP}},
	}}}, nil
}

// NodePublishVolume publishes an ephemeral inline volume: in files mode it
// starts the rotation of the pod's identity into target_path and returns
// once the first certificate is written; in socket mode it bind-mounts the
// Workload API socket directory there.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csipb.NodePublishVolumeRequest) (*csipb.NodePublishVolumeResponse, error) {
	p, err := parsePublish(req, d.lim)
	if err != nil {
		return nil, statusOf(err)
	}
	if err := checkNoSymlinks(target{path: p.rec.TargetPath, podUID: p.rec.Identity.PodUID}, d.cfg.KubeletDir); err != nil {
		return nil, statusOf(err)
	}
	rec := &p.rec
	if err := d.acquire(rec.VolumeID); err != nil {
		return nil, err
	}
	defer d.release(rec.VolumeID)
	ctx, cancel := context.WithTimeout(ctx, d.cfg.PublishTimeout)
	defer cancel()

	d.mu.Lock()
	v := d.vols[rec.VolumeID]
	d.mu.Unlock()
	if v != nil {
		if v.rec.TargetPath != rec.TargetPath {
			return nil, status.Errorf(codes.FailedPrecondition, "volume %s is already published at %s", rec.VolumeID, v.rec.TargetPath)
		}
		if !sameVolume(&v.rec, rec) {
			return nil, status.Errorf(codes.AlreadyExists, "volume %s is already published at %s with other attributes", rec.VolumeID, rec.TargetPath)
		}
		// A republish (requiresRepublish: true) brings the kubelet's
		// current token of the pod: later renewals carry it.
		if v.token != nil && p.token != "" {
			v.token.set(p.token, p.tokenExp)
		}
		return d.awaitFirst(ctx, v)
	}

	log := d.log.With("volume_id", rec.VolumeID, "namespace", rec.Identity.Namespace, "pod", rec.Identity.PodName, "mode", rec.Mode)
	if rec.Mode == ModeSocket && d.cfg.SocketDir == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "volume attribute %s: %q is not enabled on this agent (no Workload API socket directory configured)", attrMode, ModeSocket)
	}
	if len(rec.Files.JWTAudience) > 0 && d.cfg.Tokens == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "volume attribute %s: JWT-SVIDs are not served by this agent", attrJWTAud)
	}
	if rec.Mode == ModeSocket {
		if err := searchableByAll(d.cfg.SocketDir); err != nil {
			return nil, status.Errorf(codes.FailedPrecondition, "volume attribute %s: %q: %v", attrMode, ModeSocket, err)
		}
	}
	if err := d.store.save(rec); err != nil {
		return nil, status.Errorf(codes.Internal, "%v", err)
	}
	if rec.Mode == ModeSocket {
		v, err = d.mountSocket(rec)
	} else {
		tok := d.tokenHolder(rec.Identity)
		if p.token != "" {
			tok.set(p.token, p.tokenExp)
		}
		if v, err = d.startFiles(rec, tok); err != nil {
			d.releaseToken(rec.Identity.PodUID)
		}
	}
	if err != nil {
		log.Error("publishing a CSI volume failed", "error", err)
		d.undoPublish(rec, log)
		return nil, status.Errorf(codes.Internal, "publish volume %s: %v", rec.VolumeID, err)
	}
	d.mu.Lock()
	d.vols[rec.VolumeID] = v
	d.mu.Unlock()
	log.Info("CSI volume published", "target_path", rec.TargetPath)
	return d.awaitFirst(ctx, v)
}

// undoPublish removes what a publish that failed left: the target and the
// record.
func (d *Driver) undoPublish(rec *record, log *slog.Logger) {
	if cerr := d.cleanTarget(rec.TargetPath, rec.Mode); cerr != nil {
		log.Warn("cleaning up after a failed publish", "error", cerr)
	} else if rerr := d.store.remove(rec.VolumeID); rerr != nil {
		log.Warn("cleaning up after a failed publish", "error", rerr)
	}
}

// awaitFirst waits until the first certificate of a files-mode volume is
// written, and its first token when it has jwtAudience. On timeout the
// volume stays published (its certificate arrives later) and the kubelet
// retries on Unavailable. When the CA refuses the volume's first token
// (the pod may not have this identity), the volume is unpublished again
// and the refusal is the answer: nothing keeps asking for the pod.
func (d *Driver) awaitFirst(ctx context.Context, v *volume) (*csipb.NodePublishVolumeResponse, error) {
	if v.sink == nil {
		return &csipb.NodePublishVolumeResponse{}, nil
	}
	var tokenWritten, tokenRefused <-chan struct{}
	if v.jwt != nil {
		tokenWritten, tokenRefused = v.jwt.written, v.jwt.refused
	}
	certWritten := v.sink.written
	for certWritten != nil || tokenWritten != nil {
		select {
		case <-certWritten:
			certWritten = nil
		case <-tokenWritten:
			tokenWritten = nil
		case <-tokenRefused:
			return nil, d.refused(v)
		case <-ctx.Done():
			msg := "no certificate issued yet"
			if err := v.sink.lastError(); err != nil {
				msg = fmt.Sprintf("writing the certificate failed: %v", err)
			} else if certWritten == nil {
				msg = "no JWT-SVID issued yet"
				if err := v.jwt.lastError(); err != nil {
					msg = fmt.Sprintf("obtaining the JWT-SVID failed: %v", err)
				}
			}
			return nil, status.Errorf(codes.Unavailable, "volume %s: %s; the kubelet retries", v.rec.VolumeID, msg)
		}
	}
	return &csipb.NodePublishVolumeResponse{}, nil
}

// refused unpublishes v, whose first token the CA refused, and returns the
// refusal with its code (PermissionDenied or InvalidArgument).
func (d *Driver) refused(v *volume) error {
	err := v.jwt.lastError()
	d.mu.Lock()
	if d.vols[v.rec.VolumeID] == v {
		delete(d.vols, v.rec.VolumeID)
	}
	d.mu.Unlock()
	v.stop()
	if v.token != nil {
		d.releaseToken(v.rec.Identity.PodUID)
	}
	log := d.log.With("volume_id", v.rec.VolumeID, "namespace", v.rec.Identity.Namespace, "pod", v.rec.Identity.PodName)
	log.Warn("CSI volume not published: the CA refused its JWT-SVID", "error", err)
	d.undoPublish(&v.rec, log)
	st, _ := status.FromError(err)
	return status.Errorf(st.Code(), "volume %s: %s: %s", v.rec.VolumeID, attrJWTAud, st.Message())
}

// startFiles creates the volume's file sink and tracks its identity, with
// token as the source of the pod's token. The caller releases the token
// holder when it fails.
func (d *Driver) startFiles(rec *record, token *podToken) (*volume, error) {
	files, err := rotate.NewFileSink(rec.TargetPath, rec.sinkOptions())
	if err != nil {
		return nil, err
	}
	sink := newPublishSink(files)
	id := rec.Identity
	id.PodToken = token
	untrack, err := d.cfg.Identities.Track(id, sink)
	if err != nil {
		sink.close()
		return nil, fmt.Errorf("track the identity of %s/%s: %w", id.Namespace, id.ServiceAccount, err)
	}
	v := &volume{rec: *rec, sink: sink, token: token, untrack: untrack}
	if aud := rec.Files.JWTAudience; len(aud) > 0 {
		if d.cfg.Tokens == nil {
			v.stop()
			return nil, fmt.Errorf("volume attribute %s: JWT-SVIDs are not served by this agent", attrJWTAud)
		}
		j := &jwtFile{written: make(chan struct{}), refused: make(chan struct{})}
		j.stop, err = d.cfg.Tokens.KeepJWT(id, aud, filepath.Join(rec.TargetPath, JWTFileName), rec.Files.FSGroup, j.report)
		if err != nil {
			v.stop()
			return nil, fmt.Errorf("keep the JWT-SVID of %s/%s: %w", id.Namespace, id.ServiceAccount, err)
		}
		v.jwt = j
	}
	return v, nil
}

// searchableByAll checks that every user may pass through dir: the volume
// shows dir itself, and a pod's processes run as any user; without o+x
// their clients cannot reach the socket (0666) in it and wait forever.
func searchableByAll(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("socket directory: %w", err)
	}
	if fi.Mode().Perm()&0o001 == 0 {
		return fmt.Errorf("socket directory %s has mode %#o: pods' processes could not reach the socket in it; it needs o+x (0755)", dir, fi.Mode().Perm())
	}
	return nil
}

// mountSocket bind-mounts the socket directory onto the target, unless it
// is mounted already.
func (d *Driver) mountSocket(rec *record) (*volume, error) {
	if d.cfg.SocketDir == "" {
		return nil, errors.New("mode socket is not enabled on this agent")
	}
	if err := os.Mkdir(rec.TargetPath, 0o750); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create target directory: %w", err)
	}
	mounted, err := d.cfg.Mounter.IsMountPoint(rec.TargetPath)
	if err != nil {
		return nil, err
	}
	if !mounted {
		if err := d.cfg.Mounter.BindReadOnly(d.cfg.SocketDir, rec.TargetPath); err != nil {
			return nil, err
		}
	}
	return &volume{rec: *rec}, nil
}

// NodeUnpublishVolume stops the rotation into the volume, unmounts or
// removes its files and the target directory, and forgets the volume. It
// succeeds for volumes it does not know, removing only what it would have
// created there (cleanUnknown).
func (d *Driver) NodeUnpublishVolume(_ context.Context, req *csipb.NodeUnpublishVolumeRequest) (*csipb.NodeUnpublishVolumeResponse, error) {
	id := req.GetVolumeId()
	if err := checkVolumeID(id); err != nil {
		return nil, statusOf(err)
	}
	t, err := checkTarget(req.GetTargetPath(), d.cfg.KubeletDir)
	if err != nil {
		return nil, statusOf(err)
	}
	if err := checkNoSymlinks(t, d.cfg.KubeletDir); err != nil {
		return nil, statusOf(err)
	}
	if err := d.acquire(id); err != nil {
		return nil, err
	}
	defer d.release(id)

	d.mu.Lock()
	v := d.vols[id]
	if v != nil && v.rec.TargetPath == t.path {
		delete(d.vols, id)
	} else {
		v = nil // unknown, or published elsewhere: not this target's volume
	}
	d.mu.Unlock()
	mode, recorded := "", false
	if v != nil {
		v.stop()
		if v.token != nil {
			d.releaseToken(v.rec.Identity.PodUID)
		}
		mode, recorded = v.rec.Mode, true
	} else if rec, err := d.store.read(id + ".json"); err == nil && rec.TargetPath == t.path {
		mode, recorded = rec.Mode, true // recorded, but Resume could not start it
	} else if !errors.Is(err, fs.ErrNotExist) && err != nil {
		recorded = true // an unreadable record of this volume: unpublishing removes it
	}
	if err := d.cleanTarget(t.path, mode); err != nil {
		return nil, status.Errorf(codes.Internal, "unpublish volume %s: %v", id, err)
	}
	if recorded {
		if err := d.store.remove(id); err != nil {
			return nil, status.Errorf(codes.Internal, "%v", err)
		}
	}
	if v != nil {
		d.log.Info("CSI volume unpublished", "volume_id", id, "namespace", v.rec.Identity.Namespace, "pod", v.rec.Identity.PodName, "mode", mode)
	}
	return &csipb.NodeUnpublishVolumeResponse{}, nil
}

// cleanTarget unmounts what the volume mounted at target and removes the
// target. mode is the volume's mode, or "" for a volume the driver does not
// know (cleanUnknown).
func (d *Driver) cleanTarget(target, mode string) error {
	fi, err := os.Lstat(target)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if mode == "" {
		return d.cleanUnknown(target, fi)
	}
	unmounted, err := d.unmountAll(target)
	if err != nil {
		return err
	}
	if !fi.IsDir() {
		return removeIfExists(target)
	}
	if mode == ModeFiles && !unmounted {
		return os.RemoveAll(target)
	}
	// Socket mode: only the empty mount point goes.
	return removeIfExists(target)
}

// unmountAll removes the mounts stacked at target.
func (d *Driver) unmountAll(target string) (unmounted bool, err error) {
	for i := 0; ; i++ {
		mounted, err := d.cfg.Mounter.IsMountPoint(target)
		if err != nil {
			return unmounted, err
		}
		if !mounted {
			return unmounted, nil
		}
		if i == maxUnmounts {
			return unmounted, fmt.Errorf("%s: %w", target, errStillMounted)
		}
		if err := d.cfg.Mounter.Unmount(target); err != nil {
			return unmounted, err
		}
		unmounted = true
	}
}

// cleanUnknown cleans the target of a volume the driver has no record of
// (its record was lost, or the kubelet retries an unpublish that already
// succeeded). It removes only what the driver itself would have made there:
// a bind mount of the socket directory, an empty directory, or a directory
// holding nothing but the atomic writer's layout. Anything else (a link,
// a file, another mount, foreign files) is logged and left alone; the
// unpublish still succeeds, as the CSI spec asks for unknown volumes.
func (d *Driver) cleanUnknown(target string, fi fs.FileInfo) error {
	log := d.log.With("target_path", target)
	if !fi.IsDir() {
		log.Warn("leaving what is at the target of an unknown CSI volume: not a directory", "type", fi.Mode().Type().String())
		return nil
	}
	mounted, err := d.cfg.Mounter.IsMountPoint(target)
	if err != nil {
		return err
	}
	if mounted {
		if !d.isSocketMount(target) {
			log.Warn("leaving a mount at the target of an unknown CSI volume: it is not the Workload API socket directory")
			return nil
		}
		if _, err := d.unmountAll(target); err != nil {
			return err
		}
		return removeIfExists(target)
	}
	ours, why := isAtomicWriterDir(target)
	if !ours {
		log.Warn("leaving the directory of an unknown CSI volume: not what the driver writes", "reason", why)
		return nil
	}
	return os.RemoveAll(target)
}

// isSocketMount reports whether target shows the socket directory (a bind
// mount of it shows the same directory inode).
func (d *Driver) isSocketMount(target string) bool {
	if d.cfg.SocketDir == "" {
		return false
	}
	a, err := os.Stat(target)
	if err != nil {
		return false
	}
	b, err := os.Stat(d.cfg.SocketDir)
	return err == nil && os.SameFile(a, b)
}

// isAtomicWriterDir reports whether dir holds only what rotate.FileSink
// writes: the ..data link to a version directory, version directories of
// regular files, links <name> -> ..data/<name>, and the writer's temporary
// links; and the jwt.token file beside them. An empty directory qualifies.
// why says what did not fit.
func isAtomicWriterDir(dir string) (ok bool, why string) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return false, err.Error()
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case e.Type().IsRegular() && (name == JWTFileName || strings.HasPrefix(name, "."+JWTFileName+".tmp-")):
			// The token file, or its temporary file (atomicfile.WriteFile).
		case e.Type()&fs.ModeSymlink != 0:
			dest, err := os.Readlink(filepath.Join(dir, name))
			if err != nil {
				return false, err.Error()
			}
			switch {
			case name == "..data" || name == "..data_tmp":
				if strings.Contains(dest, "/") || !strings.HasPrefix(dest, "..") {
					return false, fmt.Sprintf("%s points to %q, not a version directory", name, dest)
				}
			case strings.HasPrefix(name, ".."):
				// A temporary user link (..<name>.tmp) being swapped in.
				if !strings.HasSuffix(name, ".tmp") || !strings.HasPrefix(dest, "..data/") {
					return false, fmt.Sprintf("link %s is not the writer's", name)
				}
			default:
				if dest != "..data/"+name {
					return false, fmt.Sprintf("link %s points to %q, not ..data/%s", name, dest, name)
				}
			}
		case e.IsDir() && strings.HasPrefix(name, ".."):
			files, err := os.ReadDir(filepath.Join(dir, name))
			if err != nil {
				return false, err.Error()
			}
			for _, f := range files {
				if !f.Type().IsRegular() {
					return false, fmt.Sprintf("%s/%s is not a regular file", name, f.Name())
				}
			}
		default:
			return false, fmt.Sprintf("%s is not part of the atomic writer's layout", name)
		}
	}
	return true, ""
}

func removeIfExists(path string) error {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// statusOf maps validation errors to InvalidArgument.
func statusOf(err error) error {
	if errors.Is(err, errInvalid) {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}

// publishSink wraps a FileSink: it signals the first successful write,
// keeps the last error for NodePublishVolume's answer, and stops writing
// once closed (close waits for a write in progress), so that an unpublished
// directory is never recreated by a late rotation.
type publishSink struct {
	fs      *rotate.FileSink
	written chan struct{}

	mu     sync.Mutex // held during Put
	closed bool
	first  bool

	errMu   sync.Mutex
	lastErr error
}

func newPublishSink(fs *rotate.FileSink) *publishSink {
	return &publishSink{fs: fs, written: make(chan struct{})}
}

// Put writes c unless the sink is closed.
func (s *publishSink) Put(ctx context.Context, c *rotate.Credential) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	err := s.fs.Put(ctx, c)
	s.errMu.Lock()
	s.lastErr = err
	s.errMu.Unlock()
	if err == nil && !s.first {
		s.first = true
		close(s.written)
	}
	return err
}

// PutBundle replaces the bundle file unless the sink is closed.
func (s *publishSink) PutBundle(ctx context.Context, roots []*x509.Certificate) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	return s.fs.PutBundle(ctx, roots)
}

func (s *publishSink) close() {
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
}

func (s *publishSink) lastError() error {
	s.errMu.Lock()
	defer s.errMu.Unlock()
	return s.lastErr
}
