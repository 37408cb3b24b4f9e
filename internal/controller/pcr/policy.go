package pcr

import (
	"errors"
	"fmt"
	"time"

	certificatesv1 "k8s.io/api/certificates/v1"

	"github.com/mayfly-pki/mayfly/internal/policy"
	"github.com/mayfly-pki/mayfly/pkg/pki"
)

// Reasons of the conditions the signer sets. A Denied request will never be
// issued: the kubelet keeps a denied projection failed for the pod's life,
// so the signer denies only what a retry cannot fix.
const (
	ReasonIssued = "Issued"
	// ReasonPodNotFound: no pod with spec.podUID named spec.podName exists
	// in the request's namespace (deleted, or re-created with a new UID).
	ReasonPodNotFound = "PodNotFound"
	// ReasonWrongNode: the pod is not scheduled on spec.nodeName.
	ReasonWrongNode = "WrongNode"
	// ReasonWrongServiceAccount: the pod does not run as spec.serviceAccountName.
	ReasonWrongServiceAccount = "WrongServiceAccount"
	// ReasonPodTerminating: the pod is being deleted or has terminated.
	ReasonPodTerminating = "PodTerminating"
	// ReasonMirrorPod: the pod is a static pod's mirror, which gets no
	// certificates (as kube-apiserver's NodeRestriction rules).
	ReasonMirrorPod = "MirrorPod"
	// ReasonInvalidCSR: spec.stubPKCS10Request does not parse or its
	// signature does not verify.
	ReasonInvalidCSR = "InvalidCSR"
	// ReasonUnsupportedKeyType is the reason KEP-4317 prescribes for keys
	// the signer does not support (P-521, RSA-4096).
	ReasonUnsupportedKeyType = certificatesv1.PodCertificateRequestConditionUnsupportedKeyType
	// ReasonInvalidUserAnnotations: the request carries
	// spec.unverifiedUserAnnotations; mayfly recognizes none.
	ReasonInvalidUserAnnotations = certificatesv1.PodCertificateRequestConditionInvalidUserConfig
	// ReasonSigningFailed (condition Failed): the CA refused a request that
	// passed every check; a bug or a policy that can never issue it.
	ReasonSigningFailed = "SigningFailed"
)

const (
	// apiMinLifetime is kube-apiserver's floor for an issued leaf's
	// notAfter-notBefore.
	apiMinLifetime = time.Hour
	// refreshMargin is kube-apiserver's distance of beginRefreshAt from
	// notBefore and notAfter.
	refreshMargin = 10 * time.Minute
	// defaultMaxExpiration is kube-apiserver's default of
	// spec.maxExpirationSeconds.
	defaultMaxExpiration = 24 * time.Hour
)

// denial is a decision against a request: the condition's reason and message.
type denial struct {
	reason  string
	message string
}

func deny(reason, format string, args ...any) *denial {
	return &denial{reason: reason, message: fmt.Sprintf(format, args...)}
}

