// Package deploytest checks what mayfly ships for deployment: the Helm
// chart deploy/helm/mayfly (helm lint, refused values, a matrix of values
// rendered, dry-run against a real kube-apiserver, RBAC boundaries proved
// with SubjectAccessReviews, the CA run under the chart's RBAC), the
// kustomize tree deploy/k8s that is the chart rendered with its defaults
// (no drift), the alert rules and dashboard, the Dockerfiles in
// deploy/docker, the release workflow (actionlint) and the commands of
// docs/install.md and docs/upgrade.md. It holds tests only.
//
// The tools are named by MAYFLY_HELM, MAYFLY_KUSTOMIZE, MAYFLY_PROMTOOL and
// MAYFLY_ACTIONLINT (the Makefile installs pinned versions into the tool
// cache). Without one the tests that need it are skipped, and fail in CI
// (CI=true).
package deploytest
