package workloadattest

import (
	"errors"
	"fmt"
	"strings"
)

// ErrNotInPod is returned by [ContainerFromCgroups] for a process whose
// cgroups are not those of a Kubernetes pod container: a host process, or one
// whose cgroup cannot be placed from the agent's cgroup namespace (a process
// in the agent's own cgroup namespace root shows as "0::/").
var ErrNotInPod = errors.New("process is not in a Kubernetes pod")

// ErrUnrecognizedCgroup is wrapped by [ContainerFromCgroups] when a cgroup
// path mentions kubepods but has none of the known shapes, is ambiguous (two
// pods), or names a non-container process of a pod (CRI-O's conmon, a
// process in the pod cgroup itself). It is never guessed around.
var ErrUnrecognizedCgroup = errors.New("unrecognized Kubernetes cgroup path")

// ContainerFromCgroups returns the pod UID (with dashes) and the container ID
// (64 lowercase hex digits) that the cgroup lines of a process place it in.
//
// Recognised shapes, for cgroup v1 (every hierarchy line) and v2 (the "0::"
// line), with QoS level "burstable", "besteffort" or none (guaranteed):
//
//	cgroupfs driver: /kubepods[/<qos>]/pod<uid>/<container>
//	systemd driver:  /kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid_>.slice/<container>
//	runtime nested:  /system.slice/<unit>.service/kubepods[-<qos>]-pod<uid_>.slice:<runtime>:<id>
//
// where <container> is "<id>", "cri-containerd-<id>", "crio-<id>" or
// "docker-<id>", with ".scope" under the systemd driver. Cgroups below the
// container's (created by the container itself) are ignored. A path seen
// from another cgroup namespace may start with ".." segments, after which the
// kubepods hierarchy may start at any level. Any other prefix is refused: a
// delegated subtree (a user's systemd instance, a container with cgroup
// delegation) could otherwise name its own child cgroups after a pod.
//
// Lines on the root cgroup "/" and lines that do not mention kubepods are
// skipped (v1 hierarchies a runtime did not join); every line that names a
// pod must name the same pod and container. It returns an error wrapping
// [ErrNotInPod] when no line names a pod, and one wrapping
// [ErrUnrecognizedCgroup] for anything that looks like kubepods but does not
// parse.
func ContainerFromCgroups(lines []CgroupLine) (podUID string, containerID string, err error) {
	found := -1
	for i, l := range lines {
		uid, cid, ok, err := containerFromPath(l.Path)
		if err != nil {
			return "", "", fmt.Errorf("cgroup %q: %w", truncate(l.Path), err)
		}
		if !ok {
			continue
		}
		if found >= 0 && (uid != podUID || cid != containerID) {
			return "", "", fmt.Errorf("%w: cgroup lines disagree: %q is pod %s container %s, %q is pod %s container %s",
				ErrUnrecognizedCgroup, truncate(lines[found].Path), podUID, containerID, truncate(l.Path), uid, cid)
		}
		found, podUID, containerID = i, uid, cid
	}
	if found < 0 {
		return "", "", ErrNotInPod
	}
	return podUID, containerID, nil
}

// segment kinds of the kubepods hierarchy, in the order they nest.
const (
	levelNone = iota
	levelRoot
	levelQoS
	levelPod
)

