package caapp

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
)

// TestKubeClientSpeaksProtobuf: the CA's Kubernetes client asks the API
// server for protobuf (client-go's typed clients of built-in types do when
// no content type is set; the pod list of a large cluster decodes faster
// than from JSON) and still reads a JSON answer.
func TestKubeClientSpeaksProtobuf(t *testing.T) {
	accept := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case accept <- r.Header.Get("Accept"):
		default:
		}
		w.Header().Set("Content-Type", runtime.ContentTypeJSON)
		_, _ = w.Write([]byte(`{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1"},"items":[{"metadata":{"name":"web-0","namespace":"apps"}}]}`))
	}))
	defer srv.Close()
	_, kube, err := kubeClients(&rest.Config{Host: srv.URL})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pods, err := kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{})
	if err != nil || len(pods.Items) != 1 || pods.Items[0].Name != "web-0" {
		t.Fatalf("List with a JSON answer = %v, %v; want the pod web-0", pods, err)
	}
	if got := <-accept; !strings.HasPrefix(got, runtime.ContentTypeProtobuf) || !strings.Contains(got, runtime.ContentTypeJSON) {
		t.Errorf("Accept: %q, want protobuf first, JSON as fallback", got)
	}
}
