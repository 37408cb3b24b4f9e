package csi

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/mayfly-pki/mayfly/internal/test/filemode"
	"github.com/mayfly-pki/mayfly/pkg/atomicfile"
)

const volID = "csi-5f1b2c3d4e5f60718293a4b5c6d7e8f9"

func wantCode(t *testing.T, err error, code codes.Code, contains string) {
	t.Helper()
	if got := status.Code(err); got != code {
		t.Fatalf("code = %s (%v), want %s", got, err, code)
	}
	if contains != "" && !strings.Contains(status.Convert(err).Message(), contains) {
		t.Fatalf("message %q does not mention %q", status.Convert(err).Message(), contains)
	}
}

func mustPublish(t *testing.T, d *Driver, req *csipb.NodePublishVolumeRequest) {
	t.Helper()
	if _, err := d.NodePublishVolume(context.Background(), req); err != nil {
		t.Fatalf("NodePublishVolume: %v", err)
	}
}

func TestPublishRotatesWithoutMismatch(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	mustPublish(t, e.d, publishRequest(volID, target, podContext(nil)))

	// The first credential is there when NodePublishVolume returns.
	files, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key", "ca.crt")
	if err != nil {
		t.Fatalf("files after publish: %v", err)
	}
	checkPair(t, files[0], files[1])
	if len(files[2]) == 0 {
		t.Fatal("ca.crt is empty")
	}

	var reads atomic.Int64
	stop := make(chan struct{})
	errc := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				errc <- nil
				return
			default:
			}
			got, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key")
			if err != nil {
				errc <- err
				return
			}
			if _, err := matchPair(got[0], got[1]); err != nil {
				errc <- err
				return
			}
			reads.Add(1)
		}
	})
	for i := range 3 {
		c := e.creds.issue()
		e.ids.push(t, c)
		got, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key")
		if err != nil {
			t.Fatal(err)
		}
		if leaf := checkPair(t, got[0], got[1]); leaf.SerialNumber.Cmp(c.Leaf().SerialNumber) != 0 {
			t.Fatalf("rotation %d: file holds serial %s, want %s", i+1, leaf.SerialNumber.Text(16), c.Leaf().SerialNumber.Text(16))
		}
	}
	// Let the reader finish at least one more read after the last swap.
	for start := reads.Load(); reads.Load() == start; {
		select {
		case err := <-errc:
			t.Fatalf("reader: %v", err)
		default:
			runtime.Gosched()
		}
	}
	close(stop)
	wg.Wait()
	if err := <-errc; err != nil {
		t.Fatalf("reader: %v", err)
	}
	t.Logf("%d consistent reads across 3 rotations", reads.Load())
}

func TestPublishFileModes(t *testing.T) {
	t.Run("key is 0600 without fsGroup", func(t *testing.T) {
		e := newIssuedEnv(t)
		target := e.target("pod-a")
		mustPublish(t, e.d, publishRequest(volID, target, podContext(nil)))
		filemode.Want(t, filepath.Join(target, "tls.key"), 0o600)
		filemode.Want(t, filepath.Join(target, "tls.crt"), 0o644)
	})
	t.Run("key is 0640 of the pod's fsGroup and files have custom names", func(t *testing.T) {
		e := newIssuedEnv(t)
		target := e.target("pod-a")
		gid := int64(os.Getgid()) // a group we may chown to without CAP_CHOWN
		req := publishRequest(volID, target, podContext(map[string]string{attrCertFile: "svid.pem", attrKeyFile: "svid-key.pem", attrBundleFile: "bundle.pem"}))
		req.VolumeCapability.GetMount().VolumeMountGroup = strconv64(gid)
		mustPublish(t, e.d, req)
		key := filepath.Join(target, "svid-key.pem")
		filemode.Want(t, key, 0o640)
		fi, err := os.Stat(key)
		if err != nil {
			t.Fatal(err)
		}
		if g := fileGID(fi); g != gid {
			t.Fatalf("key group %d, want %d", g, gid)
		}
		got, err := atomicfile.ReadAtomic(target, "svid.pem", "svid-key.pem", "bundle.pem")
		if err != nil {
			t.Fatal(err)
		}
		checkPair(t, got[0], got[1])
	})
}

