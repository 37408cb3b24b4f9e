package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

// workload is a child process playing a pod's container.
type workload struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when it exited; err is set then
	err  error
}

// startWorkload creates pod demo/<pod> with ServiceAccount sa on the demo
// node and starts bin/<name> as its container, with the agent's socket in
// SPIFFE_ENDPOINT_SOCKET. The child starts as a shell that waits for a
// line on stdin: meanwhile its PID gets the pod's cgroup in the fake
// procfs and the pod status lists the container; then the shell execs the
// binary under the same PID, which the agent attests as the pod.
func (d *demo) startWorkload(ctx context.Context, pod, sa, name string, args []string, out io.Writer) (*workload, error) {
	pods := d.kube.CoreV1().Pods(demoNamespace)
	p, err := pods.Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: pod},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: nodeName, Containers: []corev1.Container{{Name: sa, Image: "mayfly/demo-" + sa}}},
	}, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s: %w", demoNamespace, pod, err)
	}
	bin := filepath.Join(d.opts.bin, name)
	cmd := exec.Command("/bin/sh", append([]string{"-c", `read _ && exec "$0" "$@"`, bin}, args...)...) //nolint:gosec // our own binaries from bin/
	cmd.Env = append(os.Environ(), "SPIFFE_ENDPOINT_SOCKET="+d.endpoint())
	cmd.Stdout = out
	cmd.Stderr = out
	// Its own process group: a Ctrl-C reaches this process only, which
	// stops the children in order. If this process dies without cleaning
	// up, the child goes too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	w := &workload{cmd: cmd, done: make(chan struct{})}
	go func() {
		w.err = cmd.Wait()
		close(w.done)
	}()
	if err := d.becomePod(ctx, p, cmd.Process.Pid); err != nil {
		w.stop()
		return nil, err
	}
	if _, err := io.WriteString(stdin, "\n"); err != nil {
		w.stop()
		return nil, err
	}
	if err := stdin.Close(); err != nil {
		w.stop()
		return nil, err
	}
	return w, nil
}

// becomePod does what the kubelet and the container runtime would: pid
// gets the cgroup of a new container of pod p in the fake procfs, and the
// pod's status lists that container as running.
func (d *demo) becomePod(ctx context.Context, p *corev1.Pod, pid int) error {
	var id [32]byte
	if _, err := rand.Read(id[:]); err != nil {
		return err
	}
	containerID := hex.EncodeToString(id[:])
	pidDir := filepath.Join(d.procRoot, strconv.Itoa(pid))
	if err := os.MkdirAll(pidDir, 0o700); err != nil {
		return err
	}
	cgroup := fmt.Sprintf("0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod%s.slice/cri-containerd-%s.scope\n",
		strings.ReplaceAll(string(p.UID), "-", "_"), containerID)
	if err := os.WriteFile(filepath.Join(pidDir, "cgroup"), []byte(cgroup), 0o600); err != nil {
		return err
	}
	now := metav1.Now()
	p.Status = corev1.PodStatus{Phase: corev1.PodRunning, StartTime: &now, ContainerStatuses: []corev1.ContainerStatus{{
		Name: p.Spec.Containers[0].Name, Image: p.Spec.Containers[0].Image, ContainerID: "containerd://" + containerID, Ready: true, Started: ptr.To(true),
		State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}},
	}}}
	if _, err := d.kube.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, p, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return nil
}

// exitError says why a workload that should still run is gone.
func (w *workload) exitError() error {
	if w.err == nil {
		return errors.New("exited by itself with status 0")
	}
	return fmt.Errorf("exited by itself: %w", w.err)
}

// terminate sends SIGTERM and waits up to grace, then kills.
func (w *workload) terminate(grace time.Duration) {
	select {
	case <-w.done:
		return
	default:
	}
	_ = w.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-w.done:
	case <-time.After(grace):
		_ = w.cmd.Process.Kill()
		<-w.done
	}
}

func (w *workload) stop() { w.terminate(5 * time.Second) }
