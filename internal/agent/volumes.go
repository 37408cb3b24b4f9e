package agent

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"

	"github.com/mayfly-pki/mayfly/internal/csi"
	"github.com/mayfly-pki/mayfly/pkg/rotate"
)

// VolumeIdentities gives CSI volumes their identities from the Manager:
// volumes of one ServiceAccount with the same options share one
// certificate, like Workload API callers do, and a volume's pod is in Pods
// while the volume is published.
type VolumeIdentities struct {
	Manager *Manager
	Pods    *PodIndex
	// JWT writes the token files of volumes with jwtAudience (KeepJWT).
	JWT *JWTFiles
}

var (
	_ csi.Identities = (*VolumeIdentities)(nil)
	_ csi.Tokens     = (*VolumeIdentities)(nil)
)

// volumeKey is the identity key of a volume: its ServiceAccount, and a
// digest of its certificate options when it has any.
func volumeKey(id csi.VolumeIdentity) (string, error) {
	if id.Namespace == "" || id.ServiceAccount == "" || id.PodUID == "" {
		return "", errors.New("volume identity needs namespace, ServiceAccount and pod UID")
	}
	key := id.Namespace + "/" + id.ServiceAccount
	if len(id.DNSNames) > 0 || id.TTL != 0 || id.KeyType != "" {
		h := sha256.Sum256([]byte(strings.Join(id.DNSNames, ",") + "|" + id.TTL.String() + "|" + string(id.KeyType)))
		key += "#" + hex.EncodeToString(h[:6])
	}
	return key, nil
}

// Track adds sink to the identity of the volume's pod and keeps that
// identity alive (a volume counts as a watcher) until untrack.
func (v *VolumeIdentities) Track(id csi.VolumeIdentity, sink rotate.Sink) (func(), error) {
	key, err := volumeKey(id)
	if err != nil {
		return nil, err
	}
	releasePod := v.Pods.Add(key, id.PodUID, id.PodToken)
	rot := v.Manager.Ensure(v.Pods.spec(Spec{Key: key, DNSNames: id.DNSNames, TTL: id.TTL, KeyType: id.KeyType, Path: PathCSI}))
	_, unsubscribe := v.Manager.Subscribe(key)
	removeSink := v.Manager.AddSink(rot, sink)
	var once sync.Once
	return func() {
		once.Do(func() {
			removeSink()
			unsubscribe()
			releasePod()
		})
	}, nil
}

// KeepJWT keeps a JWT-SVID of the volume's identity for audience in path
// (through the JWT cache, so volumes and callers of one identity share
// tokens); the volume's pod authorizes each request, as for Track.
func (v *VolumeIdentities) KeepJWT(id csi.VolumeIdentity, audience []string, path string, group *int64, written func(error)) (func(), error) {
	if v.JWT == nil {
		return nil, errors.New("JWT-SVIDs are not served by this agent")
	}
	key, err := volumeKey(id)
	if err != nil {
		return nil, err
	}
	releasePod := v.Pods.Add(key, id.PodUID, id.PodToken)
	stop := v.JWT.Keep(v.Pods.spec(Spec{Key: key, Path: PathCSI}), audience, JWTFile{Path: path, Group: group, Written: written})
	var once sync.Once
	return func() {
		once.Do(func() {
			stop()
			releasePod()
		})
	}, nil
}