func TestPublishRejectsBadRequests(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	without := func(key string) map[string]string {
		m := podContext(nil)
		delete(m, key)
		return m
	}
	block := publishRequest(volID, target, podContext(nil))
	block.VolumeCapability.AccessType = &csipb.VolumeCapability_Block{Block: &csipb.VolumeCapability_BlockVolume{}}
	noCap := publishRequest(volID, target, podContext(nil))
	noCap.VolumeCapability = nil
	badGroup := publishRequest(volID, target, podContext(map[string]string{attrFSGroup: "1000"}))
	badGroup.VolumeCapability.GetMount().VolumeMountGroup = "2000"

	tests := []struct {
		name string
		req  *csipb.NodePublishVolumeRequest
		want string
	}{
		{"empty volume id", publishRequest("", target, podContext(nil)), "volume_id"},
		{"volume id with a slash", publishRequest("a/b", target, podContext(nil)), "volume_id"},
		{"empty target", publishRequest(volID, "", podContext(nil)), "target_path"},
		{"relative target", publishRequest(volID, "pods/x/mount", podContext(nil)), "absolute"},
		{"target with dot-dot", publishRequest(volID, target+"/../../etc", podContext(nil)), "target_path"},
		{"no volume capability", noCap, "volume_capability"},
		{"block access", block, "mount access type"},
		{"not ephemeral", publishRequest(volID, target, without(ctxEphemeral)), ctxEphemeral},
		{"missing pod name", publishRequest(volID, target, without(ctxPodName)), ctxPodName},
		{"missing pod namespace", publishRequest(volID, target, without(ctxPodNamespace)), ctxPodNamespace},
		{"missing pod uid", publishRequest(volID, target, without(ctxPodUID)), ctxPodUID},
		{"missing service account", publishRequest(volID, target, without(ctxServiceAccount)), ctxServiceAccount},
		{"unknown attribute", publishRequest(volID, target, podContext(map[string]string{"dnsName": "web.team-a.svc"})), `"dnsName": unknown`},
		{"bad ttl", publishRequest(volID, target, podContext(map[string]string{attrTTL: "1 hour"})), attrTTL},
		{"ttl below the minimum", publishRequest(volID, target, podContext(map[string]string{attrTTL: "1m"})), "outside"},
		{"ttl above the maximum", publishRequest(volID, target, podContext(map[string]string{attrTTL: "48h"})), "outside"},
		{"key type", publishRequest(volID, target, podContext(map[string]string{attrKeyType: "dsa"})), attrKeyType},
		{"bad DNS name", publishRequest(volID, target, podContext(map[string]string{attrDNSNames: "web.team-a.svc,*.evil"})), "dnsNames[1]"},
		{"duplicate DNS name", publishRequest(volID, target, podContext(map[string]string{attrDNSNames: "a.b,a.b"})), "duplicate"},
		{"cert file escapes", publishRequest(volID, target, podContext(map[string]string{attrCertFile: "../tls.crt"})), attrCertFile},
		{"key file with slash", publishRequest(volID, target, podContext(map[string]string{attrKeyFile: "a/b"})), attrKeyFile},
		{"bundle file dots only", publishRequest(volID, target, podContext(map[string]string{attrBundleFile: "..."})), attrBundleFile},
		{"file reserved prefix", publishRequest(volID, target, podContext(map[string]string{attrCertFile: "..data"})), attrCertFile},
		{"same name twice", publishRequest(volID, target, podContext(map[string]string{attrKeyFile: "tls.crt"})), "already the name"},
		{"empty jwtAudience", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: ""})), "jwtAudience[0]: must be 1 to 256 characters, got 0"},
		{"empty audience in jwtAudience", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "vault,,api"})), "jwtAudience[1]: must be 1 to 256"},
		{"too many audiences", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "a,b,c,d,e"})), "5 audiences, at most 4"},
		{"audience too long", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: strings.Repeat("a", 257)})), "got 257"},
		{"audience with a space", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "my vault"})), "jwtAudience[0]: invalid character ' ' at 2"},
		{"audience with a control character", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "va\x01ult"})), `invalid character '\x01' at 2`},
		{"audience not ASCII", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "vaultÉ"})), "jwtAudience[0]: invalid character"},
		{"duplicate audience", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "vault, vault"})), "jwtAudience[1]: duplicate"},
		{"file named as the token", publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "vault", attrBundleFile: JWTFileName})), "is the token file of jwtAudience"},
		{"socket mode with jwtAudience", publishRequest(volID, target, podContext(map[string]string{attrMode: ModeSocket, attrJWTAud: "vault"})), "does not apply"},
		{"fsGroup not a number", publishRequest(volID, target, podContext(map[string]string{attrFSGroup: "wheel"})), attrFSGroup},
		{"fsGroup differs from the pod's", badGroup, "differs"},
		{"unknown mode", publishRequest(volID, target, podContext(map[string]string{attrMode: "secret"})), attrMode},
		{"socket mode with file options", publishRequest(volID, target, podContext(map[string]string{attrMode: ModeSocket, attrTTL: "1h"})), "does not apply"},
		{"tokens not JSON", publishRequest(volID, target, podContext(map[string]string{ctxTokens: "{"})), ctxTokens},
		{"token without expiry", publishRequest(volID, target, podContext(map[string]string{ctxTokens: `{"mayfly-ca":{"token":"opaque"}}`})), "no exp claim and its expirationTimestamp"},
		{"target outside the kubelet directory", publishRequest(volID, "/etc/mayfly/mount", podContext(nil)), "not under the kubelet directory"},
		{"target is the kubelet directory", publishRequest(volID, e.kubelet, podContext(nil)), "not under the kubelet directory"},
		{"target of another plugin", publishRequest(volID, filepath.Join(e.podsDir, testPodUID, "volumes", "kubernetes.io~secret", "certs", "mount"), podContext(nil)), "not the target of a CSI volume"},
		{"target not named mount", publishRequest(volID, filepath.Join(filepath.Dir(target), "data"), podContext(nil)), "not the target of a CSI volume"},
		{"target below mount", publishRequest(volID, filepath.Join(target, "x"), podContext(nil)), "not the target of a CSI volume"},
		{"target in another pod's directory", publishRequest(volID, filepath.Join(e.podsDir, "other-uid", "volumes", "kubernetes.io~csi", "certs", "mount"), podContext(nil)), "in the directory of pod other-uid"},
		{"staging path", func() *csipb.NodePublishVolumeRequest {
			r := publishRequest(volID, target, podContext(nil))
			r.StagingTargetPath = "/var/lib/kubelet/staging"
			return r
		}(), "staging_target_path"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := e.d.NodePublishVolume(context.Background(), tt.req)
			wantCode(t, err, codes.InvalidArgument, tt.want)
		})
	}
	if n := e.ids.trackCalls(); n != 0 {
		t.Fatalf("%d identities tracked for invalid requests", n)
	}
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target exists after invalid requests: %v", err)
	}
}

