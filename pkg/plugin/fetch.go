package plugin

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
)

// StatusPort is the instance manager's probes and /status port.
const StatusPort = 8000

// InstanceStatus is the JSON an instance manager serves on GET :8000/status (the fields the plugin
// uses; pkg/instance.Status is the source of truth, copied here to keep the plugin small).
type InstanceStatus struct {
	Role           string `json:"role"`
	Timeline       uint32 `json:"timeline,omitempty"`
	CurrentLSN     string `json:"currentLSN,omitempty"`
	ReceivedLSN    string `json:"receivedLSN,omitempty"`
	ReplayLSN      string `json:"replayLSN,omitempty"`
	PostmasterPID  int    `json:"postmasterPID"`
	Ready          bool   `json:"ready"`
	NotReady       string `json:"notReady,omitempty"`
	LeaseHolder    string `json:"leaseHolder"`
	PendingRestart bool   `json:"pendingRestart"`
	Mode           string `json:"mode,omitempty"`
	Phase          string `json:"phase,omitempty"`
	DesiredRole    string `json:"desiredRole,omitempty"`
	Upstream       string `json:"upstream,omitempty"`
	// ReplayLagSeconds is not served by the instance manager yet; when it is, the plugin shows it.
	ReplayLagSeconds *float64 `json:"replayLagSeconds,omitempty"`
}

// StatusFetcher reads one instance's /status.
type StatusFetcher interface {
	FetchStatus(ctx context.Context, namespace, pod string) (*InstanceStatus, error)
}

// PodProxyFetcher reads /status through the API server's pod proxy:
// GET /api/v1/namespaces/<ns>/pods/<pod>:8000/proxy/status.
type PodProxyFetcher struct {
	Client  kubernetes.Interface
	Port    int           // 0 means StatusPort
	Timeout time.Duration // per request; 0 means 2s
}

// FetchStatus implements StatusFetcher.
func (f PodProxyFetcher) FetchStatus(ctx context.Context, namespace, pod string) (*InstanceStatus, error) {
	timeout := f.Timeout
	if timeout <= 0 {
		timeout = 2 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	port := f.Port
	if port == 0 {
		port = StatusPort
	}
	b, err := f.Client.CoreV1().Pods(namespace).ProxyGet("http", pod, strconv.Itoa(port), "status", nil).DoRaw(ctx)
	if err != nil {
		return nil, err
	}
	return decodeStatus(b)
}

func decodeStatus(b []byte) (*InstanceStatus, error) {
	var st InstanceStatus
	if err := json.Unmarshal(b, &st); err != nil {
		return nil, fmt.Errorf("invalid /status: %w", err)
	}
	return &st, nil
}
