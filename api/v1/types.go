package v1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PostgresCluster is a highly available PostgreSQL cluster: one primary and instances-1
// streaming replicas, each in its own Pod with its own PVC.
//
// The name becomes part of the Pod (<name>-<n>), Service (<name>-rw) and Lease (<name>-primary)
// names, so it must be a DNS-1035 label short enough for the longest of them.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=pgc,categories=pgwarden
// +kubebuilder:printcolumn:name="Instances",type=integer,JSONPath=`.spec.instances`
// +kubebuilder:printcolumn:name="Ready",type=integer,JSONPath=`.status.readyInstances`
// +kubebuilder:printcolumn:name="Primary",type=string,JSONPath=`.status.currentPrimary`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:validation:XValidation:rule="self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 50",message="metadata.name must be a DNS-1035 label (lower case letters, digits, '-', starting with a letter) of at most 50 characters: it prefixes the names of Pods, Services and the primary Lease"
// +kubebuilder:validation:XValidation:rule="!has(self.spec.failover) || !has(self.spec.failover.promotePod) || size(self.spec.failover.promotePod) == 0 || (self.spec.failover.promotePod.startsWith(self.metadata.name + '-') && self.spec.failover.promotePod.substring(size(self.metadata.name) + 1).matches('^[1-9][0-9]{0,3}$') && int(self.spec.failover.promotePod.substring(size(self.metadata.name) + 1)) <= self.spec.instances)",message="spec.failover.promotePod must name one of this cluster's pods, <cluster>-1 to <cluster>-<spec.instances>",fieldPath=".spec.failover.promotePod"
type PostgresCluster struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec PostgresClusterSpec `json:"spec"`
	// +optional
	Status PostgresClusterStatus `json:"status,omitempty"`
}

// PostgresClusterList is a list of PostgresCluster.
//
// +kubebuilder:object:root=true
type PostgresClusterList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PostgresCluster `json:"items"`
}

// PostgresClusterSpec is what the user wants.
//
// +kubebuilder:validation:XValidation:rule="!has(self.replication) || !has(self.replication.synchronous) || !has(self.replication.synchronous.number) || self.replication.synchronous.number < self.instances",message="spec.replication.synchronous.number must be less than spec.instances (the primary cannot be its own standby)",fieldPath=".replication.synchronous.number"
type PostgresClusterSpec struct {
	// Instances is the number of PostgreSQL instances: one primary, the rest replicas.
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=99
	// +kubebuilder:default=1
	Instances int32 `json:"instances"`

	// Image is the instance image (PostgreSQL plus pgwarden as the entrypoint). Empty: the
	// operator's default (its --default-instance-image flag).
	// +optional
	Image string `json:"image,omitempty"`

	// PostgreSQL configures the server.
	// +optional
	PostgreSQL PostgreSQLSpec `json:"postgresql,omitempty"`

	// Storage is each instance's data volume.
	Storage StorageSpec `json:"storage"`

	// Resources of the PostgreSQL container.
	// +optional
	Resources corev1.ResourceRequirements `json:"resources,omitempty"`

	// StartDelay is the startup budget in seconds: how long the postmaster may take to answer at
	// all (crash recovery, pg_rewind) before the kubelet restarts the container.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=30
	// +optional
	StartDelay int32 `json:"startDelay,omitempty"`

	// StopDelay is the shutdown budget in seconds: the Pod's termination grace period and the
	// instance manager's --stop-delay.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=30
	// +optional
	StopDelay int32 `json:"stopDelay,omitempty"`

	// SwitchoverDelay bounds, in seconds, a demoting primary's fast shutdown. The default
	// (40000000 s) effectively never gives up: durability first.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=40000000
	// +optional
	SwitchoverDelay int32 `json:"switchoverDelay,omitempty"`

	// Failover configures automatic failover and requested switchover.
	// +optional
	Failover FailoverSpec `json:"failover,omitempty"`

	// Replication configures streaming replication.
	// +optional
	Replication ReplicationSpec `json:"replication,omitempty"`

	// Scheduler places the instance Pods.
	// +optional
	Scheduler SchedulerSpec `json:"scheduler,omitempty"`

	// SuperuserSecret names a Secret in the cluster's namespace with the superuser's password
	// under the key "password". Empty: the operator generates <cluster>-superuser.
	// +optional
	SuperuserSecret *corev1.LocalObjectReference `json:"superuserSecret,omitempty"`
}

