package operator

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	pgv1 "github.com/pgwarden/pgwarden/api/v1"
	"github.com/pgwarden/pgwarden/pkg/roles"
)

// Probe timing (DESIGN.md, "Defaults"): period 10 s, failure threshold 3. The startup probe has
// the same period; its threshold turns startDelay into a number of attempts.
const (
	probePeriodSeconds    = 10
	probeFailureThreshold = 3
	// probeTimeoutSeconds: the instance serves probes from cached state, so an answer that takes
	// longer than this means the instance manager itself is stuck.
	probeTimeoutSeconds = 5
)

// renderParameters renders the user's parameters in postgresql.conf syntax, sorted, one per
// line. synchronous_standby_names is not among them: the instance refuses it from the user's
// file, so it travels in its own key (SyncNamesKey).
func renderParameters(c *pgv1.PostgresCluster) string {
	params := c.Spec.PostgreSQL.Parameters
	keys := make([]string, 0, len(params))
	for k := range params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	b.WriteString("# Rendered by the pgwarden operator from spec.postgresql.parameters; do not edit.\n")
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(strings.ReplaceAll(params[k], `\`, `\\`), "'", "''"))
	}
	return b.String()
}

// synchronousStandbyNames is "ANY N (<every instance>)", or "" for asynchronous replication.
// Every instance is listed, the primary too: a primary never matches itself, and listing all
// keeps the value unchanged across failovers. Standbys connect with their Pod name as
// application_name.
func synchronousStandbyNames(c *pgv1.PostgresCluster) string {
	n := c.Spec.Replication.Synchronous.Number
	if n <= 0 {
		return ""
	}
	names := make([]string, 0, c.Spec.Instances)
	for i := 1; i <= int(c.Spec.Instances); i++ {
		names = append(names, strconv.Quote(podName(c.Name, i)))
	}
	return fmt.Sprintf("ANY %d (%s)", n, strings.Join(names, ", "))
}

func newConfigMap(c *pgv1.PostgresCluster) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: configMapName(c.Name), Namespace: c.Namespace, Labels: clusterLabels(c.Name)},
		Data:       map[string]string{ParametersFileKey: renderParameters(c), SyncNamesKey: synchronousStandbyNames(c) + "\n"},
	}
}

func newServiceAccount(c *pgv1.PostgresCluster) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{
		Name: serviceAccountName(c.Name), Namespace: c.Namespace, Labels: clusterLabels(c.Name)}}
}

// newRole grants the instances exactly roles.PolicyRules for pods.
func newRole(c *pgv1.PostgresCluster, pods []string) *rbacv1.Role {
	return &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccountName(c.Name), Namespace: c.Namespace, Labels: clusterLabels(c.Name)},
		Rules:      roles.PolicyRules(c.Name, pods),
	}
}

func newRoleBinding(c *pgv1.PostgresCluster) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: serviceAccountName(c.Name), Namespace: c.Namespace, Labels: clusterLabels(c.Name)},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: serviceAccountName(c.Name)},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: serviceAccountName(c.Name),
			Namespace: c.Namespace}},
	}
}

// Service suffixes (DESIGN.md, "Names").
const (
	ServiceRW  = "-rw" // the primary
	ServiceRO  = "-ro" // the replicas
	ServiceAny = "-r"  // any ready instance
)

func newServices(c *pgv1.PostgresCluster) []*corev1.Service {
	mk := func(suffix string, role roles.Role) *corev1.Service {
		sel := clusterLabels(c.Name)
		if role != roles.RoleNone {
			sel[roles.ObservedRoleLabel] = string(role)
		}
		return &corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: c.Name + suffix, Namespace: c.Namespace, Labels: clusterLabels(c.Name)},
			Spec: corev1.ServiceSpec{
				Type:     corev1.ServiceTypeClusterIP,
				Selector: sel,
				Ports: []corev1.ServicePort{{Name: "postgres", Port: postgresPort, Protocol: corev1.ProtocolTCP,
					TargetPort: intstr.FromString("postgres")}},
			},
		}
	}
	return []*corev1.Service{mk(ServiceRW, roles.RolePrimary), mk(ServiceRO, roles.RoleReplica), mk(ServiceAny, roles.RoleNone)}
}

// newPDBs: the primary must stay (minAvailable 1, so a drain waits for a switchover); of the
// replicas at most one may be down at a time.
//
// The replicas' budget is an integer minAvailable (instances-2), not maxUnavailable 1: with
// maxUnavailable the disruption controller takes the expected number of pods from the pods'
// controller (the PostgresCluster) through a scale subresource, which would count every instance,
// primary included, against a selector that matches only the replicas (and without a scale
// subresource it reports CalculateExpectedPodCountFailed and allows nothing). With an integer
// minAvailable it counts the pods the selector matches.
func newPDBs(c *pgv1.PostgresCluster) []*policyv1.PodDisruptionBudget {
	sel := func(role roles.Role) *metav1.LabelSelector {
		return &metav1.LabelSelector{MatchLabels: map[string]string{ClusterLabel: c.Name, roles.ObservedRoleLabel: string(role)}}
	}
	one := intstr.FromInt32(1)
	replicasMin := intstr.FromInt32(max(c.Spec.Instances-2, 0))
	return []*policyv1.PodDisruptionBudget{
		{
			ObjectMeta: metav1.ObjectMeta{Name: c.Name + "-primary", Namespace: c.Namespace, Labels: clusterLabels(c.Name)},
			Spec:       policyv1.PodDisruptionBudgetSpec{Selector: sel(roles.RolePrimary), MinAvailable: &one},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: c.Name + "-replicas", Namespace: c.Namespace, Labels: clusterLabels(c.Name)},
			Spec:       policyv1.PodDisruptionBudgetSpec{Selector: sel(roles.RoleReplica), MinAvailable: &replicasMin},
		},
	}
}

func newPVC(c *pgv1.PostgresCluster, name string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: c.Namespace, Labels: instanceLabels(c.Name, name)},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			StorageClassName: c.Spec.Storage.StorageClassName,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: c.Spec.Storage.Size},
			},
		},
	}
}

// startupFailureThreshold turns the startDelay budget into startup probe attempts.
func startupFailureThreshold(startDelay int32) int32 {
	n := (startDelay + probePeriodSeconds - 1) / probePeriodSeconds
	if n < 1 {
		n = 1
	}
	return n
}

// newPod is instance name of cluster c with desired role role.
func newPod(c *pgv1.PostgresCluster, name string, role roles.Role, image string) *corev1.Pod {
	probe := func(path string, failures int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
				Path: path, Port: intstr.FromInt32(statusPort), Scheme: corev1.URISchemeHTTP}},
			PeriodSeconds: probePeriodSeconds, FailureThreshold: failures, TimeoutSeconds: probeTimeoutSeconds,
		}
	}
	fieldEnv := func(name, path string) corev1.EnvVar {
		return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{
			FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: path}}}
	}
	secretVolume := func(vol, secret string) corev1.Volume {
		return corev1.Volume{Name: vol, VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName: secret, DefaultMode: ptr.To[int32](0o440),
			Items: []corev1.KeyToPath{{Key: PasswordKey, Path: PasswordKey}}}}}
	}
	affinity := c.Spec.Scheduler.Affinity
	if affinity == nil {
		affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
			PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
				Weight: 100,
				PodAffinityTerm: corev1.PodAffinityTerm{
					TopologyKey:   corev1.LabelHostname,
					LabelSelector: &metav1.LabelSelector{MatchLabels: clusterLabels(c.Name)},
				},
			}},
		}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: c.Namespace,
			Labels:      instanceLabels(c.Name, name),
			Annotations: map[string]string{roles.DesiredRoleAnnotation: string(role)},
		},
		Spec: corev1.PodSpec{
			Hostname:                      name,
			ServiceAccountName:            serviceAccountName(c.Name),
			TerminationGracePeriodSeconds: ptr.To(int64(c.Spec.StopDelay)),
			EnableServiceLinks:            ptr.To(false),
			Affinity:                      affinity,
			Tolerations:                   c.Spec.Scheduler.Tolerations,
			SecurityContext: &corev1.PodSecurityContext{
				RunAsUser: ptr.To(instanceUID), RunAsGroup: ptr.To(instanceUID), FSGroup: ptr.To(instanceUID),
				RunAsNonRoot: ptr.To(true),
			},
			Containers: []corev1.Container{{
				Name:    instanceContainerName,
				Image:   image,
				Command: []string{pgwardenPath, "instance", "run"},
				Args: []string{
					fmt.Sprintf("--stop-delay=%ds", c.Spec.StopDelay),
					fmt.Sprintf("--start-delay=%ds", c.Spec.StartDelay),
					fmt.Sprintf("--switchover-delay=%ds", c.Spec.SwitchoverDelay),
					"--superuser-password-file=" + superuserMountPath + "/" + PasswordKey,
					"--replication-password-file=" + replicationMountPath + "/" + PasswordKey,
					"--parameters-file=" + configMountPath + "/" + ParametersFileKey,
					"--synchronous-standby-names-file=" + configMountPath + "/" + SyncNamesKey,
				},
				Env: []corev1.EnvVar{
					fieldEnv("POD_NAME", "metadata.name"),
					fieldEnv("POD_NAMESPACE", "metadata.namespace"),
					fieldEnv("POD_IP", "status.podIP"),
					{Name: "CLUSTER_NAME", Value: c.Name},
					{Name: "PGDATA", Value: pgdataPath},
				},
				Ports: []corev1.ContainerPort{
					{Name: "postgres", ContainerPort: postgresPort, Protocol: corev1.ProtocolTCP},
					{Name: "status", ContainerPort: statusPort, Protocol: corev1.ProtocolTCP},
					{Name: "metrics", ContainerPort: metricsPort, Protocol: corev1.ProtocolTCP},
				},
				Resources:      c.Spec.Resources,
				StartupProbe:   probe("/startupz", startupFailureThreshold(c.Spec.StartDelay)),
				LivenessProbe:  probe("/healthz", probeFailureThreshold),
				ReadinessProbe: probe("/readyz", probeFailureThreshold),
				VolumeMounts: []corev1.VolumeMount{
					{Name: "pgdata", MountPath: dataMountPath},
					{Name: "superuser", MountPath: superuserMountPath, ReadOnly: true},
					{Name: "replication", MountPath: replicationMountPath, ReadOnly: true},
					{Name: "config", MountPath: configMountPath, ReadOnly: true},
					{Name: "shm", MountPath: "/dev/shm"},
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
			}},
			Volumes: []corev1.Volume{
				{Name: "pgdata", VolumeSource: corev1.VolumeSource{PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name}}},
				secretVolume("superuser", superuserSecretName(c)),
				secretVolume("replication", replicationSecretName(c.Name)),
				{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
					LocalObjectReference: corev1.LocalObjectReference{Name: configMapName(c.Name)}}}},
				{Name: "shm", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			},
		},
	}
}