// podCheck is one rule about the pod a request names; nil means it passes.
type podCheck func(req *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial

// podChecks are applied in order; the first denial wins.
var podChecks = []podCheck{
	checkPodIdentity,
	checkMirrorPod,
	checkTerminating,
	checkNode,
	checkServiceAccount,
}

// checkPod returns the first denial of podChecks; pod nil means the pod
// does not exist (confirmed against the API, not only a cache).
func checkPod(req *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial {
	if pod == nil {
		return deny(ReasonPodNotFound, "pod %s/%s with UID %s does not exist", req.Namespace, req.Spec.PodName, req.Spec.PodUID)
	}
	for _, c := range podChecks {
		if d := c(req, pod); d != nil {
			return d
		}
	}
	return nil
}

func checkPodIdentity(req *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial {
	if pod.UID != req.Spec.PodUID || pod.Namespace != req.Namespace || pod.Name != req.Spec.PodName {
		return deny(ReasonPodNotFound, "pod %s/%s with UID %s does not exist (found %s/%s with UID %s)",
			req.Namespace, req.Spec.PodName, req.Spec.PodUID, pod.Namespace, pod.Name, pod.UID)
	}
	return nil
}

func checkMirrorPod(_ *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial {
	if pod.Mirror {
		return deny(ReasonMirrorPod, "pod %s/%s is a mirror pod; static pods get no certificates", pod.Namespace, pod.Name)
	}
	return nil
}

func checkTerminating(_ *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial {
	if err := policy.PodNotTerminated(pod); err != nil {
		return deny(ReasonPodTerminating, "%v", err)
	}
	return nil
}

func checkNode(req *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial {
	if err := policy.PodOnNode(pod, string(req.Spec.NodeName)); err != nil {
		return deny(ReasonWrongNode, "%v", err)
	}
	return nil
}

func checkServiceAccount(req *certificatesv1.PodCertificateRequest, pod *policy.Pod) *denial {
	sa := pod.ServiceAccount
	if sa == "" {
		sa = "default"
	}
	if sa != req.Spec.ServiceAccountName {
		return deny(ReasonWrongServiceAccount, "pod %s/%s runs as ServiceAccount %q, not %q named in the request",
			pod.Namespace, pod.Name, sa, req.Spec.ServiceAccountName)
	}
	return nil
}

// checkUserAnnotations denies any spec.unverifiedUserAnnotations: KEP-4317
// asks signers to deny keys they do not recognize, and mayfly has none.
func checkUserAnnotations(req *certificatesv1.PodCertificateRequest) *denial {
	for k := range req.Spec.UnverifiedUserAnnotations {
		return deny(ReasonInvalidUserAnnotations, "signer %s supports no unverifiedUserAnnotations; remove %q (and any other) from the podCertificate projection's userAnnotations", req.Spec.SignerName, k)
	}
	return nil
}

// parseKey verifies the stub CSR (again: kube-apiserver did, but the CA
// trusts no one's parsing but its own) and returns the subject key, or a
// denial.
func parseKey(req *certificatesv1.PodCertificateRequest) (any, *denial) {
	const supported = "supported key types: ECDSAP256 (recommended), ECDSAP384, ED25519, RSA3072"
	csr, err := pki.ParseCSR(req.Spec.StubPKCS10Request)
	switch {
	case errors.Is(err, pki.ErrUnsupportedKey), errors.Is(err, pki.ErrWeakKey):
		return nil, deny(ReasonUnsupportedKeyType, "%v; %s", err, supported)
	case err != nil:
		return nil, deny(ReasonInvalidCSR, "spec.stubPKCS10Request: %v", err)
	}
	// CheckPublicKey accepts RSA of any size from 2048 to 8192 bits; the
	// CA's policy issues only the KeyTypes (RSA-4096 has none).
	if _, err := pki.KeyTypeOf(csr.PublicKey); err != nil {
		return nil, deny(ReasonUnsupportedKeyType, "%v; %s", err, supported)
	}
	return csr.PublicKey, nil
}

// lifetimePolicy bounds the lifetime (notAfter-notBefore) of issued leaves.
type lifetimePolicy struct {
	min, max time.Duration
}

// maxExpiration returns spec.maxExpirationSeconds as a duration.
func maxExpiration(req *certificatesv1.PodCertificateRequest) time.Duration {
	if req.Spec.MaxExpirationSeconds == nil {
		return defaultMaxExpiration
	}
	return time.Duration(*req.Spec.MaxExpirationSeconds) * time.Second
}

// leafPlan is what to ask pki.Signer for and what the leaf will get.
type leafPlan struct {
	// ttl is SignRequest.TTL, from now to notAfter.
	ttl time.Duration
	// life is the leaf's notAfter-notBefore.
	life time.Duration
	// floor is the shortest life to issue: min(policy min, maxExp), never
	// below kube-apiserver's 1h. A life below it waits for the CA to rotate.
	floor time.Duration
}

// plan computes the TTL that gives a leaf signed at now (whole seconds) by
// an issuer valid from issuerNB to issuerNA the life min(maxExp, p.max):
// pki.Signer backdates notBefore by pki.Backdate, but not before issuerNB
// (a young intermediate), and caps notAfter at issuerNA (an old one).
func (p lifetimePolicy) plan(now time.Time, maxExp time.Duration, issuerNB, issuerNA time.Time) leafPlan {
	target := min(maxExp, p.max)
	nb := now.Add(-pki.Backdate)
	if nb.Before(issuerNB) {
		nb = issuerNB
	}
	na := nb.Add(target)
	if na.After(issuerNA) {
		na = issuerNA.Truncate(time.Second)
	}
	return leafPlan{
		ttl:   na.Sub(now),
		life:  na.Sub(nb),
		floor: max(min(p.min, maxExp), apiMinLifetime),
	}
}

// beginRefreshAt returns the renewal point: half of the leaf's life,
// clamped to [notBefore+10m, notAfter-10m] as kube-apiserver requires. The
// kubelet adds its own jitter (up to 5 minutes) on top.
func beginRefreshAt(notBefore, notAfter time.Time) time.Time {
	t := notBefore.Add(notAfter.Sub(notBefore) / 2).Truncate(time.Second)
	if lo := notBefore.Add(refreshMargin); t.Before(lo) {
		t = lo
	}
	if hi := notAfter.Add(-refreshMargin); t.After(hi) {
		t = hi
	}
	return t
}

// isTerminal reports whether a request already carries Issued, Denied or
// Failed; its status is then immutable.
func isTerminal(req *certificatesv1.PodCertificateRequest) bool {
	for _, c := range req.Status.Conditions {
		switch c.Type {
		case certificatesv1.PodCertificateRequestConditionTypeIssued,
			certificatesv1.PodCertificateRequestConditionTypeDenied,
			certificatesv1.PodCertificateRequestConditionTypeFailed:
			return true
		}
	}
	return false
}