func TestPublishIsIdempotent(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	req := publishRequest(volID, target, podContext(map[string]string{attrDNSNames: "web.team-a.svc", attrTTL: "30m", attrKeyType: "ecdsa-p384"}))
	mustPublish(t, e.d, req)
	mustPublish(t, e.d, req)
	if n := e.ids.trackCalls(); n != 1 {
		t.Fatalf("Track called %d times, want 1", n)
	}
	got := e.ids.active()[0]
	if got.TTL != 30*time.Minute || got.KeyType != "ecdsa-p384" || len(got.DNSNames) != 1 || got.PodUID == "" || got.ServiceAccount != "web" {
		t.Fatalf("tracked identity %+v", got)
	}

	_, err := e.d.NodePublishVolume(context.Background(), publishRequest(volID, e.target("pod-b"), req.VolumeContext))
	wantCode(t, err, codes.FailedPrecondition, "already published")
	_, err = e.d.NodePublishVolume(context.Background(), publishRequest(volID, target, podContext(nil)))
	wantCode(t, err, codes.AlreadyExists, "other attributes")
}

func TestPublishWaitsForTheFirstCertificate(t *testing.T) {
	e := newEnv(t) // no credential yet
	target := e.target("pod-a")
	req := publishRequest(volID, target, podContext(nil))

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := e.d.NodePublishVolume(ctx, req)
	wantCode(t, err, codes.Unavailable, "no certificate issued yet")

	done := make(chan error, 1)
	go func() {
		_, err := e.d.NodePublishVolume(context.Background(), req)
		done <- err
	}()
	e.ids.push(t, e.creds.issue())
	if err := <-done; err != nil {
		t.Fatalf("publish after the certificate arrived: %v", err)
	}
	if n := e.ids.trackCalls(); n != 1 {
		t.Fatalf("Track called %d times across the retry, want 1", n)
	}
	if _, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key"); err != nil {
		t.Fatal(err)
	}
}