// containerFromPath parses one cgroup path; ok is false (with a nil error)
// when the path is not under kubepods at all.
func containerFromPath(path string) (podUID, containerID string, ok bool, err error) {
	if path == "/" {
		return "", "", false, nil
	}
	segs := strings.Split(strings.TrimPrefix(path, "/"), "/")
	for _, s := range segs {
		if s == "" || s == "." {
			return "", "", false, errorfUnrecognized("empty or %q segment", ".")
		}
	}
	mentionsKubepods := strings.Contains(path, "kubepods")

	// Where may the kubepods hierarchy start, and at which levels?
	start, anyLevel := 0, false
	for start < len(segs) && segs[start] == ".." {
		start++
	}
	switch {
	case start > 0:
		anyLevel = true // the levels above were consumed by the ".." segments
	case len(segs) >= 3 && segs[0] == "system.slice" && strings.HasSuffix(segs[1], ".service"):
		// A runtime service that nests the pod cgroups under itself.
		start, anyLevel = 2, true
	}
	if start >= len(segs) {
		return "", "", false, nil
	}
	for _, s := range segs[:start] {
		if strings.Contains(s, "kubepods") {
			return "", "", false, errorfUnrecognized("kubepods under a prefix")
		}
	}

	driver, level, _, _ := classifySegment(segs[start])
	if level == levelNone {
		if mentionsKubepods {
			return "", "", false, errorfUnrecognized("kubepods cgroup under an unrecognized prefix")
		}
		return "", "", false, nil
	}
	if level != levelRoot && !anyLevel {
		return "", "", false, errorfUnrecognized("kubepods hierarchy does not start at its root")
	}

	// Walk root -> qos -> pod, each at most once and in order.
	i, last, qos := start, levelNone, ""
	for ; i < len(segs); i++ {
		d, lvl, q, _ := classifySegment(segs[i])
		if lvl == levelNone || d != driver || lvl <= last {
			return "", "", false, errorfUnrecognized("segment %q out of place", truncate(segs[i]))
		}
		if lvl == levelQoS {
			qos = q
		}
		if lvl == levelPod {
			if driver == "systemd" && qos != "" && q != qos {
				return "", "", false, errorfUnrecognized("pod segment %q is not of QoS class %q", truncate(segs[i]), qos)
			}
			if last != levelQoS && q != "" && !anyLevel {
				return "", "", false, errorfUnrecognized("pod segment %q without its QoS parent", truncate(segs[i]))
			}
			break
		}
		last = lvl
	}
	if i == len(segs) {
		return "", "", false, errorfUnrecognized("no pod segment")
	}
	podSeg := segs[i]
	var uid, rest string
	if driver == "systemd" {
		uid, rest = parseSystemdPod(podSeg)
	} else {
		uid = strings.TrimPrefix(podSeg, "pod")
	}
	if rest != "" {
		// "<pod slice>:<runtime>:<id>": the container is in the same segment.
		containerID, err = parseColonContainer(rest)
	} else {
		if i+1 == len(segs) {
			return "", "", false, errorfUnrecognized("process is in the pod cgroup, not in a container")
		}
		containerID, err = parseContainerSegment(segs[i+1], driver)
	}
	if err != nil {
		return "", "", false, err
	}
	// Whatever is below the container was created by the container: it must
	// not name another pod.
	for _, s := range segs[i+1:] {
		if _, lvl, _, other := classifySegment(s); lvl == levelPod && other != uid {
			return "", "", false, errorfUnrecognized("two pods in one path (%s and %s)", uid, other)
		}
	}
	return uid, containerID, true, nil
}

func errorfUnrecognized(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnrecognizedCgroup, fmt.Sprintf(format, args...))
}

// classifySegment says which kubepods level seg is. For a pod segment uid is
// the pod UID with dashes, or "" when malformed (then level is levelNone).
func classifySegment(seg string) (driver string, level int, qos, uid string) {
	switch seg {
	case "kubepods":
		return "cgroupfs", levelRoot, "", ""
	case "burstable", "besteffort":
		return "cgroupfs", levelQoS, seg, ""
	case "kubepods.slice":
		return "systemd", levelRoot, "", ""
	case "kubepods-burstable.slice":
		return "systemd", levelQoS, "burstable", ""
	case "kubepods-besteffort.slice":
		return "systemd", levelQoS, "besteffort", ""
	}
	if u, ok := strings.CutPrefix(seg, "pod"); ok && isUUID(u, '-') {
		return "cgroupfs", levelPod, "", u
	}
	if strings.HasPrefix(seg, "kubepods-") {
		if u, _ := parseSystemdPod(seg); u != "" {
			return "systemd", levelPod, systemdQoS(seg), u
		}
	}
	return "", levelNone, "", ""
}

// parseSystemdPod parses "kubepods[-<qos>]-pod<uid_>.slice[:<rest>]" and
// returns the UID with dashes ("" when malformed) and rest.
func parseSystemdPod(seg string) (uid, rest string) {
	slice, rest, _ := strings.Cut(seg, ":")
	s, ok := strings.CutSuffix(slice, ".slice")
	if !ok {
		return "", ""
	}
	for _, p := range []string{"kubepods-pod", "kubepods-burstable-pod", "kubepods-besteffort-pod"} {
		if u, ok := strings.CutPrefix(s, p); ok && isUUID(u, '_') {
			return strings.ReplaceAll(u, "_", "-"), rest
		}
	}
	return "", ""
}

func systemdQoS(seg string) string {
	switch {
	case strings.HasPrefix(seg, "kubepods-burstable-"):
		return "burstable"
	case strings.HasPrefix(seg, "kubepods-besteffort-"):
		return "besteffort"
	}
	return ""
}

