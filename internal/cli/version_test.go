package cli

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Version("ca", nil, &out, &errb); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out.String(), "ca ") || !strings.Contains(out.String(), "go1.") {
		t.Fatalf("version line = %q", out.String())
	}
	out.Reset()
	if err := Version("agent", []string{"--output", "json"}, &out, &errb); err != nil {
		t.Fatal(err)
	}
	var doc struct{ Version, GoVersion string }
	if err := json.Unmarshal(out.Bytes(), &doc); err != nil || doc.Version == "" || doc.GoVersion == "" {
		t.Fatalf("json = %q (%v)", out.String(), err)
	}
}

func TestVersionBadInput(t *testing.T) {
	var out, errb bytes.Buffer
	if err := Version("ca", []string{"extra"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "no arguments") {
		t.Fatalf("extra argument: err = %v", err)
	}
	if err := Version("ca", []string{"--output", "yaml"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "--output") {
		t.Fatalf("bad output: err = %v", err)
	}
}
