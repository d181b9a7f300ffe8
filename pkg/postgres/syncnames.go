package postgres

import (
	"fmt"
	"os"
	"strings"
)

// maxSyncNamesSize bounds a synchronous_standby_names file: a list of pod names.
const maxSyncNamesSize = 4096

// ReadSynchronousStandbyNames reads the value of synchronous_standby_names
// from path: the operator computes it (ANY N over the cluster's instances) and
// mounts it as a file; the user cannot set it among their parameters. Leading
// and trailing white space is dropped; an empty file means asynchronous
// replication. A value on several lines, with a NUL byte, or too long is
// refused.
func ReadSynchronousStandbyNames(path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("cannot read synchronous_standby_names: %w", err)
	}
	if len(b) > maxSyncNamesSize {
		return "", fmt.Errorf("cannot read synchronous_standby_names from %s: %d bytes, more than %d", path, len(b), maxSyncNamesSize)
	}
	v := strings.TrimSpace(string(b))
	if strings.ContainsAny(v, "\n\r\x00") {
		return "", fmt.Errorf("cannot read synchronous_standby_names from %s: the value must be one line", path)
	}
	return v, nil
}
