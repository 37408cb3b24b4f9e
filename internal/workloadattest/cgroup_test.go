package workloadattest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const (
	testPodUID  = "2c48913c-b29f-11e7-9350-020968147796"
	testPodUIDU = "2c48913c_b29f_11e7_9350_020968147796"
	testCID     = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
	otherPodUID = "11111111-2222-3333-4444-555555555555"
	otherCID    = "0000000000000000000000000000000000000000000000000000000000000001"
)

// fakeProc writes files of a fake /proc/<pid> tree and returns its root.
func fakeProc(t *testing.T, pid string, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	dir := filepath.Join(root, pid)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestContainerFromCgroupFiles(t *testing.T) {
	v1 := func(path string) string {
		return "12:pids:" + path + "\n11:memory:" + path + "\n3:cpu,cpuacct:" + path + "\n2:rdma:/\n1:name=systemd:" + path + "\n0::/\n"
	}
	v2 := func(path string) string { return "0::" + path + "\n" }
	tests := []struct {
		name    string
		file    string
		wantErr error // nil: want testPodUID/testCID
	}{
		{"v1 cgroupfs burstable containerd", v1("/kubepods/burstable/pod" + testPodUID + "/" + testCID), nil},
		{"v1 cgroupfs guaranteed", v1("/kubepods/pod" + testPodUID + "/" + testCID), nil},
		{"v1 cgroupfs besteffort crio", v1("/kubepods/besteffort/pod" + testPodUID + "/crio-" + testCID), nil},
		{"v2 cgroupfs burstable", v2("/kubepods/burstable/pod" + testPodUID + "/" + testCID), nil},
		{"v2 systemd burstable containerd", v2("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope"), nil},
		{"v1 systemd burstable containerd", v1("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope"), nil},
		{"v2 systemd besteffort crio", v2("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + testPodUIDU + ".slice/crio-" + testCID + ".scope"), nil},
		{"v2 systemd crio container subcgroup", v2("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + testPodUIDU + ".slice/crio-" + testCID + ".scope/container"), nil},
		{"v2 systemd guaranteed docker", v2("/kubepods.slice/kubepods-pod" + testPodUIDU + ".slice/docker-" + testCID + ".scope"), nil},
		{"v2 nested in containerd service", v2("/system.slice/containerd.service/kubepods-burstable-pod" + testPodUIDU + ".slice:cri-containerd:" + testCID), nil},
		{"v2 seen from the agent's cgroup namespace", v2("/../../../kubepods-burstable.slice/kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope"), nil},
		{"v2 seen from a cgroup namespace at pod level", v2("/../../kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope"), nil},
		{"v2 cgroupfs seen from a cgroup namespace", v2("/../../burstable/pod" + testPodUID + "/" + testCID), nil},
		{"v2 container's own sub-cgroups ignored", v2("/kubepods.slice/kubepods-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope/init.scope"), nil},

		{"host process v2", v2("/system.slice/sshd.service"), ErrNotInPod},
		{"host process v1", v1("/user.slice/user-1000.slice/session-1.scope"), ErrNotInPod},
		{"agent's own cgroup namespace root", v2("/"), ErrNotInPod},
		{"same pod as the agent from its namespace", v2("/../cri-containerd-" + testCID + ".scope"), ErrNotInPod},

		{"crio conmon is not the container", v2("/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + testPodUIDU + ".slice/crio-conmon-" + testCID + ".scope"), ErrUnrecognizedCgroup},
		{"crio conmon colon form", v2("/system.slice/crio.service/kubepods-pod" + testPodUIDU + ".slice:crio-conmon:" + testCID), ErrUnrecognizedCgroup},
		{"forged two pod UIDs across lines", "2:pids:/kubepods/pod" + testPodUID + "/" + testCID + "\n1:memory:/kubepods/pod" + otherPodUID + "/" + testCID + "\n", ErrUnrecognizedCgroup},
		{"two container IDs across lines", "2:pids:/kubepods/pod" + testPodUID + "/" + testCID + "\n1:memory:/kubepods/pod" + testPodUID + "/" + otherCID + "\n", ErrUnrecognizedCgroup},
		{"pod nested under another pod's container", v2("/kubepods/pod" + testPodUID + "/" + testCID + "/kubepods/pod" + otherPodUID + "/" + otherCID), ErrUnrecognizedCgroup},
		{"pod slice in a user's delegated systemd", v2("/user.slice/user-1000.slice/user@1000.service/kubepods-pod" + testPodUIDU + ".slice/docker-" + testCID + ".scope"), ErrUnrecognizedCgroup},
		{"kubepods under a docker prefix", v2("/docker/" + otherCID + "/kubepods/pod" + testPodUID + "/" + testCID), ErrUnrecognizedCgroup},
		{"process in the pod cgroup itself", v2("/kubepods/burstable/pod" + testPodUID), ErrUnrecognizedCgroup},
		{"uppercase container ID", v2("/kubepods/pod" + testPodUID + "/" + strings.ToUpper(testCID)), ErrUnrecognizedCgroup},
		{"short container ID", v2("/kubepods/pod" + testPodUID + "/" + testCID[:12]), ErrUnrecognizedCgroup},
		{"systemd pod slice without its QoS parent", v2("/kubepods.slice/kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope"), ErrUnrecognizedCgroup},
		{"systemd QoS mismatch", v2("/kubepods.slice/kubepods-besteffort.slice/kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope"), ErrUnrecognizedCgroup},
		{"systemd container without .scope", v2("/kubepods.slice/kubepods-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID), ErrUnrecognizedCgroup},
		{"systemd pod UID with dashes", v2("/kubepods.slice/kubepods-pod" + testPodUID + ".slice/cri-containerd-" + testCID + ".scope"), ErrUnrecognizedCgroup},
		{"mixed drivers", v2("/kubepods/kubepods-burstable.slice/pod" + testPodUID + "/" + testCID), ErrUnrecognizedCgroup},
		{"unknown runtime in colon form", v2("/system.slice/containerd.service/kubepods-pod" + testPodUIDU + ".slice:lxc:" + testCID), ErrUnrecognizedCgroup},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			root := fakeProc(t, "42", map[string]string{"cgroup": tt.file})
			lines, err := Proc{Root: root}.Cgroups(42)
			if err != nil {
				t.Fatalf("Cgroups: %v", err)
			}
			uid, cid, err := ContainerFromCgroups(lines)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ContainerFromCgroups = %q, %q, %v; want error %v", uid, cid, err, tt.wantErr)
				}
				return
			}
			if err != nil || uid != testPodUID || cid != testCID {
				t.Fatalf("ContainerFromCgroups = %q, %q, %v; want %q, %q", uid, cid, err, testPodUID, testCID)
			}
		})
	}
}

func TestCgroupsRejectsMalformedFiles(t *testing.T) {
	tests := []struct {
		name    string
		content *string // nil: no file
		wantSub string
	}{
		{"missing file", nil, "no such file"},
		{"empty file", ptr(""), "empty"},
		{"binary garbage", ptr("\x00\xff\xfe\x01garbage\x7f"), "UTF-8"},
		{"control character", ptr("0::/a\x00b\n"), "control character"},
		{"1 MB file", ptr(strings.Repeat("0::/kubepods\n", 1<<20/13+1)), "longer than 65536 bytes"},
		{"line without colons", ptr("no colons here\n"), "want hierarchy-ID:controller-list:path"},
		{"line with one colon", ptr("0:/x\n"), "want hierarchy-ID"},
		{"non-numeric hierarchy", ptr("x::/\n"), "not a non-negative decimal"},
		{"negative hierarchy", ptr("-1::/\n"), "not a non-negative decimal"},
		{"hierarchy with leading zero", ptr("01:cpu:/\n"), "not a non-negative decimal"},
		{"relative path", ptr("0::kubepods\n"), "not absolute"},
		{"empty controller", ptr("3:cpu,,memory:/\n"), "empty controller"},
		{"v2 line with controllers", ptr("0:cpu:/\n"), "no controllers"},
		{"bad second line names the line", ptr("0::/\nbroken\n"), "line 2"},
	}
	for _, tt := range tests {
		t.Run(strings.ReplaceAll(tt.name, " ", "_"), func(t *testing.T) {
			files := map[string]string{}
			if tt.content != nil {
				files["cgroup"] = *tt.content
			}
			root := fakeProc(t, "7", files)
			lines, err := Proc{Root: root}.Cgroups(7)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("Cgroups = %v, %v; want error containing %q", lines, err, tt.wantSub)
			}
		})
	}
}

func TestCgroupsParsesV1Controllers(t *testing.T) {
	root := fakeProc(t, "7", map[string]string{"cgroup": "3:cpu,cpuacct:/a:b\n1:name=systemd:/x\n0::/\n"})
	lines, err := Proc{Root: root}.Cgroups(7)
	if err != nil {
		t.Fatal(err)
	}
	if len(lines) != 3 || lines[0].HierarchyID != 3 || len(lines[0].Controllers) != 2 ||
		lines[0].Controllers[1] != "cpuacct" || lines[0].Path != "/a:b" || lines[2].Controllers != nil {
		t.Errorf("lines = %+v", lines)
	}
}

func TestProcRejectsInvalidPID(t *testing.T) {
	if _, err := (Proc{Root: t.TempDir()}).Cgroups(0); err == nil {
		t.Error("Cgroups(0) succeeded")
	}
	if _, err := (Proc{Root: t.TempDir()}).Exe(-1); err == nil {
		t.Error("Exe(-1) succeeded")
	}
}

func TestExe(t *testing.T) {
	root := t.TempDir()
	if err := os.MkdirAll(filepath.Join(root, "9"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/local/bin/server", filepath.Join(root, "9", "exe")); err != nil {
		t.Fatal(err)
	}
	got, err := Proc{Root: root}.Exe(9)
	if err != nil || got != "/usr/local/bin/server" {
		t.Errorf("Exe = %q, %v", got, err)
	}
	if _, err := (Proc{Root: root}).Exe(10); err == nil {
		t.Error("Exe of a missing process succeeded")
	}
}

func TestProcDefaultRootReadsOurOwnProcess(t *testing.T) {
	exe, err := Proc{}.Exe(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe != want {
		t.Errorf("Exe(self) = %q, want %q", exe, want)
	}
	if _, err := (Proc{}).Cgroups(os.Getpid()); err != nil {
		t.Errorf("Cgroups(self) = %v", err)
	}
}

func ptr[T any](v T) *T { return &v }

// TestContainerFromCgroupsUnderRoot: with a kubelet --cgroup-root other
// than "/", a container's absolute paths are under that root; they are
// read with the root removed, and kubepods paths outside it are refused.
func TestContainerFromCgroupsUnderRoot(t *testing.T) {
	pod := "/kubepods/burstable/pod" + testPodUID + "/" + testCID
	v1 := func(path string) string { return "12:pids:" + path + "\n11:memory:" + path + "\n2:rdma:/\n0::/\n" }
	tests := []struct {
		name, root, file string
		wantErr          error // nil: want testPodUID/testCID
	}{
		{"default root", "/", v1(pod), nil},
		{"empty root is the default", "", v1(pod), nil},
		{"under a one-level root", "/e2e-root", v1("/e2e-root" + pod), nil},
		{"under a two-level root, trailing slash", "/a/b/", v1("/a/b" + pod), nil},
		{"seen from another cgroup namespace", "/e2e-root", v1("/../../besteffort/pod" + testPodUID + "/" + testCID), nil},
		{"host process under the root", "/e2e-root", v1("/e2e-root"), ErrNotInPod},
		{"host process elsewhere", "/e2e-root", v1("/system.slice/sshd.service"), ErrNotInPod},
		{"kubepods outside the root", "/e2e-root", v1(pod), ErrUnrecognizedCgroup},
		{"a root that is only a name prefix", "/e2e-root", v1("/e2e-rootx" + pod), ErrUnrecognizedCgroup},
		{"the root's remainder is not kubepods", "/e2e-root", v1("/e2e-root/x" + pod), ErrUnrecognizedCgroup},
		{"default root refuses a prefixed path", "/", v1("/e2e-root" + pod), ErrUnrecognizedCgroup},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, err := ParseCgroups([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			uid, cid, err := ContainerFromCgroupsUnder(lines, tt.root)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) || uid != "" || cid != "" {
					t.Fatalf("= %q, %q, %v; want %v", uid, cid, err, tt.wantErr)
				}
				return
			}
			if err != nil || uid != testPodUID || cid != testCID {
				t.Fatalf("= %q, %q, %v; want %s %s", uid, cid, err, testPodUID, testCID)
			}
		})
	}
}

// TestCgroupRootOf derives the kubelet's cgroup root from the cgroups of a
// process in a pod (the agent's own).
func TestCgroupRootOf(t *testing.T) {
	tests := []struct {
		name, file, want string
		wantErr          bool
	}{
		{"default root, v1", "12:pids:/kubepods/burstable/pod" + testPodUID + "/" + testCID + "\n2:rdma:/\n", "/", false},
		{"default root, systemd v2", "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + testPodUIDU + ".slice/cri-containerd-" + testCID + ".scope\n", "/", false},
		{"custom root", "12:pids:/e2e-root/kubepods/pod" + testPodUID + "/" + testCID + "\n11:memory:/e2e-root/kubepods/pod" + testPodUID + "/" + testCID + "\n", "/e2e-root", false},
		{"own cgroup namespace", "0::/\n", "", false},
		{"relative paths", "0::/../../kubepods/pod" + testPodUID + "/" + testCID + "\n", "", false},
		{"no pod", "0::/system.slice/agent.service\n", "", false},
		{"lines disagree", "12:pids:/a/kubepods/pod" + testPodUID + "/" + testCID + "\n11:memory:/b/kubepods/pod" + testPodUID + "/" + testCID + "\n", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines, err := ParseCgroups([]byte(tt.file))
			if err != nil {
				t.Fatal(err)
			}
			got, err := CgroupRootOf(lines)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("= %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrUnrecognizedCgroup) {
				t.Fatalf("untyped error %v", err)
			}
		})
	}
}