// parseContainerSegment parses the container cgroup below a pod cgroup.
func parseContainerSegment(seg, driver string) (string, error) {
	s := seg
	if driver == "systemd" {
		var ok bool
		if s, ok = strings.CutSuffix(s, ".scope"); !ok {
			return "", errorfUnrecognized("container segment %q is not a .scope", truncate(seg))
		}
	}
	if strings.HasPrefix(s, "crio-conmon-") {
		return "", errorfUnrecognized("%q is CRI-O's conmon, not a container", truncate(seg))
	}
	for _, p := range []string{"cri-containerd-", "crio-", "docker-"} {
		if id, ok := strings.CutPrefix(s, p); ok {
			s = id
			break
		}
	}
	if !isContainerID(s) {
		return "", errorfUnrecognized("container segment %q has no 64-hex-digit container ID", truncate(seg))
	}
	return s, nil
}

// parseColonContainer parses "<runtime>:<id>" of a systemd cgroupsPath that
// a runtime used as a cgroupfs path.
func parseColonContainer(rest string) (string, error) {
	rt, id, ok := strings.Cut(rest, ":")
	if !ok {
		return "", errorfUnrecognized("%q: want <runtime>:<container id>", truncate(rest))
	}
	switch rt {
	case "cri-containerd", "crio", "docker":
	case "crio-conmon":
		return "", errorfUnrecognized("%q is CRI-O's conmon, not a container", truncate(rest))
	default:
		return "", errorfUnrecognized("unknown runtime %q", truncate(rt))
	}
	if !isContainerID(id) {
		return "", errorfUnrecognized("%q has no 64-hex-digit container ID", truncate(rest))
	}
	return id, nil
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isLowerHex(s[i]) {
			return false
		}
	}
	return true
}

// isUUID reports whether s is a lowercase 8-4-4-4-12 UUID with sep between
// the groups.
func isUUID(s string, sep byte) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != sep {
				return false
			}
		default:
			if !isLowerHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isLowerHex(c byte) bool { return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' }

// ContainerFromCgroupsUnder is [ContainerFromCgroups] for a kubelet whose
// --cgroup-root is root (cgroupfs driver; "" or "/" is the default root).
// An absolute path under root is read with root removed; an absolute path
// elsewhere that mentions kubepods is refused (no kubelet of this node made
// it), and so is one under root whose remainder does not parse. Paths seen
// from another cgroup namespace (starting with "..") are read as
// [ContainerFromCgroups] reads them: their kubepods hierarchy may start at
// any level, whatever the root.
func ContainerFromCgroupsUnder(lines []CgroupLine, root string) (podUID, containerID string, err error) {
	root = strings.TrimSuffix(root, "/")
	if root == "" {
		return ContainerFromCgroups(lines)
	}
	out := make([]CgroupLine, len(lines))
	for i, l := range lines {
		out[i] = l
		rest, under := strings.CutPrefix(l.Path, root)
		switch {
		case under && rest == "":
			out[i].Path = "/"
		case under && strings.HasPrefix(rest, "/"):
			out[i].Path = rest
		case strings.HasPrefix(l.Path, "/../"):
		case strings.Contains(l.Path, "kubepods"):
			return "", "", fmt.Errorf("cgroup %q: %w: kubepods outside the kubelet's cgroup root %q", truncate(l.Path), ErrUnrecognizedCgroup, truncate(root))
		}
	}
	return ContainerFromCgroups(out)
}

// CgroupRootOf derives the kubelet's --cgroup-root from the cgroup lines of
// a process in a pod (the agent's own): the path above the kubepods
// hierarchy, "/" for the default root. It returns "" when the lines name no
// pod as absolute paths (the process sees its own cgroup namespace, where
// paths need no root), and an error when lines disagree.
func CgroupRootOf(lines []CgroupLine) (string, error) {
	root := ""
	for _, l := range lines {
		if !strings.HasPrefix(l.Path, "/") || strings.HasPrefix(l.Path, "/..") {
			continue
		}
		segs := strings.Split(strings.TrimPrefix(l.Path, "/"), "/")
		for i, s := range segs {
			if _, level, _, _ := classifySegment(s); level != levelRoot {
				continue
			}
			r := "/" + strings.Join(segs[:i], "/")
			if root != "" && r != root {
				return "", fmt.Errorf("%w: cgroup lines disagree on the kubelet's cgroup root: %q and %q", ErrUnrecognizedCgroup, truncate(root), truncate(r))
			}
			root = r
			break
		}
	}
	return root, nil
}