// PostgreSQLSpec configures the PostgreSQL server.
type PostgreSQLSpec struct {
	// Parameters are postgresql.conf settings. The ones pgwarden manages itself (replication,
	// listening, the data directory) are rejected.
	// +kubebuilder:validation:XValidation:rule="!self.exists(k, k.lowerAscii() in ['config_file', 'data_directory', 'external_pid_file', 'hba_file', 'hot_standby', 'ident_file', 'listen_addresses', 'log_destination', 'log_line_prefix', 'logging_collector', 'password_encryption', 'port', 'primary_conninfo', 'primary_slot_name', 'promote_trigger_file', 'recovery_target', 'recovery_target_action', 'recovery_target_inclusive', 'recovery_target_lsn', 'recovery_target_name', 'recovery_target_time', 'recovery_target_timeline', 'recovery_target_xid', 'restore_command', 'synchronous_standby_names', 'unix_socket_directories', 'wal_log_hints'])",message="spec.postgresql.parameters must not set parameters pgwarden manages: config_file, data_directory, external_pid_file, hba_file, hot_standby, ident_file, listen_addresses, log_destination, log_line_prefix, logging_collector, password_encryption, port, primary_conninfo, primary_slot_name, promote_trigger_file, recovery_target, recovery_target_action, recovery_target_inclusive, recovery_target_lsn, recovery_target_name, recovery_target_time, recovery_target_timeline, recovery_target_xid, restore_command, synchronous_standby_names, unix_socket_directories, wal_log_hints"
	// +kubebuilder:validation:XValidation:rule="!has(self.wal_level) || self.wal_level in ['replica', 'logical', 'Replica', 'Logical', 'REPLICA', 'LOGICAL']",message="spec.postgresql.parameters: wal_level must be replica or logical (replication needs it)"
	// +kubebuilder:validation:XValidation:rule="!has(self.full_page_writes) || !(self.full_page_writes in ['off', 'of', 'false', 'f', 'fa', 'fal', 'fals', 'no', 'n', '0', 'OFF', 'Off', 'FALSE', 'False', 'NO', 'No'])",message="spec.postgresql.parameters: full_page_writes must stay on (pg_rewind needs it to rejoin a former primary)"
	// +kubebuilder:validation:XValidation:rule="(!has(self.max_wal_senders) || int(self.max_wal_senders) > 0) && (!has(self.max_replication_slots) || int(self.max_replication_slots) > 0)",message="spec.postgresql.parameters: max_wal_senders and max_replication_slots must be positive integers (replication needs them)"
	// +kubebuilder:validation:MaxProperties=200
	// +optional
	Parameters map[string]string `json:"parameters,omitempty"`
}

// StorageSpec is an instance's data volume (one PVC per instance).
//
// +kubebuilder:validation:XValidation:rule="has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",message="spec.storage.storageClassName is immutable: existing volumes cannot move to another class"
// +kubebuilder:validation:XValidation:rule="quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0",message="spec.storage.size cannot shrink: volumes cannot be made smaller without losing data"
// +kubebuilder:validation:XValidation:rule="quantity(string(self.size)).isGreaterThan(quantity('0'))",message="spec.storage.size must be positive",fieldPath=".size"
type StorageSpec struct {
	// Size of each instance's volume, e.g. 1Gi.
	// +kubebuilder:validation:XIntOrString
	Size resource.Quantity `json:"size"`
	// StorageClassName of the volumes; empty: the cluster's default class. Immutable.
	// +optional
	StorageClassName *string `json:"storageClassName,omitempty"`
}

// FailoverSpec configures automatic failover and requested switchover.
type FailoverSpec struct {
	// IsDisabled turns automatic failover off; a requested switchover still works.
	// +optional
	IsDisabled bool `json:"isDisabled,omitempty"`
	// Delay is how long, in seconds, the primary must have been failing before the operator
	// fails over.
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:default=0
	// +optional
	Delay int32 `json:"delay,omitempty"`
	// PromotePod requests a switchover to this pod (<cluster>-<n>). A new value is a new request;
	// to ask for the same pod again, clear the field first (the operator then clears
	// status.handledPromotePod).
	// +optional
	PromotePod string `json:"promotePod,omitempty"`
}

// ReplicationSpec configures streaming replication.
type ReplicationSpec struct {
	// Synchronous replication: commits wait for this many standbys.
	// +optional
	Synchronous SynchronousSpec `json:"synchronous,omitempty"`
}

// SynchronousSpec configures synchronous replication.
type SynchronousSpec struct {
	// Number of standbys (ANY Number of the replicas) that must confirm a commit. 0: asynchronous.
	// With Number > 0 a failover never loses an acknowledged commit.
	// +kubebuilder:validation:Minimum=0
	// +optional
	Number int32 `json:"number,omitempty"`
}

