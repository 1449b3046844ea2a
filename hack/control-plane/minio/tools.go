//go:build tools

// Package tools pins the MinIO server command; `go build github.com/minio/minio` builds it.
package tools

import _ "github.com/minio/minio"
