package csi

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
	"github.com/mayfly-pki/mayfly/pkg/pki"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// Keys of the volume context that the kubelet sets (podInfoOnMount,
// tokenRequests, ephemeral inline volumes).
const (
	kubeletPrefix     = "csi.storage.k8s.io/"
	ctxEphemeral      = kubeletPrefix + "ephemeral"
	ctxPodName        = kubeletPrefix + "pod.name"
	ctxPodNamespace   = kubeletPrefix + "pod.namespace"
	ctxPodUID         = kubeletPrefix + "pod.uid"
	ctxServiceAccount = kubeletPrefix + "serviceAccount.name"
	ctxTokens         = kubeletPrefix + "serviceAccount.tokens"
)

// Volume attributes a pod may set (spec.volumes[].csi.volumeAttributes).
const (
	attrMode       = "mode"
	attrDNSNames   = "dnsNames"
	attrTTL        = "ttl"
	attrKeyType    = "keyType"
	attrCertFile   = "certFile"
	attrKeyFile    = "keyFile"
	attrBundleFile = "bundleFile"
	attrFSGroup    = "fsGroup"
	attrJWTAud     = "jwtAudience"
)

// JWTFileName is the token file of a volume with the jwtAudience attribute.
const JWTFileName = "jwt.token"

// Bounds of the jwtAudience attribute: a few audiences, each a short
// printable word or URL.
const (
	maxJWTAudiences      = 4
	maxJWTAudienceLength = 256
)

// Delivery modes of a volume.
const (
	// ModeFiles writes the SVID, its key and the bundle as PEM files.
	ModeFiles = "files"
	// ModeSocket bind-mounts the agent's Workload API socket directory.
	ModeSocket = "socket"
)

// filesOnly are the attributes that make sense in files mode only.
var filesOnly = []string{attrDNSNames, attrTTL, attrKeyType, attrCertFile, attrKeyFile, attrBundleFile, attrFSGroup, attrJWTAud}

// maxVolumeIDLength is the CSI limit on identifiers (128 bytes).
const maxVolumeIDLength = 128

// VolumeIdentity is the identity an inline volume asks for: the pod's
// ServiceAccount identity, with the options the pod chose.
type VolumeIdentity struct {
	Namespace      string `json:"namespace"`
	ServiceAccount string `json:"serviceAccount"`
	PodName        string `json:"podName"`
	PodUID         string `json:"podUID"`
	// DNSNames are extra DNS SANs; the CA decides whether the pod may have
	// them.
	DNSNames []string `json:"dnsNames,omitempty"`
	// TTL is the requested lifetime; 0 means the agent's default.
	TTL time.Duration `json:"ttl,omitempty"`
	// KeyType is the requested key type; empty means the default.
	KeyType pki.KeyType `json:"keyType,omitempty"`
	// PodToken gives the pod's ServiceAccount token for the CA's audience
	// (CSIDriver tokenRequests): the latest one the kubelet passed, while
	// it is valid. The driver sets it for every files-mode volume; the
	// token is never stored, so a resumed volume has none until the
	// kubelet republishes it.
	PodToken PodTokenSource `json:"-"`
}

// FileOptions are the file names and group of a files-mode volume.
type FileOptions struct {
	CertFile   string `json:"certFile"`
	KeyFile    string `json:"keyFile"`
	BundleFile string `json:"bundleFile"`
	// FSGroup, when set, makes the key 0640 and owned by this group.
	FSGroup *int64 `json:"fsGroup,omitempty"`
	// JWTAudience, when set, keeps a JWT-SVID for these audiences in
	// jwt.token (with the key's mode and group).
	JWTAudience []string `json:"jwtAudience,omitempty"`
}

// record is what the driver keeps about a published volume, on disk and in
// memory. It holds no secret.
type record struct {
	VolumeID   string         `json:"volumeID"`
	TargetPath string         `json:"targetPath"`
	Mode       string         `json:"mode"`
	Identity   VolumeIdentity `json:"identity"`
	Files      FileOptions    `json:"files,omitzero"`
}

func (r *record) sinkOptions() rotate.FileSinkOptions {
	return rotate.FileSinkOptions{CertFile: r.Files.CertFile, KeyFile: r.Files.KeyFile, BundleFile: r.Files.BundleFile, FSGroup: r.Files.FSGroup}
}

