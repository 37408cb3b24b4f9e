package fleet

import (
	"bytes"
	"context"
	"fmt"
	"net/url"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	"k8s.io/client-go/kubernetes/scheme"
)

// RegistryPrefix is where kube-apiserver keeps objects in etcd (its
// --etcd-prefix default, which envtest keeps).
const RegistryPrefix = "/registry"

// maxTxnOps is how many puts one etcd transaction carries: etcd's default
// --max-txn-ops.
const maxTxnOps = 128

// Etcd writes objects straight into the API server's etcd, as the API
// server itself stores them: the key of its registry, protobuf in the
// "k8s\x00" envelope, no resourceVersion (the API server takes it from
// etcd's revision when it reads the object). It fills a synthetic
// cluster without the API server's per-request cost (admission, managed
// fields, the handler chain): about 3.6 ms of CPU per pod there, against
// a fraction of that here. Objects written so skip validation and
// defaulting on the way in: what is written must be valid, and the API
// server applies its defaults when it reads them.
type Etcd struct {
	conn  *grpc.ClientConn
	kv    pb.KVClient
	codec *protobuf.Serializer
}

// DialEtcd connects to the etcd at endpoint (envtest's plain-HTTP
// client URL: Environment.ControlPlane.Etcd.URL).
func DialEtcd(endpoint *url.URL) (*Etcd, error) {
	if endpoint == nil || endpoint.Host == "" {
		return nil, fmt.Errorf("etcd endpoint %v: want a URL with a host", endpoint)
	}
	if endpoint.Scheme != "http" {
		return nil, fmt.Errorf("etcd endpoint %s: only plain http (envtest's etcd) is supported", endpoint)
	}
	conn, err := grpc.NewClient("passthrough:///"+endpoint.Host, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("etcd at %s: %w", endpoint, err)
	}
	return &Etcd{conn: conn, kv: pb.NewKVClient(conn), codec: protobuf.NewSerializer(scheme.Scheme, scheme.Scheme)}, nil
}

// Close closes the connection.
func (e *Etcd) Close() error { return e.conn.Close() }

// PodKey and NodeKey are the etcd keys kube-apiserver stores a pod and a
// node under (nodes keep their historical resource name, "minions").
func PodKey(namespace, name string) string {
	return RegistryPrefix + "/pods/" + namespace + "/" + name
}

// NodeKey is the etcd key of node name.
func NodeKey(name string) string { return RegistryPrefix + "/minions/" + name }

// Encode returns obj as kube-apiserver stores it: its TypeMeta (v1,
// kind) set, resourceVersion cleared, protobuf in the runtime.Unknown
// envelope. obj is not changed: a shallow copy is encoded.
func (e *Etcd) Encode(obj runtime.Object) ([]byte, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		c := *o
		c.ResourceVersion = ""
		obj = &c
	case *corev1.Node:
		c := *o
		c.ResourceVersion = ""
		obj = &c
	default:
		return nil, fmt.Errorf("encoding %T: only pods and nodes are written to etcd", obj)
	}
	gvks, _, err := scheme.Scheme.ObjectKinds(obj)
	if err != nil {
		return nil, err
	}
	obj.GetObjectKind().SetGroupVersionKind(gvks[0])
	var b bytes.Buffer
	if err := e.codec.Encode(obj, &b); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// PutPods writes pods under their keys, in transactions of up to
// maxTxnOps puts from workers goroutines. Each pod must carry its UID and
// creationTimestamp: nothing on the way sets them.
func (e *Etcd) PutPods(ctx context.Context, pods []*corev1.Pod, workers int) error {
	return e.put(ctx, len(pods), workers, func(i int) (string, runtime.Object, error) {
		p := pods[i]
		if p.UID == "" || p.CreationTimestamp.IsZero() || p.Namespace == "" {
			return "", nil, fmt.Errorf("pod %s/%s: UID, creationTimestamp and namespace are required", p.Namespace, p.Name)
		}
		return PodKey(p.Namespace, p.Name), p, nil
	})
}

// PutNodes writes nodes under their keys, as PutPods does.
func (e *Etcd) PutNodes(ctx context.Context, nodes []*corev1.Node, workers int) error {
	return e.put(ctx, len(nodes), workers, func(i int) (string, runtime.Object, error) {
		n := nodes[i]
		if n.UID == "" || n.CreationTimestamp.IsZero() {
			return "", nil, fmt.Errorf("node %s: UID and creationTimestamp are required", n.Name)
		}
		return NodeKey(n.Name), n, nil
	})
}

// put writes objects 0..n-1 (obj(i) names each one's key) in batches of
// maxTxnOps, one transaction each, workers batches at a time; the first
// error stops the rest.
func (e *Etcd) put(ctx context.Context, n, workers int, obj func(i int) (string, runtime.Object, error)) error {
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(max(workers, 1))
	for from := 0; from < n; from += maxTxnOps {
		g.Go(func() error {
			if err := ctx.Err(); err != nil { // another batch failed
				return err
			}
			ops := make([]*pb.RequestOp, 0, maxTxnOps)
			for i := from; i < min(from+maxTxnOps, n); i++ {
				key, o, err := obj(i)
				if err != nil {
					return err
				}
				val, err := e.Encode(o)
				if err != nil {
					return fmt.Errorf("encoding %s: %w", key, err)
				}
				ops = append(ops, &pb.RequestOp{Request: &pb.RequestOp_RequestPut{RequestPut: &pb.PutRequest{Key: []byte(key), Value: val}}})
			}
			if err := e.txn(ctx, ops); err != nil {
				return fmt.Errorf("etcd transaction of %d puts from %s: %w", len(ops), ops[0].GetRequestPut().Key, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// txnAttempts bounds the tries of one transaction.
const txnAttempts = 5

// txn applies ops in one transaction. An etcd that is too busy to apply
// it in time answers Unavailable ("request timed out"), the transaction
// applied or not: puts of the same values are tried again, after a
// pause that grows.
func (e *Etcd) txn(ctx context.Context, ops []*pb.RequestOp) error {
	pause := 500 * time.Millisecond
	for attempt := 1; ; attempt++ {
		_, err := e.kv.Txn(ctx, &pb.TxnRequest{Success: ops})
		if code := status.Code(err); err == nil || attempt == txnAttempts || code != codes.Unavailable && code != codes.DeadlineExceeded {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause): // backing off from a busy etcd, not waiting for a condition
		}
		pause *= 2
	}
}

// Get returns the value stored at key, nil if there is none (for tests
// that check what the API server wrote).
func (e *Etcd) Get(ctx context.Context, key string) ([]byte, error) {
	resp, err := e.kv.Range(ctx, &pb.RangeRequest{Key: []byte(key)})
	if err != nil {
		return nil, err
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}