func TestPublishFailsWhenTrackingFails(t *testing.T) {
	e := newEnv(t)
	e.ids.err = errors.New("unsupported identity")
	target := e.target("pod-a")
	_, err := e.d.NodePublishVolume(context.Background(), publishRequest(volID, target, podContext(nil)))
	wantCode(t, err, codes.Internal, "unsupported identity")
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target left behind: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, volID+".json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("record left behind: %v", err)
	}
}

func TestTokenIsPassedOnButNotStored(t *testing.T) {
	e := newIssuedEnv(t)
	token := fakeJWT(e.clock.Now().Add(time.Hour), "secret-token-value")
	tokens := `{"mayfly-ca":{"token":"` + token + `","expirationTimestamp":"2030-01-01T00:00:00Z"},"other":{"token":"x"}}`
	mustPublish(t, e.d, publishRequest(volID, e.target("pod-a"), podContext(map[string]string{ctxTokens: tokens})))
	if got := e.ids.renew(t); len(got) != 1 || got[0] != token {
		t.Fatalf("renewal sends %q, want the mayfly-ca token", got)
	}
	raw, err := os.ReadFile(filepath.Join(e.stateDir, volID+".json"))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(raw), "secret-token-value") {
		t.Fatal("the state file holds the token")
	}
}

func TestStateFileModes(t *testing.T) {
	e := newIssuedEnv(t)
	mustPublish(t, e.d, publishRequest(volID, e.target("pod-a"), podContext(nil)))
	filemode.Want(t, e.stateDir, fs.ModeDir|0o700)
	filemode.Want(t, filepath.Join(e.stateDir, volID+".json"), 0o600)
}

func TestUnpublish(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	mustPublish(t, e.d, publishRequest(volID, target, podContext(nil)))

	unpublish := func(id, target string) error {
		_, err := e.d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		return err
	}
	if err := unpublish(volID, target); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target still exists: %v", err)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, volID+".json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("record still exists: %v", err)
	}
	if a := e.ids.active(); len(a) != 0 {
		t.Fatalf("still tracked: %+v", a)
	}
	if n := len(e.d.Volumes()); n != 0 {
		t.Fatalf("%d volumes after unpublish", n)
	}
	// A rotation racing with the unpublish must not recreate the directory.
	e.ids.mu.Lock()
	sink := e.ids.tracks[0].sink
	e.ids.mu.Unlock()
	if err := sink.Put(context.Background(), e.creds.issue()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("a late write recreated the target: %v", err)
	}

	t.Run("again and for unknown volumes", func(t *testing.T) {
		if err := unpublish(volID, target); err != nil {
			t.Fatal(err)
		}
		if err := unpublish("csi-unknown", e.target("pod-z")); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("unknown volume with foreign files is left alone", func(t *testing.T) {
		dir := e.target("pod-y")
		if err := os.MkdirAll(dir, 0o750); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "data.db"), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := unpublish("csi-unknown", dir); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(filepath.Join(dir, "data.db")); err != nil {
			t.Fatalf("foreign file removed: %v", err)
		}
	})
	t.Run("validation", func(t *testing.T) {
		wantCode(t, unpublish("", target), codes.InvalidArgument, "volume_id")
		wantCode(t, unpublish(volID, ""), codes.InvalidArgument, "target_path")
		wantCode(t, unpublish(volID, "relative/path"), codes.InvalidArgument, "absolute")
	})
}

