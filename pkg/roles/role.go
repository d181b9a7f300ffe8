package roles

import (
	"fmt"
)

// Role is what an instance is (observed) or should be (desired).
type Role string

// The roles. The zero value means "none": no valid desired role has been seen, or the observed
// role label is to be removed.
const (
	RolePrimary Role = "primary"
	RoleReplica Role = "replica"
	RoleNone    Role = ""
)

// Names of the annotations and labels this package reads and writes (see DESIGN.md, "Names").
const (
	// DesiredRoleAnnotation on the instance's Pod carries the desired role, written by the
	// operator or a user.
	DesiredRoleAnnotation = "pgwarden.io/role"
	// ObservedRoleLabel on the instance's Pod carries the role the instance has reached;
	// Services select on it.
	ObservedRoleLabel = "pgwarden.io/instance-role"
	// FinalLSNAnnotation on the primary Lease carries the FinalLSN of the holder that released it
	// after a clean shutdown, for its successor. It exists only between a Release and the next
	// acquisition.
	FinalLSNAnnotation = "pgwarden.io/final-lsn"
	// HolderIPAnnotation on the primary Lease carries the pod IP of the holder, written in the
	// same update that makes it holder, so replicas can stream from it without reading its Pod.
	HolderIPAnnotation = "pgwarden.io/holder-ip"
	// FencedAnnotation on the instance's Pod asks the instance to stop PostgreSQL and keep it
	// stopped ("true") or to run it again ("false", or no annotation). Written by users, usually
	// through `kubectl pgwarden fence`. An invalid value changes nothing: the last valid value
	// stays in force, and an instance that starts with an invalid value takes it as "true".
	FencedAnnotation = "pgwarden.io/fenced"
)

// InvalidFencedError is returned by ParseFenced for a value that is neither "true" nor "false".
type InvalidFencedError struct {
	Value string
}

func (e *InvalidFencedError) Error() string {
	return fmt.Sprintf("invalid value %q of annotation %s: valid values are \"true\" and \"false\" (or no annotation)", e.Value, FencedAnnotation)
}

// ParseFenced reads the fence annotation: found false (no annotation) means not fenced; "true"
// and "false" exactly; anything else ("True", "yes", "1", "") is an *InvalidFencedError.
func ParseFenced(value string, found bool) (bool, error) {
	if !found {
		return false, nil
	}
	switch value {
	case "true":
		return true, nil
	case "false":
		return false, nil
	}
	return false, &InvalidFencedError{Value: value}
}

// InvalidRoleError is returned by ParseRole for a value that is not a role.
type InvalidRoleError struct {
	Value string
}

func (e *InvalidRoleError) Error() string {
	return fmt.Sprintf("invalid role %q: valid roles are %q and %q", e.Value, RolePrimary, RoleReplica)
}

// ParseRole returns the role named exactly s ("primary" or "replica"). Anything else, including
// the empty string and other spellings ("Primary", "master"), is an *InvalidRoleError.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case RolePrimary, RoleReplica:
		return r, nil
	}
	return RoleNone, &InvalidRoleError{Value: s}
}

// String returns the role's name, or "none".
func (r Role) String() string {
	if r == RoleNone {
		return "none"
	}
	return string(r)
}
