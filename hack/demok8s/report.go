package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"
)

// logFile is the JSON log of a component that runs in this process.
type logFile struct {
	path   string
	logger *slog.Logger
	close  func()
}

func openLog(path string) (*logFile, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	return &logFile{path: path, logger: slog.New(slog.NewJSONHandler(f, nil)), close: func() { _ = f.Close() }}, nil
}

// clientLog is the demo client's output: each line is shown and kept in a
// file, and the last summary line ("demo-client: N handshakes, M failed")
// is remembered.
type clientLog struct {
	mu      sync.Mutex
	file    *os.File
	partial []byte
	last    string
}

func newClientLog(path string) (*clientLog, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	return &clientLog{file: f}, nil
}

func (c *clientLog) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.partial = append(c.partial, p...)
	for {
		i := bytes.IndexByte(c.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		c.line(string(c.partial[:i]))
		c.partial = c.partial[i+1:]
	}
}

func (c *clientLog) line(line string) {
	fmt.Println(line)
	_, _ = fmt.Fprintln(c.file, line)
	if strings.HasPrefix(line, "demo-client: ") {
		c.last = line
	}
}

// summary returns the last summary line, after the client exited.
func (c *clientLog) summary() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.partial) > 0 {
		c.line(string(c.partial))
		c.partial = nil
	}
	return c.last
}

func (c *clientLog) close() { _ = c.file.Close() }

var summaryRE = regexp.MustCompile(`^demo-client: (\d+) handshakes, (\d+) failed$`)

func parseSummary(line string) (total, failed int, ok bool) {
	m := summaryRE.FindStringSubmatch(line)
	if m == nil {
		return 0, 0, false
	}
	total, _ = strconv.Atoi(m[1])
	failed, _ = strconv.Atoi(m[2])
	return total, failed, true
}

// status prints `bin/<name> status --address addr`.
// status prints `bin/<name> status --socket socket`.
func (d *demo) status(name, socket string) {
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(sctx, filepath.Join(d.opts.bin, name), "status", "--socket", socket) //nolint:gosec // our own binary from bin/
	cmd.Stdout = os.Stdout
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "demo-k8s: %s status: %v\n", name, err)
	}
}

func countLines(path, substr string) int {
	raw, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	return strings.Count(string(raw), substr)
}

// printTails shows the end of every log, for a failed run.
func (d *demo) printTails() {
	for _, name := range []string{"ca.log", "agent.log", "server.log", "client.out"} {
		path := filepath.Join(d.work, name)
		raw, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		lines := strings.Split(strings.TrimRight(string(raw), "\n"), "\n")
		if len(lines) > 20 {
			lines = lines[len(lines)-20:]
		}
		fmt.Fprintf(os.Stderr, "\n==> %s (last %d lines) <==\n%s\n", path, len(lines), strings.Join(lines, "\n"))
	}
}
