package kubenodes

import (
	"bytes"
	"context"
	"fmt"
	"time"
	"unique"

	"google.golang.org/protobuf/encoding/protowire"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	k8stypes "k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/mayfly-pki/mayfly/internal/policy"
)

// The pod cache decodes pods itself. client-go's decoder builds every
// field of a corev1.Pod (containers, volumes, managed fields: over a
// hundred allocations a pod) for the transform to keep a few of them;
// with 150,000 pods that decoding and the garbage collection it caused
// were most of the CA's CPU time until ready. podDecoder reads the
// protobuf of a Pod or a PodList, as the API server sends it in the
// watch-list's events and in list responses, and makes the cachedPods
// directly, stepping over the fields the cache does not keep. Anything
// else (a Status, JSON) goes to client-go's decoder, and pods that come
// so are reduced by newCachedPod.

// protobufMagic prefixes Kubernetes' protobuf encoding of an object
// (a runtime.Unknown holding its type and bytes).
var protobufMagic = []byte("k8s\x00")

// Field numbers, from the generated.proto files of k8s.io/apimachinery
// (runtime.Unknown, TypeMeta, ObjectMeta) and k8s.io/api/core/v1.
const (
	unknownTypeMeta, unknownRaw          protowire.Number = 1, 2
	typeMetaAPIVersion, typeMetaKind     protowire.Number = 1, 2
	podMetadata, podSpec, podStatus      protowire.Number = 1, 2, 3
	podListMetadata, podListItems        protowire.Number = 1, 2
	metaName, metaNamespace, metaUID     protowire.Number = 1, 3, 5
	metaResourceVersion                  protowire.Number = 6
	metaDeletionTimestamp                protowire.Number = 9
	metaAnnotations                      protowire.Number = 12
	specServiceAccountName, specNodeName protowire.Number = 8, 10
	statusPhase                          protowire.Number = 1
	mapEntryKey, mapEntryValue           protowire.Number = 1, 2
)

// fields reads the fields of one protobuf message in order. A field of
// the bytes wire type (strings, messages, maps' entries) comes with its
// value; others are stepped over.
type fields struct {
	b   []byte
	err error
}

// next returns the next field; ok is false at the end or on an error
// (then err says what was wrong).
func (f *fields) next() (num protowire.Number, typ protowire.Type, value []byte, ok bool) {
	if len(f.b) == 0 || f.err != nil {
		return 0, 0, nil, false
	}
	num, typ, n := consumeKey(f.b)
	switch {
	case n < 0:
		f.err = fmt.Errorf("field tag: %w", protowire.ParseError(n))
		return 0, 0, nil, false
	case num <= 0:
		f.err = fmt.Errorf("field tag: illegal field number %d", num)
		return 0, 0, nil, false
	case typ == protowire.EndGroupType:
		f.err = fmt.Errorf("field %d: end of a group outside a group", num)
		return 0, 0, nil, false
	}
	f.b = f.b[n:]
	if typ == protowire.BytesType {
		value, n = protowire.ConsumeBytes(f.b)
	} else {
		n = skipValue(num, typ, f.b)
	}
	if n < 0 {
		f.err = fmt.Errorf("field %d: %w", num, protowire.ParseError(n))
		return 0, 0, nil, false
	}
	f.b = f.b[n:]
	return num, typ, value, true
}

// consumeKey reads a field's key as the generated decoders read it: the
// field number is the key's upper bits cut to 32, not checked against
// protobuf's range (the caller checks it where they do), the wire type
// its lowest three bits.
func consumeKey(b []byte) (protowire.Number, protowire.Type, int) {
	key, n := protowire.ConsumeVarint(b)
	if n < 0 {
		return 0, 0, n
	}
	return protowire.Number(int32(key >> 3)), protowire.Type(key & 7), n //nolint:gosec // cut to 32 bits on purpose, as the generated decoders cut it
}

