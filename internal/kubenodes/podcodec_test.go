package kubenodes

import (
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	apiruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	clientfeatures "k8s.io/client-go/features"
	clientfeaturestesting "k8s.io/client-go/features/testing"
	"k8s.io/client-go/kubernetes/scheme"

	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/internal/test/background"
	"github.com/mayfly-pki/mayfly/internal/test/cluster"
	"github.com/mayfly-pki/mayfly/internal/test/fleet"
	"github.com/mayfly-pki/mayfly/internal/test/wait"
)

// codecPods are podVariants and the objects only a watch brings: bookmarks
// and an empty pod.
func codecPods() map[string]*corev1.Pod {
	pods := podVariants()
	pods["bookmark"] = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "99", Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "true"}}}
	pods["bookmark_not_end"] = &corev1.Pod{ObjectMeta: metav1.ObjectMeta{ResourceVersion: "99", Annotations: map[string]string{metav1.InitialEventsAnnotationKey: "false"}}}
	pods["empty"] = &corev1.Pod{}
	for _, p := range pods {
		p.ResourceVersion = "4711"
	}
	return pods
}

// encodeProtobuf encodes obj as the API server sends it.
func encodeProtobuf(t testing.TB, obj apiruntime.Object) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := scheme.Codecs.EncoderForVersion(protobuf.NewSerializer(scheme.Scheme, scheme.Scheme), corev1.SchemeGroupVersion)
	if err := enc.Encode(obj, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func encodeJSON(t testing.TB, obj apiruntime.Object) []byte {
	t.Helper()
	info, _ := apiruntime.SerializerInfoForMediaType(scheme.Codecs.SupportedMediaTypes(), apiruntime.ContentTypeJSON)
	var b bytes.Buffer
	if err := scheme.Codecs.EncoderForVersion(info.Serializer, corev1.SchemeGroupVersion).Encode(obj, &b); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// testPodDecoder is the decoder the pod client uses for a response of
// mediaType.
func testPodDecoder(mediaType string) apiruntime.Decoder {
	s := podSerializer{scheme.Codecs.WithoutConversion()}
	info, _ := apiruntime.SerializerInfoForMediaType(s.SupportedMediaTypes(), mediaType)
	return s.DecoderToVersion(info.Serializer, corev1.SchemeGroupVersion)
}

type encoded struct {
	name string
	data []byte
	dec  apiruntime.Decoder
}

func encodings(t testing.TB, obj apiruntime.Object) []encoded {
	return []encoded{
		{"protobuf", encodeProtobuf(t, obj), testPodDecoder(apiruntime.ContentTypeProtobuf)},
		{"json", encodeJSON(t, obj), testPodDecoder(apiruntime.ContentTypeJSON)},
	}
}

// TestPodDecoderReadsWhatTheTransformKeeps: a pod decoded from protobuf
// by the cache's own decoder is the cachedPod the transform makes of the
// pod client-go decodes, for every field the cache keeps; JSON goes
// through client-go's decoder and the transform; lists too.
func TestPodDecoderReadsWhatTheTransformKeeps(t *testing.T) {
	pods := codecPods()
	for name, full := range pods {
		for _, enc := range encodings(t, full) {
			t.Run(name+"/"+enc.name, func(t *testing.T) {
				obj, gvk, err := enc.dec.Decode(enc.data, nil, nil)
				if err != nil {
					t.Fatal(err)
				}
				if got, want := obj, newCachedPod(full); !reflect.DeepEqual(got, want) {
					t.Errorf("decoded %+v, want %+v", got, want)
				}
				if gvk == nil || *gvk != podKind {
					t.Errorf("kind %v, want %v", gvk, podKind)
				}
			})
		}
	}
	list := &corev1.PodList{ListMeta: metav1.ListMeta{ResourceVersion: "812", Continue: "next-page"}}
	var want []*cachedPod
	for _, name := range []string{"running", "terminating", "mirror", "empty"} {
		list.Items = append(list.Items, *pods[name])
		want = append(want, newCachedPod(pods[name]))
	}
	for _, enc := range encodings(t, list) {
		t.Run("list/"+enc.name, func(t *testing.T) {
			into := &cachedPodList{Items: []*cachedPod{{name: "stale"}}}
			obj, _, err := enc.dec.Decode(enc.data, nil, into)
			if err != nil {
				t.Fatal(err)
			}
			if obj != into {
				t.Fatalf("decoded into %T, not the list given", obj)
			}
			if into.ResourceVersion != "812" || into.Continue != "next-page" || !reflect.DeepEqual(into.Items, want) {
				t.Errorf("list %+v with items %+v, want resource version 812, continue next-page, items %+v", into.ListMeta, into.Items, want)
			}
		})
	}
	t.Run("status", func(t *testing.T) {
		status := &metav1.Status{Status: metav1.StatusFailure, Reason: metav1.StatusReasonExpired, Code: 410, Message: "too old"}
		for _, enc := range encodings(t, status) {
			obj, _, err := enc.dec.Decode(enc.data, nil, nil)
			got, ok := obj.(*metav1.Status)
			if err != nil || !ok || got.Reason != metav1.StatusReasonExpired || got.Code != 410 {
				t.Errorf("a Status decodes as %#v (%v), want the Status", obj, err)
			}
		}
	})
}

// TestPodDecoderMergesRepeatedFields: a field sent twice merges as the
// generated decoder merges it (the last scalar wins, messages merge).
func TestPodDecoderMergesRepeatedFields(t *testing.T) {
	a, b := fleet.Pod(1, "node-a"), fleet.Pod(2, "node-b")
	now := metav1.Now()
	b.DeletionTimestamp = &now
	b.Status.Phase = corev1.PodFailed
	ra, rb := rawPod(t, a), rawPod(t, b)
	both := append(append([]byte{}, ra...), rb...)
	var full corev1.Pod
	if err := full.Unmarshal(both); err != nil {
		t.Fatal(err)
	}
	var got cachedPod
	if err := got.decode(both); err != nil {
		t.Fatal(err)
	}
	if want := newCachedPod(&full); !reflect.DeepEqual(&got, want) {
		t.Errorf("decoded %+v, want %+v", got, want)
	}
}

// rawPod is the protobuf of pod alone, without the type's envelope.
func rawPod(t testing.TB, pod *corev1.Pod) []byte {
	t.Helper()
	b, err := pod.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestPodDecoderRefusesBadInput: malformed protobuf is an error naming
// where it is wrong, never a panic nor a pod.
func TestPodDecoderRefusesBadInput(t *testing.T) {
	dec := testPodDecoder(apiruntime.ContentTypeProtobuf)
	good := encodeProtobuf(t, fleet.Pod(1, "node-a"))
	wrap := func(raw []byte) []byte {
		var u apiruntime.Unknown
		u.APIVersion, u.Kind, u.Raw = "v1", "Pod", raw
		b, err := u.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return append(append([]byte{}, protobufMagic...), b...)
	}
	field := func(num protowire.Number, typ protowire.Type, value []byte) []byte {
		b := protowire.AppendTag(nil, num, typ)
		if typ == protowire.BytesType {
			return protowire.AppendBytes(b, value)
		}
		return protowire.AppendVarint(b, 7)
	}
	for _, tc := range []struct {
		name, data, want string
	}{
		{"truncated", string(good[:len(good)/2]), "decoding"},
		{"truncated_length", string(wrap([]byte{0x0a, 0x80})), "field 1"},
		{"metadata_not_a_message", string(wrap(field(podMetadata, protowire.VarintType, nil))), "metadata: wrong wire type"},
		{"name_not_a_string", string(wrap(field(podMetadata, protowire.BytesType, field(metaName, protowire.VarintType, nil)))), "metadata: wrong wire type"},
		{"node_name_not_a_string", string(wrap(field(podSpec, protowire.BytesType, field(specNodeName, protowire.Fixed64Type, nil)))), "spec"},
		{"phase_not_a_string", string(wrap(field(podStatus, protowire.BytesType, field(statusPhase, protowire.VarintType, nil)))), "status.phase: wrong wire type"},
		{"annotation_truncated", string(wrap(field(podMetadata, protowire.BytesType, field(metaAnnotations, protowire.BytesType, []byte{0x0a, 0x09, 'a'})))), "metadata.annotations"},
		{"tag_zero", string(wrap([]byte{0x00, 0x00})), "field tag"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			obj, _, err := dec.Decode([]byte(tc.data), nil, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("decoded %v, %v; want an error containing %q", obj, err, tc.want)
			}
		})
	}
}

// FuzzPodDecoder: on any bytes the cache's decoder does not panic and
// reads what the generated decoder and the transform read
// (decodesAsClientGo).
func FuzzPodDecoder(f *testing.F) {
	for _, p := range codecPods() {
		f.Add(rawPod(f, p))
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		if err := decodesAsClientGo(data); err != nil {
			t.Fatal(err)
		}
	})
}

// decodesAsClientGo checks the cache's decoder on data against the
// generated decoder and the transform. Where the generated decoder reads
// a pod from data that is its own encoding of that pod (what an API
// server sends), the cache's decoder reads the transform of it; on other
// bytes the generated decoder reads it may refuse them (the generated
// decoder is lenient with malformed input: it reads a map's string past
// the end of its entry), but whatever it reads is that transform too. It
// may read bytes the generated decoder refuses: it steps over the fields
// it does not keep without decoding them.
func decodesAsClientGo(data []byte) error {
	var got cachedPod
	gotErr := got.decode(data)
	var full corev1.Pod
	if full.Unmarshal(data) != nil {
		return nil
	}
	if gotErr != nil {
		if canonical, err := full.Marshal(); err == nil && bytes.Equal(canonical, data) {
			return fmt.Errorf("the generated decoder reads the pod, the cache's fails: %w", gotErr)
		}
		return nil
	}
	if want := newCachedPod(&full); !reflect.DeepEqual(&got, want) {
		return fmt.Errorf("decoded %+v, want %+v", got, want)
	}
	return nil
}

// TestPodDecoderOnMutatedPods is FuzzPodDecoder's property
// (decodesAsClientGo) on 20,000
// mutations of encoded pods (bytes changed, inserted, cut), from a fixed
// seed: the fuzzing engine runs slowly on this package (the coverage of
// k8s.io/api's generated code), so the property is also checked here.
func TestPodDecoderOnMutatedPods(t *testing.T) {
	var seeds [][]byte
	for _, p := range codecPods() {
		seeds = append(seeds, rawPod(t, p))
	}
	rng := rand.New(rand.NewPCG(16, 4))
	for i := range 20000 {
		data := slices.Clone(seeds[rng.IntN(len(seeds))])
		for range 1 + rng.IntN(4) {
			if len(data) == 0 {
				break
			}
			at := rng.IntN(len(data))
			switch rng.IntN(3) {
			case 0:
				data[at] = byte(rng.UintN(256))
			case 1:
				data = slices.Insert(data, at, byte(rng.UintN(256)))
			default:
				data = data[:at]
			}
		}
		if err := decodesAsClientGo(data); err != nil {
			t.Fatalf("mutation %d: %v", i, err)
		}
	}
}

// TestPodCacheListsFromTheAPIServer: the cache of a real API server holds
// every pod as the transform of the pod the API server returns, whether
// the first list is streamed (watch-list, client-go's default) or paged
// (a list of 2 pods a page, as when the API server cannot stream), and
// follows the watch after it.
func TestPodCacheListsFromTheAPIServer(t *testing.T) {
	c := cluster.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	ns := "listed"
	if _, err := c.Client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var created []*corev1.Pod
	for i := range 7 {
		p := fleet.Pod(i, fmt.Sprintf("node-%d", i%2))
		p.Namespace, p.UID = ns, ""
		switch i {
		case 1:
			p.Annotations[policy.MirrorPodAnnotation] = "x"
		case 2: // stays terminating while its finalizer is there
			p.Finalizers = []string{"example.org/hold"}
		}
		out, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		created = append(created, out)
	}
	if err := c.Client.CoreV1().Pods(ns).Delete(ctx, created[2].Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		watchList bool
	}{{"watch-list", true}, {"paged list", false}} {
		t.Run(tc.name, func(t *testing.T) {
			clientfeaturestesting.SetFeatureDuringTest(t, clientfeatures.WatchListClient, tc.watchList)
			cache := NewPodCache(c.Client, 0)
			if lw, _ := podsListWatch(c.Client); lw == nil {
				t.Fatal("no list and watch of its own for a real client")
			}
			if !tc.watchList { // several pages
				lw, _ := podsListWatch(c.Client)
				list, err := lw.ListWithContext(ctx, metav1.ListOptions{Limit: 2})
				if err != nil {
					t.Fatal(err)
				}
				if l := list.(*cachedPodList); len(l.Items) != 2 || l.Continue == "" {
					t.Fatalf("a list of 2 a page returned %d pods, continue %q", len(l.Items), l.Continue)
				}
			}
			runCtx := background.Run(t, "pod cache", cache.Start)
			syncCtx, syncCancel := context.WithTimeout(runCtx, 30*time.Second)
			defer syncCancel()
			if !cache.WaitSynced(syncCtx) {
				t.Fatal("not synced within 30s")
			}
			for _, p := range created {
				current, err := c.Client.CoreV1().Pods(ns).Get(ctx, p.Name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				got, ok := cache.ByUID(string(p.UID))
				if want := policy.PodOf(current); !ok || got != want {
					t.Errorf("pod %s: cache has %+v (%v), want %+v", p.Name, got, ok, want)
				}
			}
			// Then the watch: a new pod, a deleted one.
			p := fleet.Pod(100, "node-9")
			p.Namespace, p.UID, p.Name = ns, "", p.Name+"-"+strings.ReplaceAll(tc.name, " ", "-")
			added, err := c.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			wait.Within(t, "the watched pod in the cache", 30*time.Second, 10*time.Millisecond, func() bool {
				got, ok := cache.ByUID(string(added.UID))
				return ok && got == policy.PodOf(added)
			})
			if err := c.Client.CoreV1().Pods(ns).Delete(ctx, added.Name, metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
				t.Fatal(err)
			}
			wait.Within(t, "the watched pod gone from the cache", 30*time.Second, 10*time.Millisecond, func() bool {
				_, ok := cache.ByUID(string(added.UID))
				return !ok
			})
			if _, ok := cache.ByUID(string(created[0].UID)); !ok {
				t.Error("a listed pod is gone after the watch")
			}
		})
	}
}

// BenchmarkPodDecode decodes one watch event's pod (a fleet pod in
// protobuf, as the API server sends it) the way the cache did before,
// client-go's decoder and the transform (client-go), and with the
// cache's own decoder (cache): the ratio of the two is the CA's decoding
// CPU per pod.
func BenchmarkPodDecode(b *testing.B) {
	pod := fleet.Pod(1, fleet.NodeName(1))
	pod.ManagedFields = []metav1.ManagedFieldsEntry{{Manager: "kube-controller-manager", Operation: metav1.ManagedFieldsOperationUpdate, APIVersion: "v1",
		FieldsType: "FieldsV1", FieldsV1: metav1.NewFieldsV1(`{"f:metadata":{"f:generateName":{},"f:labels":{".":{},"f:app.kubernetes.io/name":{}}},"f:spec":{"f:containers":{"k:{\"name\":\"app\"}":{".":{},"f:image":{},"f:name":{}}}}}`)}}
	data := encodeProtobuf(b, pod)
	b.Run("client-go", func(b *testing.B) {
		info, _ := apiruntime.SerializerInfoForMediaType(scheme.Codecs.WithoutConversion().SupportedMediaTypes(), apiruntime.ContentTypeProtobuf)
		dec := scheme.Codecs.WithoutConversion().DecoderToVersion(info.Serializer, corev1.SchemeGroupVersion)
		b.ReportAllocs()
		for b.Loop() {
			obj, _, err := dec.Decode(data, nil, nil)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := compactPodObject(obj); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("cache", func(b *testing.B) {
		dec := testPodDecoder(apiruntime.ContentTypeProtobuf)
		b.ReportAllocs()
		for b.Loop() {
			if _, _, err := dec.Decode(data, nil, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}
