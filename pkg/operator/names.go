package operator

import (
	"fmt"
	"strconv"
	"strings"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// Labels and annotations the operator puts on what it owns.
const (
	// ClusterLabel carries the PostgresCluster's name on every object of the cluster.
	ClusterLabel = "pgwarden.io/cluster"
	// InstanceLabel carries the instance's name (= Pod name) on its Pod and PVC.
	InstanceLabel = "pgwarden.io/instance"
	// ManagedByLabel marks the Secrets the operator generated (only those are cached).
	ManagedByLabel = "app.kubernetes.io/managed-by"
	managedBy      = "pgwarden-operator"
)

// Keys in the Secrets and the ConfigMap.
const (
	PasswordKey       = "password"
	UsernameKey       = "username"
	ParametersFileKey = "postgresql.conf"
	// SyncNamesKey holds synchronous_standby_names, which the operator computes and the
	// instances apply (users cannot set it among their parameters).
	SyncNamesKey = "synchronous_standby_names"
)

// Paths inside the instance container.
const (
	dataMountPath               = "/var/lib/postgresql/data"
	pgdataPath                  = dataMountPath + "/pgdata"
	superuserMountPath          = "/etc/pgwarden/superuser"
	replicationMountPath        = "/etc/pgwarden/replication"
	configMountPath             = "/etc/pgwarden/config"
	pgwardenPath                = "/usr/local/bin/pgwarden"
	instanceContainerName       = "postgres"
	statusPort                  = 8000
	metricsPort                 = 9187
	postgresPort                = 5432
	instanceUID           int64 = 999 // postgres:postgres in the official image (images.conf INSTANCE_USER)
)

func podName(cluster string, n int) string { return fmt.Sprintf("%s-%d", cluster, n) }

// podIndex returns n of <cluster>-<n>, or 0 if name is not an instance of cluster.
func podIndex(cluster, name string) int {
	rest, ok := strings.CutPrefix(name, cluster+"-")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(rest)
	if err != nil || n < 1 || strconv.Itoa(n) != rest {
		return 0
	}
	return n
}

func superuserSecretName(c *pgv1.PostgresCluster) string {
	if c.Spec.SuperuserSecret != nil && c.Spec.SuperuserSecret.Name != "" {
		return c.Spec.SuperuserSecret.Name
	}
	return c.Name + "-superuser"
}

func superuserSecretGenerated(c *pgv1.PostgresCluster) bool {
	return c.Spec.SuperuserSecret == nil || c.Spec.SuperuserSecret.Name == ""
}

func replicationSecretName(cluster string) string { return cluster + "-replication" }
func serviceAccountName(cluster string) string    { return cluster + "-instance" }
func configMapName(cluster string) string         { return cluster + "-config" }
func leaseName(cluster string) string             { return roles.LeaseName(cluster) }

func clusterLabels(cluster string) map[string]string {
	return map[string]string{ClusterLabel: cluster}
}

func instanceLabels(cluster, pod string) map[string]string {
	return map[string]string{ClusterLabel: cluster, InstanceLabel: pod}
}
