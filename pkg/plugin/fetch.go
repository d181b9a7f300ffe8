package plugin

import (
	"github.com/pgwarden/pgwarden/pkg/statusapi"

	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
)

// StatusPort is the instance manager's probes and /status port.
const StatusPort = statusapi.Port

// InstanceStatus is the JSON an instance manager serves on GET :8000/status (package statusapi).
type InstanceStatus = statusapi.Status

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
