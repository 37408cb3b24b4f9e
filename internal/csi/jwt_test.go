package csi

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
)

// TestJWTAudienceNeedsTokens: an agent without token writers refuses the
// jwtAudience attribute before it writes anything.
func TestJWTAudienceNeedsTokens(t *testing.T) {
	e := newIssuedEnv(t)
	target := e.target("pod-a")
	_, err := e.d.NodePublishVolume(context.Background(), publishRequest(volID, target, podContext(map[string]string{attrJWTAud: "vault"})))
	wantCode(t, err, codes.FailedPrecondition, "jwtAudience: JWT-SVIDs are not served by this agent")
	if _, err := os.Stat(target); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("target after a refused publish: %v", err)
	}
	if n := e.ids.trackCalls(); n != 0 {
		t.Fatalf("%d identities tracked", n)
	}
}

// TestStateRecordJWTAudience: a record's audiences are checked as the
// attribute is; a record with a bad one is not resumed.
func TestStateRecordJWTAudience(t *testing.T) {
	s := store{dir: t.TempDir()}
	good := &record{VolumeID: "csi-a", TargetPath: "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/a/mount", Mode: ModeFiles,
		Files: FileOptions{CertFile: "tls.crt", KeyFile: "tls.key", BundleFile: "ca.crt", JWTAudience: []string{"vault", "https://sts.example.com"}}}
	if err := s.save(good); err != nil {
		t.Fatal(err)
	}
	got, err := s.read("csi-a.json")
	if err != nil {
		t.Fatal(err)
	}
	if !sameVolume(got, good) {
		t.Fatalf("record read back %+v, want %+v", got, good)
	}
	for name, aud := range map[string][]string{
		"a comma":      {"vault,api"},
		"a space":      {"my vault"},
		"too many":     {"a", "b", "c", "d", "e"},
		"an empty one": {""},
		"one twice":    {"vault", "vault"},
		"one too long": {strings.Repeat("a", maxJWTAudienceLength+1)},
	} {
		bad := *good
		bad.VolumeID = "csi-bad"
		bad.Files.JWTAudience = aud
		if err := s.save(&bad); err != nil {
			t.Fatal(err)
		}
		if _, err := s.read("csi-bad.json"); err == nil || !strings.Contains(err.Error(), attrJWTAud) {
			t.Errorf("record with %s: %v, want an error naming %s", name, err, attrJWTAud)
		}
	}
}
