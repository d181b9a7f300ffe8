package reaper

import (
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Descendants lists the PIDs of every live process below this one in the
// process tree, read from /proc. Zombies are left out: they are dead already
// and the reaper collects them.
func Descendants() []int {
	self := os.Getpid()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	children := make(map[int][]int)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		ppid, state, ok := readStat(pid)
		if !ok || state == 'Z' {
			continue
		}
		children[ppid] = append(children[ppid], pid)
	}
	var out []int
	queue := []int{self}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		for _, c := range children[p] {
			out = append(out, c)
			queue = append(queue, c)
		}
	}
	return out
}

// readStat returns the parent PID and state letter of pid from /proc/pid/stat.
func readStat(pid int) (ppid int, state byte, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, 0, false
	}
	// The command name is in parentheses and may contain spaces: parse after the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+4 > len(s) {
		return 0, 0, false
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 2 {
		return 0, 0, false
	}
	ppid, err = strconv.Atoi(f[1])
	if err != nil {
		return 0, 0, false
	}
	return ppid, f[0][0], true
}

// KillDescendants sends sig to every live descendant of this process and
// returns how many it signalled. It is the last step of a shutdown: PostgreSQL's
// backends run in sessions of their own, so a signal to the postmaster's
// process group does not reach them.
func KillDescendants(sig unix.Signal) int {
	n := 0
	for _, pid := range Descendants() {
		if unix.Kill(pid, sig) == nil {
			n++
		}
	}
	return n
}