// skipValue returns the length of the value of a field of type typ at
// the start of b, stepping over it as the generated decoders step over a
// field they do not know: a group ends at the end marker of its own
// depth, whatever that marker's field number.
func skipValue(num protowire.Number, typ protowire.Type, b []byte) int {
	if typ != protowire.StartGroupType {
		return protowire.ConsumeFieldValue(num, typ, b)
	}
	n := 0
	for depth := 1; depth > 0; {
		num, typ, m := consumeKey(b[n:])
		if m < 0 {
			return m
		}
		n += m
		switch typ {
		case protowire.StartGroupType:
			depth++
		case protowire.EndGroupType:
			depth--
		default:
			if m = protowire.ConsumeFieldValue(num, typ, b[n:]); m < 0 {
				return m
			}
			n += m
		}
	}
	return n
}

// bytesField reports a field the decoder reads that is not of the bytes
// wire type, as the generated decoders refuse it.
func bytesField(what string, typ protowire.Type) error {
	if typ != protowire.BytesType {
		return fmt.Errorf("%s: wrong wire type %d", what, typ)
	}
	return nil
}

// unwrapProtobuf returns the kind, API version and bytes of an object in
// Kubernetes' protobuf encoding; ok is false when data is not in it.
func unwrapProtobuf(data []byte) (apiVersion, kind string, raw []byte, ok bool, err error) {
	rest, ok := bytes.CutPrefix(data, protobufMagic)
	if !ok {
		return "", "", nil, false, nil
	}
	f := fields{b: rest}
	for num, typ, v, more := f.next(); more; num, typ, v, more = f.next() {
		switch num {
		case unknownTypeMeta:
			if err := bytesField("typeMeta", typ); err != nil {
				return "", "", nil, true, err
			}
			tm := fields{b: v}
			for num, typ, v, more := tm.next(); more; num, typ, v, more = tm.next() {
				switch num {
				case typeMetaAPIVersion, typeMetaKind:
					if err := bytesField("typeMeta", typ); err != nil {
						return "", "", nil, true, err
					}
					if num == typeMetaKind {
						kind = string(v)
					} else {
						apiVersion = string(v)
					}
				}
			}
			if tm.err != nil {
				return "", "", nil, true, fmt.Errorf("typeMeta: %w", tm.err)
			}
		case unknownRaw:
			if err := bytesField("raw", typ); err != nil {
				return "", "", nil, true, err
			}
			raw = v
		}
	}
	return apiVersion, kind, raw, true, f.err
}

// decode reads the protobuf of a corev1.Pod into p, as the
// generated decoder would before newCachedPod: a field that comes twice
// is merged as it merges it.
func (p *cachedPod) decode(b []byte) error {
	noString := unique.Make("")
	for _, h := range []*unique.Handle[string]{&p.namespace, &p.serviceAccount, &p.node} {
		if *h == (unique.Handle[string]{}) { // as newCachedPod makes it of a field not sent
			*h = noString
		}
	}
	f := fields{b: b}
	for num, typ, v, more := f.next(); more; num, typ, v, more = f.next() {
		var err error
		switch num {
		case podMetadata:
			if err = bytesField("metadata", typ); err == nil {
				err = p.decodeMeta(v)
			}
		case podSpec:
			if err = bytesField("spec", typ); err == nil {
				err = p.decodeSpec(v)
			}
		case podStatus:
			if err = bytesField("status", typ); err == nil {
				err = p.decodeStatus(v)
			}
		}
		if err != nil {
			return err
		}
	}
	return f.err
}

func (p *cachedPod) decodeMeta(b []byte) error {
	f := fields{b: b}
	for num, typ, v, more := f.next(); more; num, typ, v, more = f.next() {
		switch num {
		case metaName, metaNamespace, metaUID, metaResourceVersion, metaDeletionTimestamp, metaAnnotations:
			if err := bytesField("metadata", typ); err != nil {
				return err
			}
		}
		switch num {
		case metaName:
			p.name = string(v)
		case metaNamespace:
			p.namespace = unique.Make(string(v))
		case metaUID:
			p.uid = k8stypes.UID(v)
		case metaResourceVersion:
			p.resourceVersion = string(v)
		case metaDeletionTimestamp:
			p.terminating = true
		case metaAnnotations:
			key, value, err := mapEntry(v)
			if err != nil {
				return fmt.Errorf("metadata.annotations: %w", err)
			}
			switch string(key) {
			case policy.MirrorPodAnnotation:
				p.mirror = true
			case metav1.InitialEventsAnnotationKey:
				p.initialEventsEnd = string(value) == "true"
			}
		}
	}
	if f.err != nil {
		return fmt.Errorf("metadata: %w", f.err)
	}
	return nil
}