func TestResumeAfterRestart(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	tokens := tokenContext(fakeJWT(e.clock.Now().Add(time.Hour), "tok"))
	mustPublish(t, e.d, publishRequest(volID, target, podContext(map[string]string{attrDNSNames: "web.team-a.svc", attrTTL: "2h", ctxTokens: tokens})))
	sockTarget := e.target("pod-b")
	mustPublish(t, e.d, publishRequest("csi-socket", sockTarget, podContext(map[string]string{attrMode: ModeSocket})))
	gone := e.target("pod-gone")
	mustPublish(t, e.d, publishRequest("csi-gone", gone, podContext(nil)))
	if err := os.RemoveAll(filepath.Dir(gone)); err != nil {
		t.Fatal(err)
	}
	// A corrupt record is skipped.
	if err := os.WriteFile(filepath.Join(e.stateDir, "csi-corrupt.json"), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}

	// The agent restarts: a new driver and identity manager, same state
	// directory; the bind mount was lost (say, the node rebooted).
	ids2 := &fakeIdentities{}
	e.mounter.mounts = map[string][]string{}
	d2 := e.newDriver(ids2)
	if err := d2.Resume(context.Background()); err != nil {
		t.Fatal(err)
	}
	active := ids2.active()
	if len(active) != 1 {
		t.Fatalf("tracked after resume: %+v", active)
	}
	got := active[0]
	if got.Namespace != "team-a" || got.ServiceAccount != "web" || got.PodName != "web-0" || got.PodUID == "" ||
		got.TTL != 2*time.Hour || len(got.DNSNames) != 1 || got.DNSNames[0] != "web.team-a.svc" {
		t.Fatalf("resumed identity %+v", got)
	}
	if got := ids2.renew(t); len(got) != 1 || got[0] != "" {
		t.Fatalf("a resumed identity sends token %q; tokens are never stored", got)
	}
	if src := e.mounter.source(sockTarget); src != e.sockDir {
		t.Fatalf("socket volume mounted from %q after resume, want %q", src, e.sockDir)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, "csi-gone.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("record of a volume whose pod is gone kept: %v", err)
	}

	c := e.creds.issue()
	ids2.push(t, c)
	files, err := atomicfile.ReadAtomic(target, "tls.crt", "tls.key")
	if err != nil {
		t.Fatal(err)
	}
	if leaf := checkPair(t, files[0], files[1]); leaf.SerialNumber.Cmp(c.Leaf().SerialNumber) != 0 {
		t.Fatal("the resumed volume did not receive the new certificate")
	}
	// Publishing again (kubelet retry) joins the resumed volume.
	mustPublish(t, d2, publishRequest(volID, target, podContext(map[string]string{attrDNSNames: "web.team-a.svc", attrTTL: "2h", ctxTokens: tokens})))
	if n := ids2.trackCalls(); n != 1 {
		t.Fatalf("Track called %d times, want 1", n)
	}
	if _, err := d2.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: "csi-corrupt", TargetPath: e.target("pod-c")}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(e.stateDir, "csi-corrupt.json")); !errors.Is(err, fs.ErrNotExist) {
		t.Fatal("unpublish kept a corrupt record")
	}
}