// sameVolume reports whether a and b describe the same publication, so that
// publishing b again where a is published is a no-op.
func sameVolume(a, b *record) bool {
	if a.VolumeID != b.VolumeID || a.TargetPath != b.TargetPath || a.Mode != b.Mode {
		return false
	}
	ia, ib := a.Identity, b.Identity
	if ia.Namespace != ib.Namespace || ia.ServiceAccount != ib.ServiceAccount || ia.PodName != ib.PodName ||
		ia.PodUID != ib.PodUID || ia.TTL != ib.TTL || ia.KeyType != ib.KeyType || !slices.Equal(ia.DNSNames, ib.DNSNames) {
		return false
	}
	fa, fb := a.Files, b.Files
	if fa.CertFile != fb.CertFile || fa.KeyFile != fb.KeyFile || fa.BundleFile != fb.BundleFile || !slices.Equal(fa.JWTAudience, fb.JWTAudience) {
		return false
	}
	return (fa.FSGroup == nil) == (fb.FSGroup == nil) && (fa.FSGroup == nil || *fa.FSGroup == *fb.FSGroup)
}

// limits bound what a volume may ask for.
type limits struct {
	minTTL, maxTTL time.Duration
	tokenAudience  string
	kubeletDir     string // clean, absolute
}

// errInvalid marks errors that the driver answers with InvalidArgument.
var errInvalid = errors.New("invalid argument")

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errInvalid}, args...)...)
}

// checkVolumeID accepts identifiers that are safe as a file name: the
// kubelet's "csi-<sha256>" among them.
func checkVolumeID(id string) error {
	if id == "" {
		return invalidf("volume_id: must not be empty")
	}
	if len(id) > maxVolumeIDLength {
		return invalidf("volume_id: %d bytes exceeds %d", len(id), maxVolumeIDLength)
	}
	if id[0] == '.' || id[0] == '-' {
		return invalidf("volume_id %q: must not start with '.' or '-'", id)
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < 'A' || c > 'Z') && (c < '0' || c > '9') && c != '-' && c != '_' && c != '.' {
			return invalidf("volume_id %q: invalid character %q; allowed are [A-Za-z0-9._-]", id, c)
		}
	}
	return nil
}

// checkTargetPath returns the cleaned absolute target path.
func checkTargetPath(p string) (string, error) {
	if p == "" {
		return "", invalidf("target_path: must not be empty")
	}
	if !filepath.IsAbs(p) {
		return "", invalidf("target_path %q: must be an absolute path", p)
	}
	if strings.ContainsRune(p, 0) || slices.Contains(strings.Split(p, "/"), "..") {
		return "", invalidf("target_path %q: must not contain '..' or NUL", p)
	}
	clean := filepath.Clean(p)
	if clean == "/" {
		return "", invalidf("target_path: must not be /")
	}
	return clean, nil
}

// checkFileName accepts plain file names that cannot escape the volume
// directory nor collide with the entries of the atomic writer.
func checkFileName(attr, n string) error {
	if err := atomicfile.CheckName(n); err != nil {
		return invalidf("volume attribute %s: %v", attr, err)
	}
	return nil
}

// parsedPublish is a validated NodePublishVolume request.
type parsedPublish struct {
	rec      record
	readOnly bool
	// token is the pod's token for the CA's audience, "" when the kubelet
	// passed none; tokenExp is its expiry.
	token    string
	tokenExp time.Time
}

