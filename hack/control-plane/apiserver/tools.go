//go:build tools

// Package tools pins the commands this module builds; `go build` builds them by path.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
