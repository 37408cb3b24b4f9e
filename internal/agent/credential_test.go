package agent_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mayfly-pki/mayfly/internal/agent"
	"github.com/mayfly-pki/mayfly/pkg/readlimit"
)

// TestServiceAccountTokenFile: the projected token is read anew, trimmed;
// a token file that is missing, a directory or larger than
// MaxTokenFileSize is refused naming kubernetes.tokenFile, and its content
// never shows in the error.
func TestServiceAccountTokenFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	huge := bytes.Repeat([]byte("s3cr3t"), agent.MaxTokenFileSize/6+1)
	for _, tc := range []struct {
		name, path string
		want       string
		wantErr    string
		tooLarge   bool
	}{
		{name: "reads_and_trims", path: write("token", []byte(" eyJ.token.sig\n")), want: "eyJ.token.sig"},
		{name: "missing_file", path: filepath.Join(dir, "absent"), wantErr: "kubernetes.tokenFile: "},
		{name: "directory", path: dir, wantErr: "kubernetes.tokenFile: " + dir + ": a directory"},
		{name: "larger_than_the_limit", path: write("huge", huge), wantErr: "kubernetes.tokenFile: ", tooLarge: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := agent.ServiceAccountRenewalToken(tc.path)(context.Background())
			if tc.wantErr == "" {
				if err != nil || got != tc.want {
					t.Fatalf("token = %q, %v; want %q", got, err, tc.want)
				}
				return
			}
			if err == nil || !strings.HasPrefix(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want it to start with %q", err, tc.wantErr)
			}
			if tc.tooLarge != errors.Is(err, readlimit.ErrTooLarge) {
				t.Errorf("errors.Is(%v, ErrTooLarge) = %v, want %v", err, !tc.tooLarge, tc.tooLarge)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error %q shows the file's content", err)
			}
		})
	}
}