// parsePublish validates a NodePublishVolume request. Its errors wrap
// errInvalid and name the field or attribute at fault; they never contain
// the token.
func parsePublish(req *csipb.NodePublishVolumeRequest, lim limits) (*parsedPublish, error) {
	if err := checkVolumeID(req.GetVolumeId()); err != nil {
		return nil, err
	}
	target, err := checkTarget(req.GetTargetPath(), lim.kubeletDir)
	if err != nil {
		return nil, err
	}
	vc := req.GetVolumeCapability()
	if vc == nil {
		return nil, invalidf("volume_capability: must be set")
	}
	if vc.GetMount() == nil {
		return nil, invalidf("volume_capability: only the mount access type is supported (this driver provides files, not block devices)")
	}
	if req.GetStagingTargetPath() != "" {
		return nil, invalidf("staging_target_path: must be empty; this driver does not stage volumes")
	}

	vctx := req.GetVolumeContext()
	if vctx[ctxEphemeral] != "true" {
		return nil, invalidf("volume_context %s: must be \"true\"; %s only serves CSI ephemeral inline volumes (spec.volumes[].csi in a Pod), not PersistentVolumes", ctxEphemeral, DriverName)
	}
	rec := record{VolumeID: req.GetVolumeId(), TargetPath: target.path, Mode: ModeFiles}
	id := &rec.Identity
	for _, f := range []struct {
		key string
		dst *string
	}{
		{ctxPodNamespace, &id.Namespace},
		{ctxPodName, &id.PodName},
		{ctxPodUID, &id.PodUID},
		{ctxServiceAccount, &id.ServiceAccount},
	} {
		if *f.dst = vctx[f.key]; *f.dst == "" {
			return nil, invalidf("volume_context %s: missing; set podInfoOnMount: true in the CSIDriver object", f.key)
		}
	}
	if target.podUID != id.PodUID {
		return nil, invalidf("target_path %q: in the directory of pod %s, but volume_context %s is %s", target.path, target.podUID, ctxPodUID, id.PodUID)
	}

	// Reject unknown attributes so that a typo does not pass silently.
	// Keys under csi.storage.k8s.io/ belong to the kubelet, which may add
	// new ones; they are ignored.
	keys := make([]string, 0, len(vctx))
	for k := range vctx {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		switch k {
		case attrMode, attrDNSNames, attrTTL, attrKeyType, attrCertFile, attrKeyFile, attrBundleFile, attrFSGroup, attrJWTAud:
		default:
			if !strings.HasPrefix(k, kubeletPrefix) {
				return nil, invalidf("volume attribute %q: unknown; known are %s, %s, %s, %s, %s, %s, %s, %s, %s", k,
					attrMode, attrDNSNames, attrTTL, attrKeyType, attrCertFile, attrKeyFile, attrBundleFile, attrFSGroup, attrJWTAud)
			}
		}
	}

	switch m := vctx[attrMode]; m {
	case "", ModeFiles:
	case ModeSocket:
		rec.Mode = ModeSocket
		for _, k := range filesOnly {
			if _, ok := vctx[k]; ok {
				return nil, invalidf("volume attribute %s: does not apply to mode %q (the Workload API serves the identity)", k, ModeSocket)
			}
		}
		return &parsedPublish{rec: rec, readOnly: req.GetReadonly()}, nil
	default:
		return nil, invalidf("volume attribute %s: %q is not %q or %q", attrMode, m, ModeFiles, ModeSocket)
	}

	if v, ok := vctx[attrDNSNames]; ok {
		if id.DNSNames, err = parseDNSNames(v); err != nil {
			return nil, err
		}
	}
	if v, ok := vctx[attrTTL]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return nil, invalidf("volume attribute %s: %q is not a duration such as \"1h\" or \"30m\"", attrTTL, v)
		}
		if d < lim.minTTL || d > lim.maxTTL {
			return nil, invalidf("volume attribute %s: %s is outside [%s, %s]", attrTTL, d, lim.minTTL, lim.maxTTL)
		}
		id.TTL = d
	}
	if v, ok := vctx[attrKeyType]; ok {
		kt, err := pki.ParseKeyType(v)
		if err != nil || v == "" {
			return nil, invalidf("volume attribute %s: %q is not one of %v", attrKeyType, v, pki.KeyTypes())
		}
		id.KeyType = kt
	}

	rec.Files = FileOptions{CertFile: rotate.DefaultCertFile, KeyFile: rotate.DefaultKeyFile, BundleFile: rotate.DefaultBundleFile}
	names := []struct {
		attr string
		dst  *string
	}{{attrCertFile, &rec.Files.CertFile}, {attrKeyFile, &rec.Files.KeyFile}, {attrBundleFile, &rec.Files.BundleFile}}
	for i, n := range names {
		if v, ok := vctx[n.attr]; ok {
			if err := checkFileName(n.attr, v); err != nil {
				return nil, err
			}
			*n.dst = v
		}
		for _, prev := range names[:i] {
			if *prev.dst == *n.dst {
				return nil, invalidf("volume attribute %s: %q is already the name of %s", n.attr, *n.dst, prev.attr)
			}
		}
	}
	if v, ok := vctx[attrJWTAud]; ok {
		if rec.Files.JWTAudience, err = parseJWTAudience(v); err != nil {
			return nil, err
		}
		for _, n := range names {
			if *n.dst == JWTFileName {
				return nil, invalidf("volume attribute %s: %q is the token file of %s", n.attr, JWTFileName, attrJWTAud)
			}
		}
	}

	if rec.Files.FSGroup, err = parseFSGroup(vctx, vc.GetMount().GetVolumeMountGroup()); err != nil {
		return nil, err
	}
	p := &parsedPublish{rec: rec, readOnly: req.GetReadonly()}
	if raw, ok := vctx[ctxTokens]; ok {
		if p.token, p.tokenExp, err = parseToken(raw, lim.tokenAudience); err != nil {
			return nil, err
		}
	}
	return p, nil
}

