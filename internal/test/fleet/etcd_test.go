package fleet

import (
	"bytes"
	"context"
	"net/url"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
)

func TestDialEtcdBadEndpoint(t *testing.T) {
	for _, u := range []*url.URL{nil, {Scheme: "http"}, {Scheme: "https", Host: "127.0.0.1:2379"}} {
		if e, err := DialEtcd(u); err == nil {
			_ = e.Close()
			t.Errorf("DialEtcd(%v): want an error", u)
		}
	}
}

// TestEncode checks the stored form: the protobuf envelope, the kind
// set, no resourceVersion, and the object handed in unchanged.
func TestEncode(t *testing.T) {
	e, err := DialEtcd(&url.URL{Scheme: "http", Host: "127.0.0.1:1"}) // never used: no connection is made
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.Close() }()
	pod := Pod(7, NodeName(3))
	pod.ResourceVersion = "42"
	raw, err := e.Encode(pod)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(raw, []byte("k8s\x00")) {
		t.Fatalf("encoded pod starts %q, want the protobuf envelope", raw[:4])
	}
	if pod.ResourceVersion != "42" || pod.Kind != "" {
		t.Fatalf("Encode changed the pod: resourceVersion %q, kind %q", pod.ResourceVersion, pod.Kind)
	}
	obj, _, err := protobuf.NewSerializer(scheme.Scheme, scheme.Scheme).Decode(raw, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := obj.(*corev1.Pod)
	if !ok {
		t.Fatalf("decoded %T, want a pod", obj)
	}
	if got.Kind != "Pod" || got.APIVersion != "v1" || got.ResourceVersion != "" || got.UID != pod.UID || got.Status.Phase != corev1.PodRunning {
		t.Fatalf("decoded pod: kind %q, apiVersion %q, resourceVersion %q, UID %q, phase %q", got.Kind, got.APIVersion, got.ResourceVersion, got.UID, got.Status.Phase)
	}
	if _, err := e.Encode(&corev1.Secret{}); err == nil {
		t.Fatal("Encode(Secret): want an error, only pods and nodes are written")
	}
}

// TestPutRequiresIdentity checks that objects without what the API server
// would have set are refused before anything is sent.
func TestPutRequiresIdentity(t *testing.T) {
	e, err := DialEtcd(&url.URL{Scheme: "http", Host: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.Close() }()
	pod := Pod(1, NodeName(1))
	pod.UID = ""
	if err := e.PutPods(context.Background(), []*corev1.Pod{pod}, 2); err == nil || !strings.Contains(err.Error(), "UID") {
		t.Fatalf("pod without UID: %v, want an error naming the UID", err)
	}
	node := Node(1)
	node.UID = ""
	if err := e.PutNodes(context.Background(), []*corev1.Node{node}, 2); err == nil || !strings.Contains(err.Error(), "UID") {
		t.Fatalf("node without UID: %v, want an error naming the UID", err)
	}
}
