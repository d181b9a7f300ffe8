package roles

import (
	"context"
	"fmt"
	"net/http"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/flowcontrol"
)

// The client's scheme knows core/v1 (Pods, Events), coordination/v1 (Lease) and the meta/v1
// options and Status, nothing else. Deliberately not k8s.io/client-go/kubernetes: its scheme
// registers every API group at init, which costs the instance manager (PID 1 of every Postgres
// Pod) several MiB of resident memory for types it never uses.
var (
	clientScheme = runtime.NewScheme()
	clientCodecs = serializer.NewCodecFactory(clientScheme)
	paramCodec   = runtime.NewParameterCodec(clientScheme)
)

func init() {
	metav1.AddToGroupVersion(clientScheme, schema.GroupVersion{Version: "v1"})
	if err := corev1.AddToScheme(clientScheme); err != nil {
		panic(err)
	}
	if err := coordinationv1.AddToScheme(clientScheme); err != nil {
		panic(err)
	}
}

// Client is the small Kubernetes API client of this package: the few requests an instance
// makes on Pods, Events (core/v1) and Leases (coordination/v1), in JSON. Create it with
// NewClient; it is safe for concurrent use.
type Client struct {
	core  rest.Interface // /api/v1
	coord rest.Interface // /apis/coordination.k8s.io/v1
}

// NewClient returns a Client for cfg. Like a client-go clientset, both API groups share one
// HTTP client and one rate limiter (cfg.QPS and cfg.Burst, unless cfg.RateLimiter is set).
func NewClient(cfg *rest.Config) (*Client, error) {
	c := rest.CopyConfig(cfg)
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	if c.RateLimiter == nil && c.QPS > 0 {
		if c.Burst <= 0 {
			return nil, fmt.Errorf("burst must be positive when QPS is positive")
		}
		c.RateLimiter = flowcontrol.NewTokenBucketRateLimiter(c.QPS, c.Burst)
	}
	hc, err := rest.HTTPClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("cannot create the Kubernetes HTTP client: %w", err)
	}
	core, err := newRESTClient(c, hc, "/api", corev1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	coord, err := newRESTClient(c, hc, "/apis", coordinationv1.SchemeGroupVersion)
	if err != nil {
		return nil, err
	}
	return &Client{core: core, coord: coord}, nil
}

func newRESTClient(cfg *rest.Config, hc *http.Client, apiPath string, gv schema.GroupVersion) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.APIPath = apiPath
	c.GroupVersion = &gv
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	c.NegotiatedSerializer = clientCodecs.WithoutConversion()
	rc, err := rest.RESTClientForConfigAndClient(c, hc)
	if err != nil {
		return nil, fmt.Errorf("cannot create the Kubernetes client for %s: %w", gv, err)
	}
	return rc, nil
}

// ListPods lists the Pods of namespace selected by opts.
func (c *Client) ListPods(ctx context.Context, namespace string, opts metav1.ListOptions) (*corev1.PodList, error) {
	list := &corev1.PodList{}
	err := c.core.Get().Namespace(namespace).Resource("pods").
		VersionedParams(&opts, paramCodec).Timeout(timeoutOf(opts)).Do(ctx).Into(list)
	return list, err
}

func (c *Client) watchPods(ctx context.Context, namespace string, opts metav1.ListOptions) (watch.Interface, error) {
	opts.Watch = true
	return c.core.Get().Namespace(namespace).Resource("pods").
		VersionedParams(&opts, paramCodec).Timeout(timeoutOf(opts)).Watch(ctx)
}

func (c *Client) patchPod(ctx context.Context, namespace, name string, pt types.PatchType, patch []byte) (*corev1.Pod, error) {
	pod := &corev1.Pod{}
	err := c.core.Patch(pt).Namespace(namespace).Resource("pods").Name(name).
		VersionedParams(&metav1.PatchOptions{}, paramCodec).Body(patch).Do(ctx).Into(pod)
	return pod, err
}

func (c *Client) createEvent(ctx context.Context, ev *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := c.core.Post().Namespace(ev.Namespace).Resource("events").
		VersionedParams(&metav1.CreateOptions{}, paramCodec).Body(ev).Do(ctx).Into(out)
	return out, err
}

// leaseClient is the Lease requests of one namespace, shaped like client-go's typed client.
type leaseClient struct {
	c         rest.Interface
	namespace string
}

func (c *Client) leases(namespace string) leaseClient { return leaseClient{c.coord, namespace} }

func (l leaseClient) Get(ctx context.Context, name string, opts metav1.GetOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := l.c.Get().Namespace(l.namespace).Resource("leases").Name(name).
		VersionedParams(&opts, paramCodec).Do(ctx).Into(out)
	return out, err
}

func (l leaseClient) Create(ctx context.Context, lease *coordinationv1.Lease, opts metav1.CreateOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := l.c.Post().Namespace(l.namespace).Resource("leases").
		VersionedParams(&opts, paramCodec).Body(lease).Do(ctx).Into(out)
	return out, err
}

func (l leaseClient) Update(ctx context.Context, lease *coordinationv1.Lease, opts metav1.UpdateOptions) (*coordinationv1.Lease, error) {
	out := &coordinationv1.Lease{}
	err := l.c.Put().Namespace(l.namespace).Resource("leases").Name(lease.Name).
		VersionedParams(&opts, paramCodec).Body(lease).Do(ctx).Into(out)
	return out, err
}

// timeoutOf is the request timeout a list or watch asks the server for, as client-go's typed
// clients set it.
func timeoutOf(opts metav1.ListOptions) time.Duration {
	if opts.TimeoutSeconds == nil {
		return 0
	}
	return time.Duration(*opts.TimeoutSeconds) * time.Second
}
