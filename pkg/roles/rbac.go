package roles

import (
	rbacv1 "k8s.io/api/rbac/v1"
)

// PolicyRules returns the least-privilege rules an instance of cluster needs in its namespace
// for this package, for a Role bound to the instances' ServiceAccount; pods are the names of
// the cluster's instance Pods. They are exactly the rules listed in the package documentation.
func PolicyRules(cluster string, pods []string) []rbacv1.PolicyRule {
	return []rbacv1.PolicyRule{
		{
			// PodWatcher lists and watches with fieldSelector metadata.name=<pod>, which RBAC
			// matches against resourceNames; SetObservedRole patches the label.
			APIGroups: []string{""}, Resources: []string{"pods"},
			Verbs: []string{"list", "watch", "patch"}, ResourceNames: append([]string(nil), pods...),
		},
		{
			APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"get", "update"}, ResourceNames: []string{LeaseName(cluster)},
		},
		{
			// A create request carries no name RBAC could match, so it cannot be narrowed.
			APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"},
			Verbs: []string{"create"},
		},
		{
			APIGroups: []string{""}, Resources: []string{"events"},
			Verbs: []string{"create"},
		},
	}
}
