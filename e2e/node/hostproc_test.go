//go:build node

package node_test

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
)

// Host-side fault injection: processes of a container found through /proc (their cgroup names
// the container's ID), signals to them, and iptables in a pod's network namespace.

type hostProc struct {
	pid, ppid int
	nsPID     int // the PID inside the container's PID namespace (the last NSpid field)
	comm      string
}

// containerID is the runtime's ID of container name in pod p.
func containerID(p *corev1.Pod, name string) (string, error) {
	for _, cs := range p.Status.ContainerStatuses {
		if cs.Name == name && cs.ContainerID != "" {
			_, id, ok := strings.Cut(cs.ContainerID, "://")
			if !ok {
				return "", fmt.Errorf("pod %s: container ID %q", p.Name, cs.ContainerID)
			}
			return id, nil
		}
	}
	return "", fmt.Errorf("pod %s has no running container %s", p.Name, name)
}

// containerProcs lists the host processes in the container with ID id.
func containerProcs(id string) ([]hostProc, error) {
	dirs, err := filepath.Glob("/proc/[0-9]*")
	if err != nil {
		return nil, err
	}
	var out []hostProc
	for _, d := range dirs {
		cg, err := os.ReadFile(filepath.Join(d, "cgroup"))
		if err != nil || !bytes.Contains(cg, []byte(id)) {
			continue
		}
		st, err := os.ReadFile(filepath.Join(d, "status"))
		if err != nil {
			continue
		}
		var hp hostProc
		hp.pid, _ = strconv.Atoi(filepath.Base(d))
		for _, line := range strings.Split(string(st), "\n") {
			k, v, _ := strings.Cut(line, ":")
			v = strings.TrimSpace(v)
			switch k {
			case "Name":
				hp.comm = v
			case "PPid":
				hp.ppid, _ = strconv.Atoi(v)
			case "NSpid":
				f := strings.Fields(v)
				hp.nsPID, _ = strconv.Atoi(f[len(f)-1])
			}
		}
		out = append(out, hp)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no process of container %s found in /proc", id)
	}
	return out, nil
}

// instanceProcs returns the instance manager (PID 1 of the container) and the postmaster (its
// child named postgres) of an instance pod's container.
func instanceProcs(p *corev1.Pod) (manager, postmaster int, err error) {
	id, err := containerID(p, "postgres")
	if err != nil {
		return 0, 0, err
	}
	procs, err := containerProcs(id)
	if err != nil {
		return 0, 0, err
	}
	for _, hp := range procs {
		if hp.nsPID == 1 {
			manager = hp.pid
		}
	}
	for _, hp := range procs {
		if manager != 0 && hp.ppid == manager && hp.comm == "postgres" {
			postmaster = hp.pid
		}
	}
	if manager == 0 {
		return 0, 0, fmt.Errorf("pod %s: no PID 1 among %v", p.Name, procs)
	}
	return manager, postmaster, nil
}

func sigkill(pids ...int) error {
	for _, pid := range pids {
		if pid == 0 {
			continue
		}
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && err != syscall.ESRCH {
			return fmt.Errorf("kill -9 %d: %w", pid, err)
		}
	}
	return nil
}

// killContainer SIGKILLs every process of container name in pod p at once.
func killContainer(p *corev1.Pod, name string) error {
	id, err := containerID(p, name)
	if err != nil {
		return err
	}
	procs, err := containerProcs(id)
	if err != nil {
		return err
	}
	var pids []int
	for _, hp := range procs {
		pids = append(pids, hp.pid)
	}
	return sigkill(pids...)
}

// netns is a handle on a pod's network namespace: it outlives the process it was found
// through (the pod's sandbox keeps the namespace across container restarts).
type netns struct{ f *os.File }

func openNetns(pid int) (*netns, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return nil, err
	}
	return &netns{f}, nil
}

func (n *netns) close() { n.f.Close() }

// iptables runs iptables in the namespace (nsenter gets the handle as its fd 3).
func (n *netns) iptables(args ...string) error {
	full := append([]string{"--net=/proc/self/fd/3", "iptables", "-w"}, args...)
	cmd := exec.Command("nsenter", full...)
	cmd.ExtraFiles = []*os.File{n.f}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("nsenter %s: %v: %s", strings.Join(full, " "), err, out)
	}
	return nil
}

const faultChain = "PGW-FAULT"

// fault installs rules (each an iptables rule spec for chain PGW-FAULT, which INPUT and OUTPUT
// jump to first); heal removes them.
func (n *netns) fault(rules [][]string) error {
	if err := n.iptables("-N", faultChain); err != nil {
		return err
	}
	for _, r := range rules {
		if err := n.iptables(append([]string{"-A", faultChain}, r...)...); err != nil {
			return err
		}
	}
	for _, c := range []string{"INPUT", "OUTPUT"} {
		if err := n.iptables("-I", c, "-j", faultChain); err != nil {
			return err
		}
	}
	return nil
}

func (n *netns) heal() error {
	for _, c := range []string{"INPUT", "OUTPUT"} {
		if err := n.iptables("-D", c, "-j", faultChain); err != nil {
			return err
		}
	}
	if err := n.iptables("-F", faultChain); err != nil {
		return err
	}
	return n.iptables("-X", faultChain)
}
