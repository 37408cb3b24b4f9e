// Package openfiles raises a test process's limit of open files, for
// tests and benchmarks that hold many connections. Only tests import it.
package openfiles

import (
	"syscall"
	"testing"
)

// Raise makes the soft limit of open files at least want (children
// inherit it). Go raises the soft limit to the hard one at start; the
// hard limit is raised too where the process may (CAP_SYS_RESOURCE, up
// to the kernel's fs.nr_open; being root in a container is not always
// enough). Where it cannot, the test fails at once, saying that who
// (such as "10000 agents") needs want files, instead of failing midway
// on "too many open files".
func Raise(t testing.TB, want uint64, who string) {
	t.Helper()
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatalf("open-file limit: %v", err)
	}
	if lim.Cur >= want {
		return
	}
	raised := syscall.Rlimit{Cur: want, Max: max(want, lim.Max)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
		t.Fatalf("%s need about %d open files; the limit is %d (hard %d) and raising it failed: %v (the hard limit can be raised only with CAP_SYS_RESOURCE)", who, want, lim.Cur, lim.Max, err)
	}
}