func (p *cachedPod) decodeSpec(b []byte) error {
	f := fields{b: b}
	for num, typ, v, more := f.next(); more; num, typ, v, more = f.next() {
		switch num {
		case specServiceAccountName, specNodeName:
			if err := bytesField("spec", typ); err != nil {
				return err
			}
			if num == specNodeName {
				p.node = unique.Make(string(v))
			} else {
				p.serviceAccount = unique.Make(string(v))
			}
		}
	}
	if f.err != nil {
		return fmt.Errorf("spec: %w", f.err)
	}
	return nil
}

func (p *cachedPod) decodeStatus(b []byte) error {
	f := fields{b: b}
	for num, typ, v, more := f.next(); more; num, typ, v, more = f.next() {
		if num == statusPhase {
			if err := bytesField("status.phase", typ); err != nil {
				return err
			}
			p.phase = phaseOf(v)
		}
	}
	if f.err != nil {
		return fmt.Errorf("status: %w", f.err)
	}
	return nil
}

// phaseOf is internPhase of the decoded bytes, without a copy for the
// API's phases.
func phaseOf(v []byte) corev1.PodPhase {
	for _, known := range knownPhases {
		if string(v) == string(known) {
			return known
		}
	}
	return corev1.PodPhase(v)
}

// mapEntry returns the key and value of one entry of a protobuf map of
// strings. As the generated decoders do, it reads the key and the value
// as strings whatever the wire type their tags say.
func mapEntry(b []byte) (key, value []byte, err error) {
	for len(b) > 0 {
		num, typ, n := consumeKey(b)
		if n < 0 {
			return nil, nil, fmt.Errorf("map entry: %w", protowire.ParseError(n))
		}
		b = b[n:]
		var v []byte
		switch num {
		case mapEntryKey, mapEntryValue:
			v, n = protowire.ConsumeBytes(b)
		default:
			n = skipValue(num, typ, b)
		}
		if n < 0 {
			return nil, nil, fmt.Errorf("map entry field %d: %w", num, protowire.ParseError(n))
		}
		b = b[n:]
		switch num {
		case mapEntryKey:
			key = v
		case mapEntryValue:
			value = v
		}
	}
	return key, value, nil
}

// cachedPodList is a list of pods as the cache decodes it (a paginated
// list, when the API server does not stream the watch-list).
type cachedPodList struct {
	metav1.ListMeta
	Items []*cachedPod
}

func (*cachedPodList) GetObjectKind() schema.ObjectKind { return schema.EmptyObjectKind }

func (l *cachedPodList) DeepCopyObject() runtime.Object {
	out := &cachedPodList{Items: make([]*cachedPod, len(l.Items))}
	meta := &l.ListMeta
	meta.DeepCopyInto(&out.ListMeta)
	for i, p := range l.Items {
		out.Items[i] = p.DeepCopyObject().(*cachedPod)
	}
	return out
}

func (l *cachedPodList) decode(b []byte) error {
	f := fields{b: b}
	for num, typ, v, more := f.next(); more; num, typ, v, more = f.next() {
		switch num {
		case podListMetadata:
			if err := bytesField("metadata", typ); err != nil {
				return err
			}
			meta := &l.ListMeta
			if err := meta.Unmarshal(v); err != nil {
				return fmt.Errorf("metadata: %w", err)
			}
		case podListItems:
			if err := bytesField("items", typ); err != nil {
				return err
			}
			p := &cachedPod{}
			if err := p.decode(v); err != nil {
				return fmt.Errorf("items[%d]: %w", len(l.Items), err)
			}
			l.Items = append(l.Items, p)
		}
	}
	return f.err
}

