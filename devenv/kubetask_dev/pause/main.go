// pause: the sandbox ("pause") container of kubetask's real dev node.
//
// It holds a pod's namespaces open and does nothing else: as PID 1 of the pod
// it reaps any orphan handed to it, and it exits on SIGINT or SIGTERM, which
// is all the kubelet and containerd ask of a sandbox image. It is built here
// (static, no cgo) because no registry is reachable to pull the upstream one.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig == syscall.SIGCHLD {
			for {
				pid, err := syscall.Wait4(-1, nil, syscall.WNOHANG, nil)
				if pid <= 0 || err != nil {
					break
				}
			}
			continue
		}
		os.Exit(0)
	}
}