func parseDNSNames(v string) ([]string, error) {
	var out []string
	for i, n := range strings.Split(v, ",") {
		n = strings.TrimSpace(n)
		if err := pki.CheckDNSName(n); err != nil {
			return nil, invalidf("volume attribute %s[%d]: %w", attrDNSNames, i, err)
		}
		if slices.Contains(out, n) {
			return nil, invalidf("volume attribute %s[%d]: duplicate %q", attrDNSNames, i, n)
		}
		out = append(out, n)
	}
	return out, nil
}

// parseJWTAudience reads the jwtAudience attribute: 1 to maxJWTAudiences
// comma-separated audiences, each 1 to maxJWTAudienceLength printable ASCII
// characters without spaces (a word or a URL), none twice.
func parseJWTAudience(v string) ([]string, error) {
	aud := strings.Split(v, ",")
	for i := range aud {
		aud[i] = strings.TrimSpace(aud[i])
	}
	if err := checkJWTAudience(aud); err != nil {
		return nil, err
	}
	return aud, nil
}

// checkJWTAudience checks an audience list (the attribute, or a record's);
// its errors quote no audience, only its length or the offending character.
func checkJWTAudience(aud []string) error {
	if len(aud) > maxJWTAudiences {
		return invalidf("volume attribute %s: %d audiences, at most %d allowed", attrJWTAud, len(aud), maxJWTAudiences)
	}
	for i, a := range aud {
		if a == "" || len(a) > maxJWTAudienceLength {
			return invalidf("volume attribute %s[%d]: must be 1 to %d characters, got %d", attrJWTAud, i, maxJWTAudienceLength, len(a))
		}
		for j := 0; j < len(a); j++ {
			if c := a[j]; c <= ' ' || c > '~' || c == ',' {
				return invalidf("volume attribute %s[%d]: invalid character %q at %d; allowed are printable ASCII characters other than space and comma", attrJWTAud, i, c, j)
			}
		}
		if slices.Contains(aud[:i], a) {
			return invalidf("volume attribute %s[%d]: duplicate audience", attrJWTAud, i)
		}
	}
	return nil
}

// parseFSGroup takes the group from volume_mount_group (the pod's fsGroup,
// sent by the kubelet with fsGroupPolicy: File) or from the fsGroup
// attribute; both must agree when both are set.
func parseFSGroup(vctx map[string]string, mountGroup string) (*int64, error) {
	parse := func(what, v string) (*int64, error) {
		g, err := strconv.ParseInt(v, 10, 64)
		if err != nil || g < 0 || g > 1<<31-1 {
			return nil, invalidf("%s: %q is not a group ID in [0, 2147483647]", what, v)
		}
		return &g, nil
	}
	var fromMount, fromAttr *int64
	var err error
	if mountGroup != "" {
		if fromMount, err = parse("volume_capability.mount.volume_mount_group", mountGroup); err != nil {
			return nil, err
		}
	}
	if v, ok := vctx[attrFSGroup]; ok {
		if fromAttr, err = parse("volume attribute "+attrFSGroup, v); err != nil {
			return nil, err
		}
	}
	switch {
	case fromMount != nil && fromAttr != nil && *fromMount != *fromAttr:
		return nil, invalidf("volume attribute %s: %d differs from the pod's fsGroup %d", attrFSGroup, *fromAttr, *fromMount)
	case fromMount != nil:
		return fromMount, nil
	default:
		return fromAttr, nil
	}
}

// parseToken extracts the token for audience, and its expiry, from the
// kubelet's serviceAccount.tokens attribute:
//
//	{"<audience>": {"token": "...", "expirationTimestamp": "..."}}
//
// The expiry is the token's exp claim (read, not verified: the CA verifies
// the token), else the kubelet's expirationTimestamp. A missing audience
// yields "". Errors never contain the token.
func parseToken(raw, audience string) (string, time.Time, error) {
	var tokens map[string]struct {
		Token               string `json:"token"`
		ExpirationTimestamp string `json:"expirationTimestamp"`
	}
	if err := json.Unmarshal([]byte(raw), &tokens); err != nil {
		return "", time.Time{}, invalidf("volume_context %s: not a JSON object of audiences to tokens", ctxTokens)
	}
	t, ok := tokens[audience]
	if !ok {
		return "", time.Time{}, nil
	}
	if t.Token == "" {
		return "", time.Time{}, invalidf("volume_context %s: the token for audience %q is empty", ctxTokens, audience)
	}
	if exp, ok := tokenExpiry(t.Token); ok {
		return t.Token, exp, nil
	}
	exp, err := time.Parse(time.RFC3339, t.ExpirationTimestamp)
	if err != nil {
		return "", time.Time{}, invalidf("volume_context %s: the token for audience %q has no exp claim and its expirationTimestamp is not an RFC 3339 time", ctxTokens, audience)
	}
	return t.Token, exp, nil
}