var (
	podKind     = corev1.SchemeGroupVersion.WithKind("Pod")
	podListKind = corev1.SchemeGroupVersion.WithKind("PodList")
)

// podDecoder decodes pods and lists of pods into cachedPods and
// cachedPodLists; other objects are next's.
type podDecoder struct{ next runtime.Decoder }

func (d podDecoder) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	apiVersion, kind, raw, ok, err := unwrapProtobuf(data)
	if ok && apiVersion == corev1.SchemeGroupVersion.String() && (kind == podKind.Kind || kind == podListKind.Kind) {
		if err != nil {
			return nil, nil, fmt.Errorf("decoding %s: %w", kind, err)
		}
		if kind == podKind.Kind {
			p := &cachedPod{}
			if err := p.decode(raw); err != nil {
				return nil, nil, fmt.Errorf("decoding Pod: %w", err)
			}
			return p, &podKind, nil
		}
		list, ok := into.(*cachedPodList)
		if !ok {
			list = &cachedPodList{}
		}
		*list = cachedPodList{}
		if err := list.decode(raw); err != nil {
			return nil, nil, fmt.Errorf("decoding PodList: %w", err)
		}
		return list, &podListKind, nil
	}
	// Not a pod in protobuf: client-go's decoder, its pods reduced.
	var full runtime.Object
	switch into.(type) {
	case *cachedPodList:
		full = &corev1.PodList{}
	case *cachedPod:
		full = &corev1.Pod{}
	default:
		full = into
	}
	obj, gvk, err := d.next.Decode(data, defaults, full)
	if err != nil {
		return nil, nil, err
	}
	switch o := obj.(type) {
	case *corev1.Pod:
		return newCachedPod(o), gvk, nil
	case *corev1.PodList:
		list, ok := into.(*cachedPodList)
		if !ok {
			list = &cachedPodList{}
		}
		*list = cachedPodList{ListMeta: o.ListMeta, Items: make([]*cachedPod, len(o.Items))}
		for i := range o.Items {
			list.Items[i] = newCachedPod(&o.Items[i])
		}
		return list, gvk, nil
	}
	return obj, gvk, nil
}

// podSerializer is client-go's serializer of built-in types, its
// decoders podDecoders.
type podSerializer struct{ runtime.NegotiatedSerializer }

func (s podSerializer) DecoderToVersion(d runtime.Decoder, gv runtime.GroupVersioner) runtime.Decoder {
	return podDecoder{next: s.NegotiatedSerializer.DecoderToVersion(d, gv)}
}

// podsListWatch lists and watches the pods of the cluster through
// client's connection with podDecoder, and returns the type of its
// objects; nil when client has no REST connection to derive it from (a
// fake clientset).
func podsListWatch(client kubernetes.Interface) (*cache.ListWatch, runtime.Object) {
	if client == nil {
		return nil, nil
	}
	typed, ok := client.CoreV1().RESTClient().(*rest.RESTClient)
	if !ok || typed == nil {
		return nil, nil
	}
	gv := corev1.SchemeGroupVersion
	rc, err := rest.NewRESTClient(typed.Get().URL(), "", rest.ClientContentConfig{
		AcceptContentTypes: runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON,
		ContentType:        runtime.ContentTypeProtobuf,
		GroupVersion:       gv,
		Negotiator:         runtime.NewClientNegotiator(podSerializer{scheme.Codecs.WithoutConversion()}, gv),
	}, typed.GetRateLimiter(), typed.Client)
	if err != nil {
		return nil, nil
	}
	timeout := func(o metav1.ListOptions) time.Duration {
		if o.TimeoutSeconds == nil {
			return 0
		}
		return time.Duration(*o.TimeoutSeconds) * time.Second
	}
	return &cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			list := &cachedPodList{}
			err := rc.Get().Resource("pods").VersionedParams(&o, scheme.ParameterCodec).Timeout(timeout(o)).Do(ctx).Into(list)
			return list, err
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.Watch = true
			return rc.Get().Resource("pods").VersionedParams(&o, scheme.ParameterCodec).Timeout(timeout(o)).Watch(ctx)
		},
	}, &cachedPod{}
}
