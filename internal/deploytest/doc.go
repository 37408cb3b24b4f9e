// Package deploytest checks what mayfly ships for deployment: the kustomize
// tree in deploy/k8s (rendered, validated by a real kube-apiserver with
// server-side dry-run, RBAC boundaries proved with SubjectAccessReviews),
// the alert rules and dashboard in deploy/k8s/monitoring, and the
// Dockerfiles in deploy/docker. It holds tests only.
//
// Rendering needs the kustomize binary: MAYFLY_KUSTOMIZE names it (the
// Makefile installs a pinned version into the tool cache). Without it the
// tests that render are skipped, and fail in CI (CI=true).
package deploytest
