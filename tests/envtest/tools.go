//go:build tools

// Package tools pins the Kubernetes binaries the tests build as dependencies of this module so go.sum
// covers them: kube-apiserver for tests/envtest, the rest for the single-node cluster in tests/cluster.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
