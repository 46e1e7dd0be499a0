//go:build tools

// Package tools pins kube-apiserver as a dependency of this module so go.sum covers it.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
)
