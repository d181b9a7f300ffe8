package plugin

import (
	"testing"

	"github.com/pgwarden/pgwarden/pkg/operator"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// The plugin copies these names to stay small; they must not drift from the instance manager's
// and the operator's.
func TestNamesMatch(t *testing.T) {
	for _, c := range [][2]string{
		{ClusterLabel, operator.ClusterLabel},
		{InstanceLabel, operator.InstanceLabel},
		{DesiredRoleAnnotation, roles.DesiredRoleAnnotation},
		{ObservedRoleLabel, roles.ObservedRoleLabel},
		{HolderIPAnnotation, roles.HolderIPAnnotation},
		{FencedAnnotation, roles.FencedAnnotation},
		{rolePrimary, string(roles.RolePrimary)},
		{roleReplica, string(roles.RoleReplica)},
		{LeaseName("demo"), roles.LeaseName("demo")},
	} {
		if c[0] != c[1] {
			t.Errorf("plugin %q != %q", c[0], c[1])
		}
	}
}