// SchedulerSpec places the instance Pods.
type SchedulerSpec struct {
	// Affinity replaces the default (preferred anti-affinity on kubernetes.io/hostname).
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`
	// Tolerations of the instance Pods.
	// +optional
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`
}

// Phase is the cluster's state as a whole.
// +kubebuilder:validation:Enum=Creating;Healthy;FailoverRequired;FailingOver;SwitchingOver;Degraded
type Phase string

// The phases.
const (
	// PhaseCreating: the first primary is not established yet.
	PhaseCreating Phase = "Creating"
	// PhaseHealthy: the primary and every instance are ready.
	PhaseHealthy Phase = "Healthy"
	// PhaseFailoverRequired: the primary is failing; waiting for failover.delay, for a candidate,
	// or forever when automatic failover is disabled.
	PhaseFailoverRequired Phase = "FailoverRequired"
	// PhaseFailingOver: a replica was chosen and told to become primary.
	PhaseFailingOver Phase = "FailingOver"
	// PhaseSwitchingOver: a requested switchover is handing over.
	PhaseSwitchingOver Phase = "SwitchingOver"
	// PhaseDegraded: the primary serves, but something else is wrong (see conditions).
	PhaseDegraded Phase = "Degraded"
)

// Condition types.
const (
	// ConditionReady: every instance is ready and the primary is established.
	ConditionReady = "Ready"
	// ConditionSecretsReady: the Secrets the instances mount exist and are usable.
	ConditionSecretsReady = "SecretsReady"
	// ConditionAutomaticFailover: automatic failover is enabled (False: spec.failover.isDisabled).
	ConditionAutomaticFailover = "AutomaticFailover"
)

// PostgresClusterStatus is what is.
type PostgresClusterStatus struct {
	// ObservedGeneration is the spec generation this status was computed from.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase of the cluster.
	// +optional
	Phase Phase `json:"phase,omitempty"`
	// PhaseReason says why the cluster is in this phase.
	// +optional
	PhaseReason string `json:"phaseReason,omitempty"`
	// CurrentPrimary is the instance that is established as primary (labelled primary by itself).
	// +optional
	CurrentPrimary string `json:"currentPrimary,omitempty"`
	// TargetPrimary is the instance the operator decided should be primary (annotated primary).
	// It differs from CurrentPrimary during a failover or switchover.
	// +optional
	TargetPrimary string `json:"targetPrimary,omitempty"`
	// Instances is the number of instance Pods that exist.
	// +optional
	Instances int32 `json:"instances,omitempty"`
	// ReadyInstances is the number of ready instance Pods.
	// +optional
	ReadyInstances int32 `json:"readyInstances,omitempty"`
	// InstancesStatus is each instance's role, position and readiness.
	// +optional
	// +listType=map
	// +listMapKey=name
	InstancesStatus []InstanceStatus `json:"instancesStatus,omitempty"`
	// PrimaryFailingSince is when the operator first saw the target primary failing.
	// +optional
	PrimaryFailingSince *metav1.Time `json:"primaryFailingSince,omitempty"`
	// TransitionStartedAt is when the running failover or switchover started.
	// +optional
	TransitionStartedAt *metav1.Time `json:"transitionStartedAt,omitempty"`
	// HandledPromotePod is the last spec.failover.promotePod the operator acted on (or rejected);
	// empty once the field is cleared.
	// +optional
	HandledPromotePod string `json:"handledPromotePod,omitempty"`
	// Conditions: Ready, SecretsReady, AutomaticFailover.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// InstanceStatus is one instance as the operator last saw it.
type InstanceStatus struct {
	// Name of the Pod.
	Name string `json:"name"`
	// Role is the observed role (the Pod's pgwarden.io/instance-role label), empty if none.
	// +optional
	Role string `json:"role,omitempty"`
	// DesiredRole is the Pod's pgwarden.io/role annotation.
	// +optional
	DesiredRole string `json:"desiredRole,omitempty"`
	// Ready is the Pod's Ready condition.
	Ready bool `json:"ready"`
	// Timeline from the instance's /status.
	// +optional
	Timeline uint32 `json:"timeline,omitempty"`
	// LSN is the primary's current LSN or a replica's received LSN, from /status.
	// +optional
	LSN string `json:"lsn,omitempty"`
	// ReplayLSN is a replica's replay LSN, from /status.
	// +optional
	ReplayLSN string `json:"replayLSN,omitempty"`
	// Fenced is true while the Pod asks to be fenced (pgwarden.io/fenced=true) or the instance
	// still reports itself fenced; Message says where the fence stands.
	// +optional
	Fenced bool `json:"fenced,omitempty"`
	// Message says why the instance is not ready (volume pending, image pull, crash loop, ...).
	// +optional
	Message string `json:"message,omitempty"`
}