func TestSocketMode(t *testing.T) {
	e := newEnv(t)
	target := e.target("pod-a")
	req := publishRequest(volID, target, podContext(map[string]string{attrMode: ModeSocket}))
	req.Readonly = true
	mustPublish(t, e.d, req)
	mustPublish(t, e.d, req) // idempotent
	if src := e.mounter.source(target); src != e.sockDir {
		t.Fatalf("mounted %q, want the socket directory %q", src, e.sockDir)
	}
	if n := len(e.mounter.mounts[target]); n != 1 {
		t.Fatalf("%d mounts at the target, want 1", n)
	}
	if n := e.ids.trackCalls(); n != 0 {
		t.Fatalf("socket mode tracked %d identities", n)
	}
	if _, err := e.d.NodeUnpublishVolume(context.Background(), &csipb.NodeUnpublishVolumeRequest{VolumeId: volID, TargetPath: target}); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.mounter.IsMountPoint(target); ok {
		t.Fatal("still mounted after unpublish")
	}
	if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target still exists: %v", err)
	}

	t.Run("mount failure cleans up", func(t *testing.T) {
		e.mounter.err = errors.New("permission denied")
		defer func() { e.mounter.err = nil }()
		_, err := e.d.NodePublishVolume(context.Background(), req)
		wantCode(t, err, codes.Internal, "permission denied")
		if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("target left behind: %v", err)
		}
	})
	t.Run("refused when the socket directory is closed to other users", func(t *testing.T) {
		if err := os.Chmod(e.sockDir, 0o750); err != nil {
			t.Fatal(err)
		}
		defer os.Chmod(e.sockDir, 0o755) // restores the fixture
		_, err := e.d.NodePublishVolume(context.Background(), req)
		wantCode(t, err, codes.FailedPrecondition, "has mode 0750")
		if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("target created: %v", err)
		}
	})
	t.Run("disabled without a socket directory", func(t *testing.T) {
		d, err := New(Config{NodeName: "n", StateDir: e.stateDir, KubeletDir: e.kubelet, Identities: e.ids, Mounter: e.mounter})
		if err != nil {
			t.Fatal(err)
		}
		_, err = d.NodePublishVolume(context.Background(), req)
		wantCode(t, err, codes.FailedPrecondition, "not enabled")
	})
}

func TestIdentityAndNodeInfo(t *testing.T) {
	e := newEnv(t)
	info, err := e.d.GetPluginInfo(context.Background(), &csipb.GetPluginInfoRequest{})
	if err != nil || info.GetName() != "csi.mayfly.dev" || info.GetVendorVersion() == "" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	ni, err := e.d.NodeGetInfo(context.Background(), &csipb.NodeGetInfoRequest{})
	if err != nil || ni.GetNodeId() != "node-1" {
		t.Fatalf("NodeGetInfo = %v, %v", ni, err)
	}
	_, err = e.d.NodeStageVolume(context.Background(), &csipb.NodeStageVolumeRequest{})
	wantCode(t, err, codes.Unimplemented, "")
	_, err = e.d.NodeGetVolumeStats(context.Background(), &csipb.NodeGetVolumeStatsRequest{})
	wantCode(t, err, codes.Unimplemented, "")
}

func TestConcurrentOperationIsAborted(t *testing.T) {
	e := newEnv(t) // no credential: the first publish waits
	target := e.target("pod-a")
	req := publishRequest(volID, target, podContext(nil))
	done := make(chan error, 1)
	go func() {
		_, err := e.d.NodePublishVolume(context.Background(), req)
		done <- err
	}()
	// Wait until the first publish holds the volume.
	for e.ids.trackCalls() == 0 {
		select {
		case err := <-done:
			t.Fatalf("first publish returned early: %v", err)
		default:
			runtime.Gosched()
		}
	}
	_, err := e.d.NodePublishVolume(context.Background(), req)
	wantCode(t, err, codes.Aborted, "in progress")
	e.ids.push(t, e.creds.issue())
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
