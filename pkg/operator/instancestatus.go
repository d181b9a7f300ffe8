package operator

import (
	"github.com/pgwarden/pgwarden/pkg/statusapi"

	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// InstanceStatus is an instance's GET :8000/status (package statusapi).
type InstanceStatus = statusapi.Status

// StatusClient asks one instance for its status. The operator's is HTTPStatusClient; tests
// inject one that maps Pods to loopback servers.
type StatusClient interface {
	Status(ctx context.Context, pod *corev1.Pod) (*InstanceStatus, error)
}

// HTTPStatusClient GETs http://<pod IP>:<Port>/status.
type HTTPStatusClient struct {
	Port   int
	Client *http.Client
	// AddressFor, if set, replaces the pod IP and port (host:port); for tests.
	AddressFor func(pod *corev1.Pod) (string, error)
}

// maxStatusBytes bounds what is read of an answer: a status is a few hundred bytes.
const maxStatusBytes = 64 << 10

// Status implements StatusClient.
func (h *HTTPStatusClient) Status(ctx context.Context, pod *corev1.Pod) (*InstanceStatus, error) {
	var addr string
	if h.AddressFor != nil {
		a, err := h.AddressFor(pod)
		if err != nil {
			return nil, err
		}
		addr = a
	} else {
		if pod.Status.PodIP == "" {
			return nil, fmt.Errorf("cannot read status of %s: no pod IP", pod.Name)
		}
		addr = net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(h.Port))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/status", nil)
	if err != nil {
		return nil, err
	}
	client := h.Client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot read status of %s: %w", pod.Name, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusBytes))
	if err != nil {
		return nil, fmt.Errorf("cannot read status of %s: %w", pod.Name, err)
	}
	var st InstanceStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return nil, fmt.Errorf("cannot parse status of %s (HTTP %d): %w", pod.Name, resp.StatusCode, err)
	}
	return &st, nil
}

type statusResult struct {
	status *InstanceStatus
	err    error
}

// fetchStatuses asks every pod in parallel, each bounded by timeout, and returns by pod name.
func fetchStatuses(ctx context.Context, sc StatusClient, pods []*corev1.Pod, timeout time.Duration) map[string]statusResult {
	out := make(map[string]statusResult, len(pods))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			st, err := sc.Status(cctx, p)
			mu.Lock()
			out[p.Name] = statusResult{st, err}
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}
